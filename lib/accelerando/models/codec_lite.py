"""Codec-Lite: discrete audio tokens for MusicGen-Lite, a residual vector quantizer (RVQ) over the
Stable-Audio-Lite autoencoder's latents.

MusicGen tokenizes audio with EnCodec: a convolutional autoencoder whose latents an RVQ turns
into K parallel code streams (4 codebooks of 2048 at 50 frames/s for musicgen-small). No
EnCodec weights can be downloaded here, and the Lite autoencoder of Chapter 3 already turns
22.05 kHz audio into 64 continuous latents at 21.5 frames/s. So the codec is that autoencoder
plus an RVQ fitted on its latents of the training split, stage by stage, with k-means on what the
previous stages leave (the residual):

    z = vae.encode(wav).latent_dist.mode()     [B, 64, T]
    codes[k] = argmin_j || r_k - C_k[j] ||,    r_0 = z,  r_{k+1} = r_k - C_k[codes[k]]
    z_hat = sum_k C_k[codes[k]]                 -> vae.decode(z_hat)

    codec = LatentCodec(vae, ResidualVQ.fit(latents, codebooks=4, size=1024))
    codes = codec.encode(wav)                   # [B, 4, T] int64 at 21.5 frames/s
    wav_hat = codec.decode(codes)               # [B, 1, T x 1024]

A reader with real EnCodec weights uses transformers' `EncodecModel` instead
(`encodec_codec.EncodecTokenizer`); the LM code only sees a `TokenCodec`: `encode` / `decode`
and [batch, codebooks, frames] codes.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn

from .latent_grouping import latent_channels


class TokenCodec(Protocol):
    """What MusicGen-Lite needs of a tokenizer (Codec-Lite's `LatentCodec`, `EncodecTokenizer`)."""

    sample_rate: int  # Hz
    frame_rate: float  # code frames per second
    num_codebooks: int  # K
    codebook_size: int
    bitrate: float  # bits per second of the codes
    weights_sha256: str | None  # of the weights file it was loaded from (None: built in memory)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Audio [B, channels, samples] at sample_rate -> codes [B, K, frames] int64."""

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, k <= K, frames] -> audio [B, channels, samples]."""


def token_bitrate(frame_rate: float, codebooks: int, codebook_size: int) -> float:
    """Bits per second of RVQ codes: frames/s x codebooks x log2(codebook size)."""
    return frame_rate * codebooks * math.log2(codebook_size)


class ResidualVQ(nn.Module):
    """K codebooks of `size` vectors of `dim`; codes [B, K, T] <-> latents [B, dim, T]."""

    def __init__(self, codebooks: int = 4, size: int = 1024, dim: int = 16):
        super().__init__()
        if codebooks < 1 or size < 2 or dim < 1:
            raise ValueError(f"codebooks={codebooks}, size={size}, dim={dim}: need >= 1 codebook of >= 2 vectors")
        self.register_buffer("codebooks", torch.zeros(codebooks, size, dim))

    @property
    def num_codebooks(self) -> int:
        return self.codebooks.shape[0]

    @property
    def size(self) -> int:
        return self.codebooks.shape[1]

    @torch.no_grad()
    def encode(self, z: torch.Tensor, codebooks: int | None = None) -> torch.Tensor:
        """Latents [B, dim, T] -> codes [B, K, T] (the first `codebooks` stages if given)."""
        if z.ndim != 3 or z.shape[1] != self.codebooks.shape[2]:
            raise ValueError(f"latents of shape {tuple(z.shape)}: expected [batch, {self.codebooks.shape[2]}, frames]")
        if not torch.isfinite(z).all():
            raise ValueError("latents contain NaN or inf: encode finite audio")
        residual = z.transpose(1, 2).reshape(-1, z.shape[1]).float()
        codes = []
        for book in self.codebooks[: codebooks or self.num_codebooks]:
            idx = _nearest(residual, book.float())
            residual = residual - book.float()[idx]
            codes.append(idx)
        return torch.stack(codes, dim=0).reshape(len(codes), z.shape[0], z.shape[2]).transpose(0, 1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, k, T] (k <= K stages) -> latents [B, dim, T]."""
        if codes.ndim != 3 or codes.shape[1] > self.num_codebooks:
            raise ValueError(f"codes of shape {tuple(codes.shape)}: expected [batch, <= {self.num_codebooks}, frames]")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.size):
            raise ValueError(f"codes outside [0, {self.size}): these are not this codec's tokens")
        z = sum(self.codebooks[k][codes[:, k]] for k in range(codes.shape[1]))  # [B, T, dim]
        return z.transpose(1, 2)

    @classmethod
    @torch.no_grad()
    def fit(cls, latents: torch.Tensor, codebooks: int = 4, size: int = 1024, iters: int = 20,
            seed: int = 0) -> ResidualVQ:
        """Residual k-means on latent frames [N, dim] (k-means++ seeding on a subsample, Lloyd
        iterations; empty clusters are re-seeded on the worst-served points)."""
        if latents.ndim != 2 or latents.shape[0] < size:
            raise ValueError(f"{tuple(latents.shape)} latent frames: need [N, dim] with N >= size={size}")
        gen = torch.Generator().manual_seed(seed)
        rvq = cls(codebooks, size, latents.shape[1])
        residual = latents.float().clone()
        for k in range(codebooks):
            book = _kmeans(residual, size, iters, gen)
            rvq.codebooks[k] = book
            residual -= book[_nearest(residual, book)]
        return rvq


