"""Baseline costs of the two reference generators (Chapter 1, `python -m accelerando.bench baseline`).

Stable Audio Open: one DiT forward (with and without the classifier-free-guidance batch), one VAE
decode and one text-encoder pass, versus audio length; a per-block split of the DiT into
self-attention and the rest, to show where attention's quadratic term takes over.
MusicGen: one KV-cached decoding step versus context length (and the cache-less step it replaces).

Inputs are random tensors of the shapes the pipelines feed these modules, so the figures are
the cost of the architecture, whatever its weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch

from ..models.stable_audio_conditioning import rotary
from .measure import count_flops, measure

# Stable Audio conditions the DiT on the T5 tokens plus two timing tokens (seconds start / end).
TIMING_TOKENS = 2


def latent_frames(vae, seconds: float) -> int:
    """Latent frames covering `seconds` of audio: ceil(seconds * sampling_rate / hop_length)."""
    return math.ceil(seconds * vae.config.sampling_rate / vae.hop_length)


def dit_inputs(pipe, frames: int, batch: int = 1, device="cpu", dtype=torch.float32, generator=None) -> dict:
    """Keyword arguments of one `StableAudioDiTModel` call as the pipeline makes them.

    hidden_states [batch, in_channels, frames]; encoder_hidden_states [batch, text_len + 2, 768]
    (T5 tokens then the two timing tokens); global_hidden_states [batch, 1, 1536]; one timestep;
    rotary table for frames + 1 positions (the DiT prepends one global token).
    """
    cfg = pipe.transformer.config
    text_len = pipe.tokenizer.model_max_length + TIMING_TOKENS
    shape = lambda *s: torch.randn(*s, generator=generator).to(device=device, dtype=dtype)  # noqa: E731
    return {
        "hidden_states": shape(batch, cfg.in_channels, frames),
        "timestep": torch.tensor([500.0], device=device),
        "encoder_hidden_states": shape(batch, text_len, cfg.cross_attention_input_dim),
        "global_hidden_states": shape(batch, 1, cfg.global_states_input_dim),
        "rotary_embedding": rotary(pipe, frames, device, dtype),
        "return_dict": False,
    }


def stable_audio_calls(pipe, seconds: float, device="cpu", dtype=torch.float32) -> dict[str, Callable[[], object]]:
    """Zero-argument callables for one DiT forward (batch 1 and the CFG batch of 2), one VAE decode
    of `seconds` of audio, and one text-encoder pass over a full-length prompt.
    """
    frames = latent_frames(pipe.vae, seconds)
    gen = torch.Generator().manual_seed(0)
    dit_1 = dit_inputs(pipe, frames, 1, device, dtype, gen)
    dit_2 = dit_inputs(pipe, frames, 2, device, dtype, gen)
    latents = torch.randn(1, pipe.vae.config.decoder_input_channels, frames, generator=gen).to(device, dtype)
    tokens = torch.randint(0, pipe.text_encoder.config.vocab_size, (1, pipe.tokenizer.model_max_length), generator=gen)
    tokens = tokens.to(device)
    return {
        "dit_forward": lambda: pipe.transformer(**dit_1),
        "dit_forward_cfg": lambda: pipe.transformer(**dit_2),
        "vae_decode": lambda: pipe.vae.decode(latents).sample,
        "text_encoder": lambda: pipe.text_encoder(tokens).last_hidden_state,
    }


def stable_audio_sweep(
    pipe,
    seconds: Sequence[float],
    components: Sequence[str] = ("dit_forward", "dit_forward_cfg", "vae_decode", "text_encoder"),
    *,
    flops_pipe=None,
    warmup: int = 1,
    repeats: int = 3,
    budget_s: float | None = None,
    device="cpu",
    dtype=torch.float32,
) -> Iterator[dict]:
    """One measurement record per (component, audio length).

    `flops_pipe`, if given, is the same architecture on the meta device: FLOPs are counted there
    (free), not on the timed model. The text encoder does not depend on audio length and is
    measured once, at the first length. Warm-up calls run at the first length only: one-time costs
    (lazy initialisation, allocator growth) do not depend on length, and a warm-up at 47 s would
    cost a minute of full-size forward for nothing.
    """
    text_done = False
    for i, sec in enumerate(seconds):
        calls = stable_audio_calls(pipe, sec, device, dtype)
        meta_calls = stable_audio_calls(flops_pipe, sec, "meta", dtype) if flops_pipe is not None else {}
        for name in components:
            if name not in calls:
                raise ValueError(f"unknown component {name!r}; choose from {sorted(calls)}")
            if name == "text_encoder":
                if text_done:
                    continue
                text_done = True
            flops = count_flops(meta_calls[name]) if name in meta_calls else None
            yield measure(
                calls[name],
                component=name,
                audio_seconds=None if name == "text_encoder" else sec,
                latent_frames=None if name == "text_encoder" else latent_frames(pipe.vae, sec),
                warmup=warmup if i == 0 or name == "text_encoder" else 0,
                repeats=repeats,
                budget_s=budget_s,
                flops=flops,
                device=device,
            )


def dit_block_split(
    pipe,
    seconds: Sequence[float],
    *,
    warmup: int = 1,
    repeats: int = 3,
    budget_s: float | None = None,
    device="cpu",
    dtype=torch.float32,
) -> Iterator[dict]:
    """Time one DiT block and its self-attention alone, per audio length.

    The block is linear in length except self-attention (quadratic); their ratio shows the length at
    which attention starts to dominate. Every block of the DiT has the same shapes, so one block
    times 24 is the forward minus the small input/output projections.
    """
    tr = pipe.transformer
    block = tr.transformer_blocks[0]
    inner = tr.config.num_attention_heads * tr.config.attention_head_dim
    gen = torch.Generator().manual_seed(0)
    for i, sec in enumerate(seconds):
        frames = latent_frames(pipe.vae, sec)
        tokens = frames + 1  # the prepended global token
        x = torch.randn(1, tokens, inner, generator=gen).to(device, dtype)
        ctx = torch.randn(1, pipe.tokenizer.model_max_length + TIMING_TOKENS, tr.config.cross_attention_dim, generator=gen)
        ctx = ctx.to(device, dtype)
        rotary_emb = rotary(pipe, frames, device, dtype)
        normed = block.norm1(x)
        parts = {
            "dit_block": lambda: block(x, encoder_hidden_states=ctx, rotary_embedding=rotary_emb),
            "dit_block_self_attention": lambda: block.attn1(normed, rotary_emb=rotary_emb),
        }
        for name, fn in parts.items():
            yield measure(
                fn, component=name, audio_seconds=sec, latent_frames=frames, tokens=tokens,
                warmup=warmup if i == 0 else 0, repeats=repeats, budget_s=budget_s, device=device,
            )


def musicgen_step_calls(model, context: int, batch: int = 1, text_tokens: int = 16, device="cpu") -> dict:
    """Zero-argument callables for one MusicGen decoding step at a context of `context` frames.

    `no_cache` recomputes the whole prefix (one decoder forward over `context` frames of the K
    codebooks); `kv_cache` feeds one new frame against a cache of `context` frames and crops the
    cache back afterwards, so every call sees the same length. Works on the meta device too.
    """
    dec_cfg = model.decoder.config
    if context + 1 > dec_cfg.max_position_embeddings:
        raise ValueError(f"context of {context} frames exceeds the decoder's {dec_cfg.max_position_embeddings} positions")
    rows = batch * dec_cfg.num_codebooks  # MusicGen folds the codebooks into the batch: [B*K, frames]
    gen = torch.Generator().manual_seed(0)
    text = torch.randint(0, model.text_encoder.config.vocab_size, (batch, text_tokens), generator=gen).to(device)
    prefix = torch.randint(0, dec_cfg.vocab_size, (rows, context), generator=gen).to(device)
    step = torch.randint(0, dec_cfg.vocab_size, (rows, 1), generator=gen).to(device)
    with torch.no_grad():
        encoder_outputs = model.text_encoder(input_ids=text)

    def forward(ids, past=None):
        return model(encoder_outputs=encoder_outputs, decoder_input_ids=ids, past_key_values=past, use_cache=True)

    with torch.no_grad():
        cache = forward(prefix).past_key_values

    def cached_step():
        forward(step, cache)
        cache.crop(context - cache.get_seq_length())  # negative: drops the frame just added

    return {"no_cache": lambda: forward(prefix), "kv_cache": cached_step}


def musicgen_decode_sweep(
    model,
    context_frames: Sequence[int],
    *,
    flops_model=None,
    cfg: bool = False,
    warmup: int = 1,
    repeats: int = 5,
    budget_s: float | None = None,
    device="cpu",
) -> Iterator[dict]:
    """Per context length L (in frames): one KV-cached decoding step, and the cache-less step.

    A decoding step emits one token for each of the K codebooks, i.e. one audio frame (1/50 s for
    MusicGen's 32 kHz EnCodec). With a cache it attends to L cached keys; without one it recomputes
    the whole prefix, one forward over L frames (no warm-up: the cached steps before it warmed the
    same code). `cfg`
    doubles the batch (conditional and unconditional), as classifier-free guidance does.
    `flops_model`, if given, is the same architecture on the meta device, for the FLOP counts.
    """
    codebooks = model.decoder.config.num_codebooks
    frame_rate = model.config.audio_encoder.frame_rate
    batch = 2 if cfg else 1
    musicgen_step_calls(model, 1, batch, device=device)["kv_cache"]()  # untimed: lazy initialisation
    for L in context_frames:
        calls = musicgen_step_calls(model, L, batch, device=device)
        meta = musicgen_step_calls(flops_model, L, batch, device="meta") if flops_model is not None else {}
        for name, component, warm in (
            ("no_cache", "musicgen_step_no_cache", 0),
            ("kv_cache", "musicgen_step_kv_cache", warmup),
        ):
            rec = measure(
                calls[name], component=component, audio_seconds=1 / frame_rate, warmup=warm, repeats=repeats,
                budget_s=budget_s, device=device, flops=count_flops(meta[name]) if meta else None,
                context_frames=L, cfg=cfg,
            )
            rec["frames_per_s"] = 1 / rec["latency_s_min"]
            rec["tokens_per_s"] = codebooks / rec["latency_s_min"]
            yield rec


def projected_generation_seconds(step_latency_s: float, steps: int, decode_s: float = 0.0, text_s: float = 0.0) -> float:
    """Projected wall time of a generation: `steps` denoiser calls plus one decode and one text pass.

    A projection from measured per-call costs, not a measured generation: the sampler's own
    arithmetic is ignored (it is negligible next to a 1 B-parameter forward).
    """
    return steps * step_latency_s + decode_s + text_s
