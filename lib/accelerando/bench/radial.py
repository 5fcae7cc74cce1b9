"""Radial attention against dense attention: exactness, one attention layer's time and memory by
track length, and one full-size Stable Audio DiT block (random weights, the published config).

    rows = attention_layer_rows([1, 5, 10], RadialConfig(bpm=120))     # minutes of audio
    rows = block_rows([10], RadialConfig(bpm=120), TRANSFORMER_CONFIGS["full"])

Every timing is interleaved (`compare`): dense SDPA and each radial kernel take turns, so the
ratios hold on a shared machine; absolute times are this machine's only. The dense baseline is
plain `scaled_dot_product_attention` without a mask (what the model runs today), in bf16 on CPUs
with AMX (where bf16 is the fair dense path) and fp32 elsewhere, unless a dtype is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..attention.radial import RadialConfig, radial_attention, radial_mask
from ..attention.locality import attention_by_distance, bar_contrast
from ..attention.radial_processors import RadialAttnProcessor, radial_attention_patch
from ..machine import cpu_flags, cpu_model
from .measure import PeakMemory, compare

HEADS, HEAD_DIM = 24, 64  # Stable Audio Open's DiT self-attention: 24 heads of 64
CONTROL_BAR_FACTOR = 1.37  # a bar this many times the true one: no common metre change gives the ratio


def fair_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """bf16 where it is the fast dense path (a GPU, or a CPU with AMX tiles), else fp32."""
    if torch.device(device).type == "cuda" or "AMX-BF16" in cpu_flags():
        return torch.bfloat16
    return torch.float32


def tokens_for(minutes: float, config: RadialConfig) -> int:
    """Tokens of a track `minutes` long at the config's frame rate, sink tokens included."""
    if not minutes > 0:
        raise ValueError(f"minutes={minutes}: a track length must be positive")
    return int(round(minutes * 60 * config.frame_rate)) + config.sink_tokens