def _nearest(x: torch.Tensor, book: torch.Tensor, chunk: int = 32768) -> torch.Tensor:
    sq = (book * book).sum(1)
    return torch.cat([(sq - 2 * part @ book.T).argmin(1) for part in x.split(chunk)])


def _kmeans(x: torch.Tensor, size: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    sample = x[torch.randperm(x.shape[0], generator=gen)[: min(x.shape[0], 20 * size)]]
    centers = [sample[torch.randint(sample.shape[0], (1,), generator=gen)]]
    dist = ((sample - centers[0]) ** 2).sum(1)
    for _ in range(size - 1):  # k-means++ seeding
        pick = torch.multinomial(dist / dist.sum(), 1, generator=gen) if dist.sum() > 0 else torch.randint(
            sample.shape[0], (1,), generator=gen)
        centers.append(sample[pick])
        dist = torch.minimum(dist, ((sample - centers[-1]) ** 2).sum(1))
    book = torch.cat(centers)
    for _ in range(iters):
        idx = _nearest(x, book)
        sums = torch.zeros_like(book).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=size).float()
        empty = counts == 0
        book = torch.where(empty[:, None], book, sums / counts.clamp(min=1)[:, None])
        if empty.any():  # re-seed empty clusters on the points farthest from their center
            err = ((x - book[idx]) ** 2).sum(1)
            book[empty] = x[err.topk(int(empty.sum())).indices]
    return book


