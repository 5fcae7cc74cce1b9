"""Autoencoder latents of corpus clips, cached, and the batch makers that train on them.

The DiT, the codec fit, MusicGen-Lite and quantization-aware training all read the same latents:
each clip is encoded once (the encoder costs about 0.1 s per second of audio on CPU) and cached in
.cache/latents under a key of corpus, autoencoder weights, latent layout and clip list.

    clips = pick_clips(corpus, "train", 800, seed=0)
    latents = cached_latents(vae, vae_sha, corpus, clips, "train")      # [N, C, frames]
    x0, start, end = make_batch(latents, silence, idx, crop, fps, rng)   # timing-conditioned crops

`vae` is an `AutoencoderOobleck` (or the Lite subclass); this module only calls its `encode` and
reads its config, so it sits below `models`.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import numpy as np
import torch

from ..machine import REPO_ROOT


@torch.no_grad()
def encode_latents(vae, clips: list, chunk: int = 4) -> torch.Tensor:
    """Posterior-mean latents [N, C, frames] of corpus clips (mono, at the autoencoder's rate)."""
    hop = vae.hop_length
    out = []
    for i in range(0, len(clips), chunk):
        audio = [c.load() for c in clips[i : i + chunk]]
        audio = [a.mean(axis=1) if a.ndim == 2 else a for a in audio]
        n = min(len(a) for a in audio) // hop * hop
        wav = torch.from_numpy(np.stack([a[:n] for a in audio])).float()[:, None, :]
        out.append(vae.encode(wav).latent_dist.mode())
    frames = min(z.shape[-1] for z in out)
    return torch.cat([z[..., :frames] for z in out])


def cached_latents(vae, vae_sha: str, corpus, clips: list, name: str) -> torch.Tensor:
    """`encode_latents`, cached per (corpus, autoencoder weights and latent layout, clip list) in
    .cache/latents: the same weights grouped otherwise give other latents. `vae_sha` is the
    SHA-256 of the autoencoder's weights file."""
    ids = ",".join(c.id for c in clips)
    # the frame group as models.latent_grouping.latent_frame_group reads it (1 for the stock class)
    layout = f"g{int(vae.config.get('latent_frame_group', 1))}"
    key = hashlib.sha256(f"{corpus.key}|{vae_sha}|{layout}|{ids}".encode()).hexdigest()[:16]
    path = REPO_ROOT / ".cache" / "latents" / f"{name}-{key}.pt"
    if path.is_file():
        return torch.load(path)
    latents = encode_latents(vae, clips)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(latents, path.with_suffix(".partial"))
    path.with_suffix(".partial").rename(path)
    return latents


def pick_clips(corpus, split: str, n: int, seed: int = 0) -> list:
    """`n` clips of a corpus split: a seeded random choice, in corpus order (all of them if n is
    larger). The codec fit, MusicGen-Lite and QAT pick with this, so they share cached latents."""
    pool = corpus.filter(split=split)
    if not pool:
        raise ValueError(f"corpus {corpus.path} has no {split!r} clips (it has {corpus.splits})")
    pick = sorted(np.random.default_rng(seed).permutation(len(pool))[:n])
    return [pool[i] for i in pick]


def split_latents(vae, vae_sha: str, corpus, split: str, n: int, seed: int = 0) -> tuple[list, torch.Tensor]:
    """`pick_clips` and their cached latents [n, C, frames]; `vae_sha` as for `cached_latents`."""
    clips = pick_clips(corpus, split, n, seed)
    return clips, cached_latents(vae, vae_sha, corpus, clips, split)


class CropSettings(Protocol):
    """What `make_batch` reads of a config (the DiT's training config has both)."""

    crop_prob: float  # share of rows cut to a random window
    min_crop_seconds: float  # shortest window


def make_batch(latents: torch.Tensor, silence: torch.Tensor, idx: np.ndarray, crop: CropSettings,
               frames_per_second: float, rng: np.random.Generator, *aligned: torch.Tensor
               ) -> tuple[torch.Tensor, ...]:
    """Clean latents [B, C, F] and seconds_start / seconds_end [B] (seconds) of clips `idx` of
    `latents` [N, C, F], each with probability `crop.crop_prob` cut to a random window of
    `crop.min_crop_seconds` or more, placed at the start and padded with `silence` [C] (the latent
    of silence): Stable Audio's timing conditioning. Each `aligned` tensor [N, D, F] (frame
    features of the same clips) is cut the same way, padded with zeros, and returned after them."""
    frames = latents.shape[-1]
    x0 = latents[idx].clone()
    extra = [a[idx].clone() for a in aligned]
    start = torch.zeros(len(idx))
    end = torch.full((len(idx),), frames / frames_per_second)
    min_frames = max(1, min(frames, round(crop.min_crop_seconds * frames_per_second)))
    for row, i in enumerate(idx):
        if rng.random() < crop.crop_prob:
            length = int(rng.integers(min_frames, frames + 1))
            offset = int(rng.integers(0, frames - length + 1))
            x0[row] = silence[:, None]
            x0[row, :, :length] = latents[i, :, offset : offset + length]
            for a, out in zip(aligned, extra):
                out[row] = 0
                out[row, :, :length] = a[i, :, offset : offset + length]
            start[row], end[row] = offset / frames_per_second, (offset + length) / frames_per_second
    return (x0, start, end, *extra)
