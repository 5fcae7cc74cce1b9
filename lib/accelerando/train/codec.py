"""Fit Codec-Lite (`accelerando.models.codec_lite`): an RVQ on the Lite autoencoder's latents.

    python -m accelerando.train.codec --corpus full --train_clips 800 --out checkpoints/codec_lite

Encodes `train_clips` clips of the training split with the committed Lite autoencoder (posterior
mean), fits `codebooks` residual k-means stages of `size` vectors, then measures reconstruction
on `eval_clips` test clips for 1..K codebooks, next to the autoencoder's own round trip (the
ceiling of any quantizer of its latents): MR-STFT distance and SI-SDR of the audio, and the
latent error relative to the latents' energy, and the chroma correlation (the notes kept). Writes `<out>/codec_lite.safetensors` (fp16
codebooks), `<out>/config.json` and `<out>/train_log.json`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import config_from_argv
from ..checkpoint import file_sha256
from ..data.latents import split_latents as split_cached_latents


@dataclass
class CodecConfig:
    corpus: str = "full"
    train_clips: int = 800  # of 1,600; their latents are cached for MusicGen-Lite training too
    eval_clips: int = 32
    codebooks: int = 4
    size: int = 1024
    iters: int = 20
    autoencoder: str = "checkpoints/autoencoder_lite"
    out: str = "checkpoints/codec_lite"
    seed: int = 0
    threads: int | None = None


def split_latents(vae, vae_path, corpus, split: str, n: int, seed: int = 0) -> tuple[list, torch.Tensor]:
    """`n` clips of a corpus split (a seeded random choice, in corpus order; all of them if n is
    larger) and their autoencoder latents [n, 64, frames], cached in .cache/latents so that the
    codec fit, MusicGen-Lite's training and QAT encode each clip once: `data.latents.split_latents`
    for the autoencoder checkpoint at `vae_path`, whose weights' SHA-256 keys the cache."""
    from ..models.autoencoder_lite import WEIGHTS_FILE as VAE_WEIGHTS

    return split_cached_latents(vae, file_sha256(Path(vae_path) / VAE_WEIGHTS), corpus, split, n, seed)


def fit(cfg: CodecConfig) -> dict:
    from ..data import Corpus, build_corpus, preset
    from ..models.autoencoder_lite import load_autoencoder_lite
    from ..metrics.codec import codec_reconstruction
    from ..models.codec_lite import LatentCodec, ResidualVQ, save_codec_lite
    from .autoencoder import load_clips

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.time()
    vae = load_autoencoder_lite(cfg.autoencoder, expect_config=None)
    corpus = build_corpus(preset(cfg.corpus, sample_rate=int(vae.config.sampling_rate)))
    _, train_latents = split_latents(vae, cfg.autoencoder, corpus, "train", cfg.train_clips, cfg.seed)
    latents = train_latents.transpose(1, 2).reshape(-1, train_latents.shape[1])  # [clips x frames, 64]
    encode_s = time.time() - start
    rvq = ResidualVQ.fit(latents, codebooks=cfg.codebooks, size=cfg.size, iters=cfg.iters, seed=cfg.seed)
    fit_s = time.time() - start - encode_s
    codec = LatentCodec(vae, rvq)
    eval_corpus = Corpus(corpus.path, corpus.filter(split="test").clips[: cfg.eval_clips])
    per_clip = [codec_reconstruction(codec, torch.from_numpy(clip)[None]) for clip in load_clips(eval_corpus, "test")]
    metrics = ("mrstft", "si_sdr", "chroma", "latent_rel_err")
    # {"autoencoder" | "1".."K": {metric: mean over the clips (None values left out)}}, the stages in order
    summary = {}
    for i, row in enumerate(per_clip[0]):
        stage = summary.setdefault("autoencoder" if row["codebooks"] == 0 else str(row["codebooks"]), {})
        for m in metrics:
            values = [clip[i][m] for clip in per_clip if clip[i].get(m) is not None]
            if values:  # chroma is None for a flat chroma: left out, and absent when no clip has it
                stage[m] = float(np.mean(values))
    log = {
        "command": "python -m accelerando.train.codec " + " ".join(sys.argv[1:]),
        "config": asdict(cfg), "latent_frames": int(latents.shape[0]), "encode_s": encode_s, "fit_s": fit_s,
        "frame_rate": codec.frame_rate, "bitrate": codec.bitrate,
        "bitrate_per_codebooks": {row["codebooks"]: row["bitrate"] for row in per_clip[0][1:]},
        "eval_clips": len(per_clip), "reconstruction": summary,
    }
    out = save_codec_lite(rvq, cfg.out, vae_path=cfg.autoencoder, extra={"fit": {k: log[k] for k in ("latent_frames", "bitrate")}})
    (Path(out) / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return log


def main(argv: list[str] | None = None) -> None:
    cfg = config_from_argv(CodecConfig, argv, __doc__.split("\n\n")[0])
    log = fit(cfg)
    print(json.dumps({k: log[k] for k in ("latent_frames", "fit_s", "bitrate", "reconstruction")}, indent=1))


if __name__ == "__main__":
    main()
