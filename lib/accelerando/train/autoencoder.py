"""Train the Stable-Audio-Lite autoencoder (`accelerando.models.autoencoder_lite`) on the corpus.

    python -m accelerando.train.autoencoder --corpus full --minutes 55 --threads 1 --out checkpoints/autoencoder_lite

Objective, after Stable Audio Open's VAE (Evans et al. 2024, arXiv:2407.14358, section 3.1;
stable-audio-tools `training/autoencoders.py`), without its adversarial and feature-matching
terms (no discriminator fits the CPU budget):
    loss = MR-STFT(x, x_hat) + l1_weight * |x - x_hat|_1 + kl_weight * KL(q(z|x) || N(0, I))
MR-STFT is spectral convergence + log-magnitude L1 (Yamamoto et al. 2020) averaged over
`stft_windows` (stable-audio-tools: 2048 ... 32, hop = window / 4); the KL weight 1e-4 is the
published one. Two alternatives are options: `recon_loss="mel"` puts the log-magnitude L1 on mel
bands (DAC's multi-scale mel loss, Kumar et al. 2023: windows 32 ... 2048 with 5 ... 320 bands),
and `complex_weight` adds an L1 on power-law compressed complex STFTs (|X|^0.3 e^{i phase}), which
scores phase as well as magnitude.

Why the committed checkpoint has a hop of 256 and balanced upsamplers: the earlier hop-1024
decoder rendered every latent frame as nearly the same waveform, so its partials sat on multiples
of the 21.5 Hz frame rate whatever the input (`accelerando.metrics.artifacts.frame_comb_fraction`,
logged at every validation as `frame_comb`: 0.93 on its reconstructions, 0.12 on the music, 0.19
chance) and the notes were lost. The comb came from the upsamplers: a ConvTranspose1d of stride s
and kernel 2s turns a constant input (Snake's outputs have a DC part) into a period-s pattern
unless, for every output phase j, its taps w[j] + w[j + s] sum to the same value; chained, the
patterns repeat every hop ("tonal artifacts", Pons et al. 2021, arXiv:2010.14356).
`balanced_upsamplers` (on by default) trains with that constraint in force: a forward hook
projects each upsampler's weight at every call (gradients flow through the projection), and the
saved weights are the projected ones, so the checkpoint needs no hook. Removing the artifact was
not enough at hop 1024 within the budget (chroma correlation 0.09 after 55 minutes; `--model
lite-hop1024`); at hop 256 (`--model lite`, strides [2, 4, 4, 8]) the decoder learns the waveform
(validation SI-SDR above 0 dB, chroma correlation 0.90 on 24 test clips after 55 minutes).
The Lite config groups 4 encoder frames per latent frame (`models.latent_grouping`); the KL term
is counted per encoder frame, so its weight means what it means for the stock layout, and the
comb is measured at the decoder's own frame rate (86.1 Hz). `init_from` starts from a saved
checkpoint instead of the seeded init. Other options kept from the pilots: `recon_loss="mel"` and
`complex_weight` (checkpoints/README.md lists what they did).

Crops are random windows of the training clips (22.05 kHz mono), near-silent ones
redrawn. Every `val_every` steps the posterior mean of fixed validation excerpts is decoded and
scored with `accelerando.metrics` (mrstft_distance, si_sdr). The run stops at `minutes` of wall
clock (or `max_steps`) and writes, into `out`: autoencoder_lite.safetensors (fp16), config.json
(the model config plus final numbers), train_log.json (settings, loss curve, validations).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import TrainingTask, config_from_argv, resolve_threads, run_training, settings_dict
from ..models.autoencoder_lite import (
    AUTOENCODER_LITE_CONFIG,
    AUTOENCODER_TINY_CONFIG,
    build_autoencoder_lite,
    hop_length,
    load_autoencoder_lite,
    save_autoencoder_lite,
)
from ..models.latent_grouping import decoder_hop, latent_frame_group

# The book's earlier config, kept to repeat the comparison: hop 1024 (strides [2, 4, 4, 4, 8]),
# 16 latent channels at 21.5 frames/s, no grouping. Within 55 CPU minutes it does not carry pitch.
AUTOENCODER_LITE_HOP1024_CONFIG = dict(AUTOENCODER_LITE_CONFIG, downsampling_ratios=[2, 4, 4, 4, 8],
                                       channel_multiples=[1, 2, 4, 8, 8], latent_frame_group=1)
MODEL_CONFIGS = {"lite": AUTOENCODER_LITE_CONFIG, "lite-hop1024": AUTOENCODER_LITE_HOP1024_CONFIG,
                 "tiny": AUTOENCODER_TINY_CONFIG}


@dataclass
class AutoencoderTrainingConfig:
    corpus: str = "full"  # accelerando.data preset, rendered at model_config's sampling_rate
    out: str = "checkpoints/autoencoder_lite"
    model: str = "lite"  # a key of MODEL_CONFIGS: "lite" (the book's), "lite-hop1024" (the earlier one), "tiny" (tests)
    minutes: float = 55.0  # wall-clock budget of the loop (validation included)
    max_steps: int | None = None  # stop earlier after this many steps
    batch_size: int = 4
    crop_samples: int = 16384  # 16 latent frames of 1024 samples = 0.74 s at 22.05 kHz; 4 crops = 3 s per step
    lr: float = 3e-4  # 2x stable-audio-tools' 1.5e-4 for a short run; 1e-3 diverged (KL blew up) at step 25
    betas: tuple[float, float] = (0.8, 0.99)  # as stable-audio-tools' autoencoder optimiser
    weight_decay: float = 1e-3
    warmup_steps: int = 50
    grad_clip: float = 1.0
    stft_windows: tuple[int, ...] = (2048, 1024, 512, 256, 128, 64)
    recon_loss: str = "mrstft"  # "mrstft" (SC + log magnitude on linear bins) or "mel" (DAC's multi-scale mel); logged as "stft"
    complex_weight: float = 0.0  # weight of the compressed complex STFT L1 (0 = off); logged as "complex"
    balanced_upsamplers: bool = True  # constrain the decoder's ConvTranspose1d taps so a constant input cannot turn periodic
    init_from: str = ""  # a saved autoencoder-lite directory to start from (same config); "": the seeded init
    l1_weight: float = 0.1  # small waveform term: anchors phase/DC that magnitude losses ignore
    kl_weight: float = 1e-4  # Stable Audio's
    val_every: int = 100
    val_clips: int = 4  # the first n validation clips ...
    val_seconds: float = 4.0  # ... from their start, rounded down to a multiple of the hop
    min_rms: float = 1e-3  # crops quieter than this are redrawn (up to 10 times)
    seed: int = 0
    threads: int | None = None  # torch threads; None: every core
    precision: str | None = None  # "bf16" (autocast, fp32 master weights) or "fp32"; None: bf16 where the CPU has AMX
    steps_this_run: int | None = None  # stop this run after so many steps (resume state kept); None: its budget
    resume: bool = True  # continue from <out>/resume_state.pt when a stopped run left one
    log_every: int = 10

    def __post_init__(self):
        if self.model not in MODEL_CONFIGS:
            raise ValueError(f"model={self.model!r}: use one of {sorted(MODEL_CONFIGS)}")
        if self.recon_loss not in ("mrstft", "mel"):
            raise ValueError(f"recon_loss={self.recon_loss!r}: use 'mrstft' (the published objective) or 'mel'")
        if self.complex_weight < 0:
            raise ValueError(f"complex_weight={self.complex_weight}: a loss weight is >= 0 (0 turns the term off)")


# ---------------------------------------------------------------------------------------------
# Data: whole clips in memory (1,600 x 10 s x 22.05 kHz float32 = 1.4 GB), random crops.
# ---------------------------------------------------------------------------------------------


def load_clips(corpus, split: str) -> list[np.ndarray]:
    """Mono float32 [samples] arrays of one split's clips (stereo clips are downmixed)."""
    clips = []
    for clip in corpus.filter(split=split):
        audio = clip.load()
        clips.append(audio.mean(axis=1) if audio.ndim == 2 else audio)
    return clips


