"""Phase-coherent QAT: fine-tune only SVDQuant's low-rank branches of a Stable Audio DiT toward the full-precision model.

    teacher = copy.deepcopy(pipe.transformer)                      # kept before quantizing
    quantize_(pipe.transformer, preset("svdquant", 4, 4), calib=calib)
    data = corpus_data(pipe, corpus, "train", n=800)               # cached autoencoder latents + captions
    report = finetune_lowrank_(pipe, QATTrainingConfig(objective="stft_complex", minutes=4), data=data, teacher=teacher)

The loop over `accelerando.quant.qat`'s mechanics (`trainable_lowrank`: prepare, train, convert).
A batch of real corpus latents with their captions is noised to a noise level the sampler visits,
and the student's (quantized) and teacher's (full-precision) denoised predictions are compared,
guided as the pipeline guides them. Objectives (`OBJECTIVES`):

    latent_mse       mean squared difference of the denoised latents
    stft_magnitude   multi-resolution STFT magnitude loss between the two predictions decoded by
                     the frozen autoencoder (a window of `window_seconds`)
    stft_complex     ... relative complex STFT error: phase errors count (the thesis's objective)

both STFT losses being `accelerando.quant.qat.stft_loss`. After the loop the stock forward is back,
so the eval numerics are the reference's, bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data.latents import make_batch
from ..quant.linear import SVDQuantLinear
from ..quant.objectives import DECODE_MARGIN
from ..quant.qat import frozen, quantized_layers, stft_loss, trainable_lowrank, write_back
from . import warmup_cosine

OBJECTIVES = ("latent_mse", "stft_magnitude", "stft_complex")


# ---------------------------------------------------------------------------------------------
# Data: real corpus latents and their captions' text states
# ---------------------------------------------------------------------------------------------


@dataclass
class QATData:
    """Training clips: autoencoder latents [N, C, frames] and their captions' MiniLM states
    [N, 64, 384] (fp16 in memory) with masks [N, 64], as `stable_audio_conditioning.text_states` gives."""

    latents: torch.Tensor
    states: torch.Tensor
    mask: torch.Tensor
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)


def training_data(pipe, latents: torch.Tensor, captions: list[str]) -> QATData:
    """QATData from latents [N, C, >= sample_size] (cropped to the DiT's sample_size) and N captions."""
    from ..models.stable_audio_conditioning import text_states

    frames = pipe.transformer.config.sample_size
    if len(captions) != len(latents):
        raise ValueError(f"{len(latents)} latents and {len(captions)} captions: give one caption per clip")
    if latents.shape[-1] < frames:
        raise ValueError(f"latents have {latents.shape[-1]} frames; the DiT denoises {frames}")
    text = [text_states(pipe, captions[i: i + 64]) for i in range(0, len(captions), 64)]
    return QATData(latents[..., :frames].float(), torch.cat([s for s, _ in text]).half(),
                   torch.cat([m for _, m in text]), list(captions))


def corpus_data(pipe, corpus, split: str, n: int, vae_path: str | Path | None = None, seed: int = 0) -> QATData:
    """`n` clips of a corpus split (seeded choice, as `accelerando.train.codec.split_latents`, whose
    cache in .cache/latents they share: n=800 train clips with seed 0 are those Codec-Lite and
    MusicGen-Lite trained on) with their captions. A missing cache is filled by encoding the clips'
    audio with the autoencoder (about 0.15 s per clip)."""
    from ..models.stable_audio_lite import VAE_CHECKPOINT
    from .codec import split_latents

    clips, latents = split_latents(pipe.vae, vae_path or VAE_CHECKPOINT, corpus, split, n, seed)
    return training_data(pipe, latents, [c.caption for c in clips])


# ---------------------------------------------------------------------------------------------
# The verb
# ---------------------------------------------------------------------------------------------


@dataclass
class QATTrainingConfig:
    """Settings of `finetune_lowrank_`.

    objective       one of OBJECTIVES: "latent_mse", "stft_magnitude", "stft_complex".
    lr              peak AdamW learning rate of the factors (linear warm-up, cosine to 10 %).
    weight_decay    0: decay would pull the low-rank branch toward zero, i.e. toward RTN.
    minutes         wall-clock budget of the loop (None: max_steps only); the first limit hit stops it.
    batch_size      clips per step; each runs the student and the teacher twice under guidance.
    schedule_steps  noise levels are drawn uniformly from the sampler's sigmas at this step count
                    (the levels generation visits); guidance_scale as the pipeline applies it
                    (<= 1: conditional prediction only).
    crop_prob       share of clips cut to a window of >= min_crop_seconds followed by silence, with
                    the matching seconds conditioning (as the DiT was trained, and as a 4 s
                    generation looks).
    window_seconds  audio objectives decode this much of each prediction (plus the decoder's reach).
    val_batches     fixed batches of `val_data` scored before and after (0: none).
    """

    objective: str = "stft_complex"
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 10
    grad_clip: float = 1.0
    minutes: float | None = 4.0
    max_steps: int | None = None
    batch_size: int = 4
    schedule_steps: int = 25
    guidance_scale: float = 6.0
    crop_prob: float = 0.5
    min_crop_seconds: float = 2.0
    window_seconds: float = 1.0
    val_batches: int = 2
    seed: int = 0
    version: int = 1

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective={self.objective!r}: use one of {OBJECTIVES}")
        if self.minutes is None and self.max_steps is None:
            raise ValueError("give a budget: minutes= and/or max_steps=")
        if self.lr < 0 or self.batch_size < 1 or self.schedule_steps < 1 or self.window_seconds <= 0:
            raise ValueError("lr >= 0, batch_size >= 1, schedule_steps >= 1 and window_seconds > 0 are required")
        self.betas = tuple(self.betas)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class QATReport:
    """What `finetune_lowrank_` did: per-step loss curve, time, steps, clips seen."""

    config: QATTrainingConfig
    steps: list[dict] = field(default_factory=list)  # step, seconds, lr, loss, grad_norm
    seconds: float = 0.0
    clips_seen: int = 0
    layers: int = 0
    trainable_params: int = 0
    val_before: float | None = None
    val_after: float | None = None

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.steps)

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.steps]