def exactness_rows(config: RadialConfig, tokens: int = 2_000, kernels: tuple[str, ...] = ("blocks",),
                   heads: int = 4, seed: int = 0) -> list[dict]:
    """Largest absolute difference of each kernel from attention under the dense mask, in fp32 and
    in the fair dtype, on random q, k, v [1, heads, tokens, 64]."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, tokens, HEAD_DIM, generator=g) for _ in range(3))
    rows = []
    for dtype in dict.fromkeys([torch.float32, fair_dtype()]):
        reference = radial_attention(q.double(), k.double(), v.double(), config, kernel="dense")
        for kernel in kernels:
            out = radial_attention(q.to(dtype), k.to(dtype), v.to(dtype), config, kernel=kernel)
            rows.append({"component": "exactness", "kernel": kernel, "dtype": str(dtype).replace("torch.", ""),
                         "tokens": tokens, "max_abs_error": float((out.double() - reference).abs().max())})
    return rows


def attention_layer_rows(minutes: list[float], config: RadialConfig, kernels: tuple[str, ...] = ("blocks",),
                         *, heads: int = HEADS, rounds: int = 3, dtype: torch.dtype | None = None,
                         device: str = "cpu", seed: int = 0) -> list[dict]:
    """One self-attention layer ([1, heads, tokens, 64]) per track length: dense SDPA against each
    radial kernel, interleaved over `rounds`. Before that, each candidate alone: its first call
    (compilation and the cached plan or block mask included) and then the peak memory of a warm
    call above the inputs (`peak_mem_delta_bytes`)."""
    if rounds < 3:
        raise ValueError(f"rounds={rounds}: a ratio needs at least 3 interleaved rounds")
    if "dense" in kernels:
        raise ValueError("kernels: 'dense' names the baseline (unmasked SDPA) here; the masked dense kernel is the "
                         "reference of exactness_rows")
    dtype = dtype or fair_dtype(device)
    rows = []
    for m in minutes:
        n = tokens_for(m, config)
        g = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(1, heads, n, HEAD_DIM, generator=g).to(device, dtype) for _ in range(3))
        candidates = {"dense": lambda: F.scaled_dot_product_attention(q, k, v)}
        for kernel in kernels:
            candidates[kernel] = lambda kernel=kernel: radial_attention(q, k, v, config, kernel=kernel)
        first, memory = {}, {}
        for name, fn in candidates.items():
            with torch.no_grad():
                start = time.perf_counter()
                fn()  # a compiled kernel compiles here, and a plan or block mask is built and cached
                first[name] = time.perf_counter() - start
                with PeakMemory(device) as mem:
                    fn()
            memory[name] = mem.delta_bytes
        timings = compare(candidates, rounds=rounds, baseline="dense", device=device)
        for name, t in timings.items():
            rows.append({"component": "attention_layer", "kernel": name, "minutes": m, "tokens": n,
                         "keys_per_query": n if name == "dense" else config.keys_per_query(),
                         "first_call_s": first[name], "peak_mem_delta_bytes": memory[name], **t,
                         "dtype": str(dtype).replace("torch.", ""), "heads": heads,
                         "threads": torch.get_num_threads(), "device": device, "cpu": cpu_model()})
        del q, k, v
    return rows


def dit_block(transformer_config: dict, seed: int = 0):
    """One StableAudioDiTBlock of a `StableAudioDiTModel` config, random weights, eval mode."""
    from diffusers.models.transformers.stable_audio_transformer import StableAudioDiTBlock

    c = transformer_config
    torch.manual_seed(seed)
    return StableAudioDiTBlock(dim=c["num_attention_heads"] * c["attention_head_dim"],
                               num_attention_heads=c["num_attention_heads"],
                               num_key_value_attention_heads=c["num_key_value_attention_heads"],
                               attention_head_dim=c["attention_head_dim"],
                               cross_attention_dim=c["cross_attention_dim"]).eval()


def block_rows(minutes: list[float], config: RadialConfig, transformer_config: dict, *, kernel: str = "blocks",
               rounds: int = 3, text_tokens: int = 130, dtype: torch.dtype | None = None, device: str = "cpu",
               seed: int = 0) -> list[dict]:
    """One full DiT block (self-attention, cross-attention to `text_tokens` states, feed-forward)
    with its stock processor against the radial one, interleaved, per track length; with the
    rotary table of the pipeline and the relative output change of the radial block."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    if rounds < 3:
        raise ValueError(f"rounds={rounds}: a ratio needs at least 3 interleaved rounds")
    dtype = dtype or fair_dtype(device)
    dense = dit_block(transformer_config, seed).to(device, dtype)
    radial = dit_block(transformer_config, seed).to(device, dtype)
    radial.attn1.set_processor(RadialAttnProcessor(config, kernel))
    c = transformer_config
    rows = []
    for m in minutes:
        n = tokens_for(m, config)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, n, c["num_attention_heads"] * c["attention_head_dim"], generator=g).to(device, dtype)
        ctx = torch.randn(1, text_tokens, c["cross_attention_dim"], generator=g).to(device, dtype)
        rot = tuple(t.to(device) for t in get_1d_rotary_pos_embed(c["attention_head_dim"] // 2, n, use_real=True,
                                                                 repeat_interleave_real=False))
        with torch.no_grad():
            ref = dense(x, encoder_hidden_states=ctx, rotary_embedding=rot).float()
            out = radial(x, encoder_hidden_states=ctx, rotary_embedding=rot).float()
        timings = compare({"dense": lambda: dense(x, encoder_hidden_states=ctx, rotary_embedding=rot),
                           kernel: lambda: radial(x, encoder_hidden_states=ctx, rotary_embedding=rot)},
                          rounds=rounds, baseline="dense", device=device)
        change = float((out - ref).norm() / ref.norm())
        for name, t in timings.items():
            rows.append({"component": "dit_block", "kernel": name, "minutes": m, "tokens": n, **t,
                         "relative_output_change": 0.0 if name == "dense" else change,
                         "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
                         "device": device, "cpu": cpu_model()})
    return rows


def density(config: RadialConfig, tokens: int) -> float:
    """Fraction of the query-key pairs the rule keeps on a track of `tokens` tokens."""
    return float(radial_mask(tokens, tokens, config).float().mean())