def random_crops(clips: list[np.ndarray], n: int, samples: int, rng: np.random.Generator, min_rms: float) -> torch.Tensor:
    """[n, 1, samples] random windows of random clips; near-silent windows are redrawn."""
    batch = []
    for _ in range(n):
        for _attempt in range(10):
            clip = clips[rng.integers(len(clips))]
            if len(clip) < samples:
                crop = np.pad(clip, (0, samples - len(clip)))
            else:
                start = rng.integers(len(clip) - samples + 1)
                crop = clip[start : start + samples]
            if np.sqrt(np.mean(crop**2)) >= min_rms:
                break
        batch.append(crop)
    return torch.from_numpy(np.stack(batch))[:, None, :]


# ---------------------------------------------------------------------------------------------
# Loss: multi-resolution STFT (spectral convergence + log magnitude), waveform L1, KL.
# ---------------------------------------------------------------------------------------------


def mrstft_loss(x: torch.Tensor, x_hat: torch.Tensor, windows: tuple[int, ...]) -> torch.Tensor:
    """Mean over windows of SC + log-magnitude L1 between x and x_hat [B, C, samples]."""
    x, x_hat = x.flatten(0, 1), x_hat.flatten(0, 1)  # [B*C, samples]
    total = x.new_zeros(())
    for win in windows:
        window = torch.hann_window(win, device=x.device, dtype=x.dtype)
        spec = lambda s: torch.stft(s, win, win // 4, win, window=window, return_complex=True).abs()  # noqa: E731
        total = total + _sc_plus_log(spec(x), spec(x_hat), torch.log)  # [B*C, bins, frames]
    return total / len(windows)


def _sc_plus_log(y: torch.Tensor, y_hat: torch.Tensor, log) -> torch.Tensor:
    """Spectral convergence + mean |log y - log y_hat| of two magnitude spectrograms (floored at 1e-5)."""
    sc = torch.linalg.norm(y - y_hat) / torch.linalg.norm(y).clamp_min(1e-7)
    return sc + (log(y.clamp_min(1e-5)) - log(y_hat.clamp_min(1e-5))).abs().mean()


MEL_WINDOWS = ((32, 5), (64, 10), (128, 20), (256, 40), (512, 80), (1024, 160), (2048, 320))  # (FFT, bands), DAC's


def mel_loss(x: torch.Tensor, x_hat: torch.Tensor, sr: int) -> torch.Tensor:
    """Mean over MEL_WINDOWS of SC + log10-mel L1 between x and x_hat [B, C, samples] (DAC's mel loss,
    with spectral convergence as in `mrstft_loss`)."""
    from ..metrics.fidelity import _mel_basis  # the metrics suite's (cached) Slaney bands

    x, x_hat = x.flatten(0, 1), x_hat.flatten(0, 1)
    total = x.new_zeros(())
    for win, bands in MEL_WINDOWS:
        basis = torch.from_numpy(_mel_basis(sr, win, bands)).to(x)
        window = torch.hann_window(win, device=x.device, dtype=x.dtype)
        mel = lambda s: basis @ torch.stft(s, win, win // 4, win, window=window, return_complex=True).abs()  # noqa: E731
        total = total + _sc_plus_log(mel(x), mel(x_hat), torch.log10)
    return total / len(MEL_WINDOWS)


def complex_loss(x: torch.Tensor, x_hat: torch.Tensor, windows: tuple[int, ...] = (2048, 1024, 512),
                 power: float = 0.3) -> torch.Tensor:
    """Mean over windows of the L1 between power-law compressed complex STFTs |X|^power e^{i phase}
    of x and x_hat [B, C, samples], times sqrt(window) / 8 (a fixed weighting, as piloted: the
    unnormalised STFT already grows with the window, so the 2048 window weighs most)."""
    x, x_hat = x.flatten(0, 1), x_hat.flatten(0, 1)
    total = x.new_zeros(())
    for win in windows:
        window = torch.hann_window(win, device=x.device, dtype=x.dtype)

        def compressed(s: torch.Tensor) -> torch.Tensor:
            spec = torch.stft(s, win, win // 4, win, window=window, return_complex=True)
            return torch.view_as_real(spec * spec.abs().clamp_min(1e-7) ** (power - 1))

        total = total + (compressed(x) - compressed(x_hat)).abs().mean() * win**0.5 / 8
    return total / len(windows)


# ---------------------------------------------------------------------------------------------
# Upsamplers without tonal artifacts: equal polyphase sums
# ---------------------------------------------------------------------------------------------


def balance_polyphase(weight: torch.Tensor, stride: int) -> torch.Tensor:
    """A ConvTranspose1d weight [in, out, 2 x stride] with, for every output phase j < stride, the
    same tap sum w[..., j] + w[..., j + stride] (their mean over j): a constant input then gives a
    constant output. The nearest such weight (each pair moved by half its sum's excess)."""
    if weight.shape[-1] != 2 * stride:
        raise ValueError(f"kernel {weight.shape[-1]} with stride {stride}: the projection is for kernel = 2 x stride "
                         "(Oobleck's upsamplers)")
    sums = weight[..., :stride] + weight[..., stride:]
    excess = (sums - sums.mean(-1, keepdim=True)) / 2
    return torch.cat([weight[..., :stride] - excess, weight[..., stride:] - excess], -1)


def _upsamplers(vae) -> list[torch.nn.ConvTranspose1d]:
    convs = [block.conv_t1 for block in vae.decoder.block if hasattr(block, "conv_t1")]
    if any(not hasattr(conv, "weight_v") for conv in convs):
        # the hook below overwrites the weight that torch.nn.utils.weight_norm computes before each call
        raise TypeError("the decoder's upsamplers are not under torch.nn.utils.weight_norm (weight_g, weight_v), "
                        "which balanced_upsamplers builds on; pin the diffusers version this project records")
    return convs


def balance_upsamplers(vae) -> list:
    """Constrain every decoder upsampler of `vae` (an AutoencoderOobleck) to `balance_polyphase`
    at each forward call, differentiably; returns the hook handles (`.remove()` undoes it)."""
    return [conv.register_forward_pre_hook(lambda m, _, s=conv.stride[0]: setattr(m, "weight", balance_polyphase(m.weight, s)))
            for conv in _upsamplers(vae)]


@torch.no_grad()
def bake_balanced_upsamplers(vae) -> None:
    """Write the projected weights into weight_g and weight_v, so that `vae` without the hooks
    (a plain AutoencoderOobleck, e.g. after saving and loading) computes what it did with them."""
    for conv in _upsamplers(vae):
        weight = balance_polyphase(conv.weight_v * (conv.weight_g / conv.weight_v.norm(dim=(1, 2), keepdim=True)),
                                   conv.stride[0])
        conv.weight_v.copy_(weight)
        conv.weight_g.copy_(weight.norm(dim=(1, 2), keepdim=True))


def loss_terms(vae, x: torch.Tensor, cfg: AutoencoderTrainingConfig) -> dict[str, torch.Tensor]:
    """Encode, sample the posterior, decode; the loss and its terms."""
    posterior = vae.encode(x).latent_dist
    x_hat = vae.decode(posterior.sample()).sample.float()  # [B, 1, samples]; fp32 spectra under bf16 autocast
    recon = mel_loss(x, x_hat, vae.config.sampling_rate) if cfg.recon_loss == "mel" else mrstft_loss(x, x_hat, cfg.stft_windows)
    terms = {
        "stft": recon,
        "l1": (x - x_hat).abs().mean(),
        # sum over channels, mean over batch and frames; per encoder frame, so that grouping g
        # frames into one latent frame (g times the channels) leaves the KL weight's meaning as is
        "kl": posterior.kl() / latent_frame_group(vae),
    }
    terms["loss"] = terms["stft"] + cfg.l1_weight * terms["l1"] + cfg.kl_weight * terms["kl"]
    if cfg.complex_weight:
        terms["complex"] = complex_loss(x, x_hat)
        terms["loss"] = terms["loss"] + cfg.complex_weight * terms["complex"]
    return terms


@torch.no_grad()
def validate(vae, val_audio: torch.Tensor, sr: int) -> dict:
    """Mean MR-STFT distance, SI-SDR and frame-rate comb share (accelerando.metrics) of the
    posterior-mean reconstruction of val_audio [n, 1, samples]."""
    from ..metrics import mrstft_distance, si_sdr
    from ..metrics.artifacts import frame_comb_fraction

    vae.eval()
    recon = vae.decode(vae.encode(val_audio).latent_dist.mode()).sample
    vae.train()
    ref, gen = val_audio.numpy(), recon.float().numpy()
    mr = [mrstft_distance(r, g, sr) for r, g in zip(ref, gen)]
    sdr = [si_sdr(r, g, sr) for r, g in zip(ref, gen)]
    comb = [frame_comb_fraction(g, sr, sr / decoder_hop(vae)) for g in gen]  # the decoder's frames, not the groups
    comb = [c for c in comb if c is not None]
    return {"mrstft": float(np.mean(mr)), "si_sdr": float(np.mean(sdr)), "si_sdr_per_clip": sdr,
            "frame_comb": float(np.mean(comb)) if comb else None}


def val_line(v: dict) -> str:
    comb = "" if v.get("frame_comb") is None else f", frame comb {v['frame_comb']:.2f}"
    return f"{v['mrstft']:.3f} MR-STFT, {v['si_sdr']:.2f} dB SI-SDR{comb}"


# ---------------------------------------------------------------------------------------------
# Loop
# ---------------------------------------------------------------------------------------------


def train(cfg: AutoencoderTrainingConfig, corpus=None, command: str | None = None) -> dict:
    """Run the training described by `cfg`; returns the log (also written to cfg.out).
    `corpus` overrides cfg.corpus (its clips must be at the model's sampling rate); `command` is
    recorded in the log (the command line passes its own)."""
    from ..data import build_corpus, preset

    torch.set_num_threads(resolve_threads(cfg.threads))
    model_config = MODEL_CONFIGS[cfg.model]
    sr, hop = model_config["sampling_rate"], hop_length(model_config)
    if cfg.crop_samples % hop:
        raise ValueError(f"crop_samples={cfg.crop_samples} must be a multiple of the hop ({hop})")
    if corpus is None:
        corpus = build_corpus(preset(cfg.corpus, sample_rate=sr))
    if corpus.config.sample_rate != sr:
        raise ValueError(f"corpus at {corpus.config.sample_rate} Hz; the autoencoder needs {sr} Hz")
    train_clips, val_clips = load_clips(corpus, "train"), load_clips(corpus, "val")[: cfg.val_clips]
    if not train_clips or not val_clips:
        raise ValueError(f"corpus {corpus.path} needs train and val clips, has {corpus.splits}")
    val_len = min(int(cfg.val_seconds * sr), min(len(c) for c in val_clips)) // hop * hop
    val_audio = torch.from_numpy(np.stack([c[:val_len] for c in val_clips]))[:, None, :]  # [n, 1, S]

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.init_from:
        vae = load_autoencoder_lite(cfg.init_from, expect_config=model_config).train()
    else:
        vae = build_autoencoder_lite(model_config, seed=cfg.seed).train()
    if cfg.balanced_upsamplers:
        balance_upsamplers(vae)
    n_params = sum(p.numel() for p in vae.parameters())
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

    def batches(rng: np.random.Generator):
        yield random_crops(train_clips, cfg.batch_size, cfg.crop_samples, rng, cfg.min_rms)

    def loss(model, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        terms = loss_terms(model, x, cfg)
        return terms.pop("loss"), terms  # the terms ("stft", "l1", "kl", ...) go into the step's log

    log = {
        "settings": settings_dict(cfg),
        "command": command,
        "model_config": model_config,
        "params": n_params,
        "corpus": {"path": str(corpus.path), "key": corpus.key, "train_clips": len(train_clips), "val_samples": val_len},
    }
    print(f"autoencoder-lite: {n_params / 1e6:.2f} M params, {len(train_clips)} train clips, val {val_audio.shape}")
    task = TrainingTask(model=vae, optimizer=opt, batches=batches, loss=loss,
                        validate=lambda model: validate(model, val_audio, sr))
    vae, finished = run_training(cfg, task, rng, log, lambda *a: print(*a, flush=True), command)

    throughput = log["throughput"]
    throughput.update(steps_per_second=throughput["steps"] / max(throughput["train_seconds"], 1e-9),
                      audio_seconds_per_step=cfg.batch_size * cfg.crop_samples / sr)
    out = Path(cfg.out)
    if finished:
        final = log["val"][-1]
        if cfg.balanced_upsamplers:
            bake_balanced_upsamplers(vae)
        save_autoencoder_lite(vae, out, extra={"trained": {"steps": throughput["steps"], "val_mrstft": final["mrstft"],
                                                            "val_si_sdr": final["si_sdr"]}})
        print(f"done: {throughput['steps']} steps in {throughput['train_seconds']:.0f} s of training "
              f"({throughput['steps_per_second']:.3f} steps/s), val {val_line(final)} -> {out}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    return log




def main(argv: list[str] | None = None) -> dict:
    cfg = config_from_argv(AutoencoderTrainingConfig, argv, __doc__.split("\n\n")[0])
    return train(cfg, command=" ".join(["python -m accelerando.train.autoencoder", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    main()