class _Distillation:
    """Draws batches and computes the objective: student vs teacher denoised predictions."""

    def __init__(self, pipe, teacher: nn.Module, config: QATTrainingConfig):
        from ..models.stable_audio_conditioning import rotary

        self.pipe, self.teacher, self.cfg = pipe, teacher, config
        self.crop = config  # make_batch reads its crop_prob and min_crop_seconds
        self.sched = copy.deepcopy(pipe.scheduler)  # set_timesteps mutates: keep the pipeline's untouched
        self.sched.set_timesteps(config.schedule_steps)
        self.sigmas = self.sched.sigmas[:-1].float()  # the levels a generation visits (last is the end)
        self.frames = pipe.transformer.config.sample_size
        self.rotary = rotary(pipe, self.frames)
        vae = pipe.vae
        self.hop, self.sr = vae.hop_length, int(vae.config.sampling_rate)
        self.fps = self.sr / self.hop
        self.window = min(self.frames, max(1, round(config.window_seconds * self.fps)))  # latent frames decoded
        with torch.no_grad():  # the latent of silence [C] pads cropped clips, as in DiT training
            quiet = torch.zeros(1, vae.config.audio_channels, self.hop * 8)
            self.silence = vae.encode(quiet).latent_dist.mode()[0].mean(-1)

    def batch(self, data: QATData, rng: np.random.Generator, generator: torch.Generator) -> dict:
        """Noised latents x [B, C, F], sigma [B], conditioning and the audio window of one batch."""
        cfg = self.cfg
        idx = rng.integers(len(data), size=cfg.batch_size)
        x0, start, end = make_batch(data.latents, self.silence, idx, self.crop, self.fps, rng)
        sigma = self.sigmas[torch.randint(len(self.sigmas), (cfg.batch_size,), generator=generator)]
        x = x0 + sigma[:, None, None] * torch.randn(x0.shape, generator=generator)
        # the audio window lies inside every clip's content (a cropped clip ends in silence)
        content = int(float((end - start).min()) * self.fps)
        a = int(rng.integers(0, max(0, content - self.window) + 1))
        return {"x": x, "sigma": sigma, "idx": idx, "start": start, "end": end, "window": (a, a + self.window)}

    @torch.no_grad()
    def _conditioning(self, data: QATData, b: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross [2B or B, T + 2, C] and global states, negative (all-zero cross) first under CFG,
        as `StableAudioPipeline.__call__` orders its batch."""
        from ..models.stable_audio_conditioning import conditioning

        cross, glob = conditioning(self.pipe, data.states[b["idx"]].float(), data.mask[b["idx"]], b["start"], b["end"])
        if self.cfg.guidance_scale > 1.0:
            cross, glob = torch.cat([torch.zeros_like(cross), cross]), torch.cat([glob, glob])
        return cross, glob

    def denoised(self, model: nn.Module, b: dict, cond) -> torch.Tensor:
        """The guided denoised prediction [B, C, F] of `model` (the scheduler's preconditioning)."""
        x, sigma, s = b["x"], b["sigma"], b["sigma"][:, None, None]
        guided = self.cfg.guidance_scale > 1.0
        if guided:
            x, sigma, s = torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([s, s])
        out = model(self.sched.precondition_inputs(x, s), self.sched.precondition_noise(sigma),
                    encoder_hidden_states=cond[0], global_hidden_states=cond[1], rotary_embedding=self.rotary,
                    return_dict=False)[0]
        d = self.sched.precondition_outputs(x, out, s)
        if guided:  # CFG on the model output = CFG on the denoised latent (affine in it)
            uncond, text = d.chunk(2)
            d = uncond + self.cfg.guidance_scale * (text - uncond)
        return d

    def decode_window(self, latents: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
        """Audio [B, channels, window samples] of latent frames [a, b), decoded with the decoder's
        reach on each side so the window's samples are those of a full decode."""
        a, b = window
        lo, hi = max(0, a - DECODE_MARGIN), min(latents.shape[-1], b + DECODE_MARGIN)
        audio = self.pipe.vae.decode(latents[..., lo:hi]).sample
        return audio[..., (a - lo) * self.hop: (b - lo) * self.hop].float()

    def loss(self, student: nn.Module, data: QATData, b: dict) -> torch.Tensor:
        cond = self._conditioning(data, b)
        with torch.no_grad():
            target = self.denoised(self.teacher, b, cond)
        pred = self.denoised(student, b, cond)
        if self.cfg.objective == "latent_mse":
            return nn.functional.mse_loss(pred, target)
        with torch.no_grad():
            ref = self.decode_window(target, b["window"])
        return stft_loss(ref, self.decode_window(pred, b["window"]), self.cfg.objective)


def finetune_lowrank_(pipe, config: QATTrainingConfig, data: QATData, teacher: nn.Module,
                      val_data: QATData | None = None, log_fn=None) -> QATReport:
    """Train the low-rank factors of `pipe.transformer`'s SVDQuantLinear layers, in place, by
    distillation from `teacher` (the full-precision transformer, e.g. a deep copy kept before
    `quantize_`); returns the QATReport. The factors end in the layers' buffers.

    data      training clips (`corpus_data(pipe, corpus, "train", n)` or `training_data`).
    val_data  clips whose loss on `config.val_batches` fixed batches is reported before and after.
    log_fn    called with a line every 10 steps (e.g. print).
    """
    student = pipe.transformer
    quantized_layers(student)
    if teacher is student or any(isinstance(m, SVDQuantLinear) for m in teacher.modules()):
        raise ValueError("teacher must be the full-precision transformer (a deep copy kept before quantize_)")
    if len(data) == 0:
        raise ValueError("no training clips")
    cfg = config
    task = _Distillation(pipe, teacher.eval(), cfg)
    rng, generator = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    report = QATReport(cfg)
    was_training = student.training
    student.eval()  # no dropout: the student must compute what it will compute at inference

    def validate() -> float | None:
        if val_data is None or cfg.val_batches == 0:
            return None
        vrng, vgen = np.random.default_rng(cfg.seed + 1), torch.Generator().manual_seed(cfg.seed + 1)
        with torch.no_grad():
            return float(np.mean([task.loss(student, val_data, task.batch(val_data, vrng, vgen)).item()
                                  for _ in range(cfg.val_batches)]))

    report.val_before = validate()
    # the autoencoder and projection stay frozen too (the STFT losses backpropagate through the decoder)
    with trainable_lowrank(student) as factors, frozen(pipe.vae, pipe.projection_model, teacher):
        params = [p for f in factors.values() for p in f.parameters() if p.numel()]
        report.layers, report.trainable_params = len(factors), sum(p.numel() for p in params)
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        budget = math.inf if cfg.minutes is None else cfg.minutes * 60
        max_steps = cfg.max_steps or 10**9
        start, step = time.perf_counter(), 0
        while step < max_steps and time.perf_counter() - start < budget:
            elapsed = time.perf_counter() - start
            progress = max(step / max_steps, elapsed / budget)  # share of the budget spent, for the cosine
            lr = warmup_cosine(cfg.lr, step, cfg.warmup_steps, progress, floor=0.1)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = task.loss(student, data, task.batch(data, rng, generator))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            report.clips_seen += cfg.batch_size
            report.steps.append({"step": step, "seconds": time.perf_counter() - start, "lr": lr,
                                 "loss": loss.item(), "grad_norm": float(grad_norm)})
            if log_fn is not None and step % 10 == 0:
                recent = np.mean(report.losses[-10:])
                log_fn(f"qat {cfg.objective} step {step}: loss {recent:.4f} lr {lr:.2e} "
                       f"{report.steps[-1]['seconds']:.0f} s")
        report.seconds = time.perf_counter() - start
        write_back(student, factors)
    report.val_after = validate()  # the stock forward with the stored fp16 factors, as inference runs
    student.train(was_training)
    return report