def generation_rows(pipe, captions: list[str], configs: dict[str, Callable[[str], RadialConfig]], *,
                    seconds: float, steps: int, seed: int = 0, kernel: str = "blocks", keep_audio: int = 0) -> list[dict]:
    """Each caption generated by `pipe` (a Stable Audio pipeline) with dense attention and under
    each radial configuration, from the same noise; each radial clip is scored against its dense
    twin (MR-STFT distance, SI-SDR in dB) and every clip by its pulse at the caption's tempo
    (`beat_pulse`; None for captions that state no tempo).

    configs: {name: caption -> RadialConfig}, so a configuration can follow each caption's tempo.
    keep_audio: the first this many prompts' rows also carry "audio" [channels, samples] and "sr".
    """
    from ..metrics.fidelity import mrstft_distance, si_sdr
    from ..metrics.rhythm import beat_pulse
    from ..models.stable_audio_lite import generate
    from ..musical_controls import MusicalControls

    tokens = int(pipe.transformer.config.sample_size) + 1
    rows = []
    for i, caption in enumerate(captions):
        beats = MusicalControls.from_caption(caption, seconds).beats
        bpm = 60.0 / (beats[1] - beats[0]) if beats else None

        def pulse(audio: np.ndarray, sr: int) -> float | None:
            return None if bpm is None else beat_pulse(torch.from_numpy(audio), sr, bpm, name=f"prompt {i}")

        dense, sr = generate(pipe, caption, seconds=seconds, steps=steps, seed=seed + i)
        rows.append({"component": "generation", "config": "dense", "prompt": i, "caption": caption,
                     "keys_per_query": tokens, "mrstft": 0.0, "si_sdr": None, "pulse": pulse(dense[0], sr),
                     **({"audio": dense[0], "sr": sr} if i < keep_audio else {})})
        for name, make in configs.items():
            config = make(caption)
            with radial_attention_patch(pipe.transformer, config, kernel):
                audio, _ = generate(pipe, caption, seconds=seconds, steps=steps, seed=seed + i)
            rows.append({"component": "generation", "config": name, "prompt": i, "caption": caption,
                         "keys_per_query": min(config.keys_per_query(), tokens), "bar_s": config.bar / config.frame_rate,
                         "mrstft": mrstft_distance(dense[0], audio[0], sr), "si_sdr": si_sdr(dense[0], audio[0], sr),
                         "pulse": pulse(audio[0], sr), **({"audio": audio[0], "sr": sr} if i < keep_audio else {})})
    return rows


def locality_rows(pipe, captions: list[str], *, seconds: float, steps: int, bars: int = 2, seed: int = 0) -> list[dict]:
    """The trained DiT's attention weight by frame distance during dense sampling, per caption that
    states a tempo, and its bar contrast (`bar_contrast`) at the caption's own bar and at a control
    bar, CONTROL_BAR_FACTOR times the caption's."""
    from ..models.stable_audio_lite import generate
    from ..musical_controls import MusicalControls

    rows = []
    for i, caption in enumerate(captions):
        if MusicalControls.from_caption(caption, seconds).beats is None:
            continue  # no tempo stated: no bar to test
        config = RadialConfig.from_caption(caption)
        with attention_by_distance(pipe.transformer) as profile:
            generate(pipe, caption, seconds=seconds, steps=steps, seed=seed + i)
        weight = profile.mean_weight()
        row = {"component": "locality", "prompt": i, "caption": caption, "bpm": config.bpm,
               "bar_frames": config.bar, "weight_by_distance": weight.tolist()}
        for label, bar in (("own_bar", config.bar), ("control_bar", CONTROL_BAR_FACTOR * config.bar)):
            try:
                row[f"contrast_{label}"] = bar_contrast(weight, bar, bars=bars)
            except ValueError:  # the clip is too short for this bar length
                row[f"contrast_{label}"] = None
        rows.append(row)
    return rows


def same_budget_window(config: RadialConfig) -> RadialConfig:
    """A local window alone (no bands) whose queries see as many keys as `config`'s do: the control
    that asks whether the bar-spaced keys beat the same number of nearby ones."""
    keys = config.keys_per_query() - config.sink_tokens - 1  # besides the sinks and the query's own frame
    half = keys if config.causal else keys // 2
    return RadialConfig(window_s=half / config.frame_rate, bars_back=0, sink_tokens=config.sink_tokens,
                        causal=config.causal, frame_rate=config.frame_rate, block_size=config.block_size)


def off_bar(config: RadialConfig, factor: float = CONTROL_BAR_FACTOR) -> RadialConfig:
    """`config` with its bands at `factor` times the bar: the same budget, the wrong period."""
    return RadialConfig(**{**config.__dict__, "bar_frames": factor * config.bar})


def memory_slope(rows: list[dict], kernel: str) -> dict:
    """Least-squares fit of a kernel's warm peak memory (bytes) against tokens, and against tokens
    squared: the exponent of a power law through the points (1 linear, 2 quadratic)."""
    pts = [(r["tokens"], r["peak_mem_delta_bytes"]) for r in rows
           if r["component"] == "attention_layer" and r["kernel"] == kernel and r["peak_mem_delta_bytes"]]
    if len(pts) < 2:
        raise ValueError(f"kernel {kernel!r}: memory at two lengths at least is needed for a slope")
    n, m = np.array(pts, dtype=float).T
    exponent = float(np.polyfit(np.log(n), np.log(m), 1)[0])
    return {"kernel": kernel, "bytes_per_token": float(np.polyfit(n, m, 1)[0]), "power_law_exponent": exponent}