class LatentCodec:
    """Audio <-> RVQ codes through the Lite autoencoder: the tokenizer of MusicGen-Lite."""

    def __init__(self, vae, rvq: ResidualVQ):
        if latent_channels(vae) != rvq.codebooks.shape[2]:
            raise ValueError(f"the RVQ quantizes {rvq.codebooks.shape[2]}-dim latents, the autoencoder has "
                             f"{latent_channels(vae)}: fit the RVQ on this autoencoder's latents")
        self.vae, self.rvq = vae, rvq
        self.weights_sha256: str | None = None  # set by load_codec_lite: the codebooks' file

    @property
    def sample_rate(self) -> int:
        return int(self.vae.config.sampling_rate)

    @property
    def frame_rate(self) -> float:
        """Code frames per second."""
        return self.sample_rate / self.vae.hop_length

    @property
    def num_codebooks(self) -> int:
        return self.rvq.num_codebooks

    @property
    def codebook_size(self) -> int:
        return self.rvq.size

    @property
    def bitrate(self) -> float:
        return token_bitrate(self.frame_rate, self.num_codebooks, self.codebook_size)

    @torch.no_grad()
    def latents(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.ndim != 3 or wav.shape[1] != self.vae.config.audio_channels:
            raise ValueError(f"audio of shape {tuple(wav.shape)}: expected [batch, "
                             f"{self.vae.config.audio_channels}, samples] at {self.sample_rate} Hz")
        if not torch.isfinite(wav).all():
            raise ValueError("audio contains NaN or inf: pass finite samples")
        return self.vae.encode(wav).latent_dist.mode()

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, codebooks: int | None = None) -> torch.Tensor:
        """Audio [B, channels, samples] at `sample_rate` -> codes [B, K, frames]."""
        return self.rvq.encode(self.latents(wav), codebooks)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, k, frames] -> audio [B, channels, frames x hop]."""
        return self.vae.decode(self.rvq.decode(codes)).sample


# ---------------------------------------------------------------------------------------------
# Checkpoints: fp16 codebooks beside a config.json naming the autoencoder they quantize
# ---------------------------------------------------------------------------------------------

WEIGHTS_FILE = "codec_lite.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
TRAIN_COMMAND = "python -m accelerando.train.codec --out {path}"


def save_codec_lite(rvq: ResidualVQ, path, vae_path, extra: dict | None = None):
    """Write the codebooks (fp16) and a config.json with their shape and the SHA-256 of the
    autoencoder weights they were fitted on."""
    from pathlib import Path

    from ..checkpoint import save_fp16
    from .autoencoder_lite import WEIGHTS_FILE as VAE_WEIGHTS
    from ..checkpoint import file_sha256

    meta = {"class": "CodecLite", "format": FORMAT_VERSION, "codebooks": rvq.num_codebooks, "size": rvq.size,
            "dim": int(rvq.codebooks.shape[2]), "autoencoder_sha256": file_sha256(Path(vae_path) / VAE_WEIGHTS),
            **(extra or {})}
    return save_fp16(rvq, path, weights_name=WEIGHTS_FILE, config_name=CONFIG_FILE, meta=meta)


def load_codec_lite(path=None, vae_path=None) -> LatentCodec:
    """The committed codec: the Lite autoencoder and the RVQ fitted on its latents. Errors name
    the fix: missing files, another kind of config, or an autoencoder other than the fitted one."""
    import json
    from pathlib import Path

    from ..checkpoint import load_checked
    from .autoencoder_lite import WEIGHTS_FILE as VAE_WEIGHTS
    from .autoencoder_lite import load_autoencoder_lite
    from ..checkpoint import CHECKPOINTS, file_sha256
    from .stable_audio_lite import VAE_CHECKPOINT

    path = Path(path or CHECKPOINTS / "codec_lite").expanduser()
    vae_path = Path(vae_path or VAE_CHECKPOINT).expanduser()
    fix = f"Fit one with `{TRAIN_COMMAND.format(path=path)}` or pass the directory that holds it."
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"Codec-Lite checkpoint {path} lacks {CONFIG_FILE} or {WEIGHTS_FILE}. {fix}")
    meta = json.loads((path / CONFIG_FILE).read_text())
    if meta.get("class") != "CodecLite" or meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path / CONFIG_FILE} is not a Codec-Lite config (class {meta.get('class')!r}). {fix}")
    if file_sha256(vae_path / VAE_WEIGHTS) != meta["autoencoder_sha256"]:
        raise ValueError(f"{path} was fitted on another autoencoder than the one in {vae_path}: its codes would "
                         f"decode to noise. Pass the autoencoder it was fitted on, or refit ({fix})")
    rvq = ResidualVQ(meta["codebooks"], meta["size"], meta["dim"])
    load_checked(rvq, path / WEIGHTS_FILE, fix)
    codec = LatentCodec(load_autoencoder_lite(vae_path, expect_config=None), rvq.float())
    codec.weights_sha256 = file_sha256(path / WEIGHTS_FILE)  # what MusicGen-Lite checkpoints store
    return codec
