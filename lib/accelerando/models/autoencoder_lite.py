"""Stable-Audio-Lite autoencoder: a few-M-parameter config of diffusers' `AutoencoderOobleck`.

Stable Audio Open's VAE (Evans et al. 2024, arXiv:2407.14358, section 3.1) is a 156 M-parameter
Oobleck autoencoder: 44.1 kHz stereo in, 64 latent channels out at a hop of 2048 samples
(21.5 frames/s), trained with a multi-resolution STFT loss, adversarial losses and a small KL
term. Its published weights cannot be downloaded here, and training 156 M parameters on two CPU
cores is out of reach, so Stable-Audio-Lite trains its own, much smaller one on the offline corpus.

Choices (all in `AUTOENCODER_LITE_CONFIG`, which is plain data):
    mono        The offline corpus is rendered mono (`CorpusConfig.channels=1`), and every layer
                that runs at the full sample rate costs in proportion to its width, which mono
                halves on the decoder's output side. Stereo material is downmixed before encoding.
    22.05 kHz   The full-rate layers dominate the cost of a training step, so half the published
                rate halves it. The General MIDI soundfont the corpus is rendered with has little
                energy above 11 kHz.
    hop 256     Strides [2, 4, 4, 8]: the encoder emits 16 channels at 86.1 frames/s. A decoder
                of hop 1024 (strides [2, 4, 4, 4, 8]) trained for 55 CPU minutes rendered every
                frame as nearly the same waveform and lost the notes (chroma correlation 0.04 of
                the round trip); at hop 256 it learns the waveform within the same budget (chroma
                0.90, key 0.64 on 24 test clips; checkpoints/README.md has the runs).
    group 4     `latent_frame_group=4` stacks 4 consecutive encoder frames into one latent frame
                (`accelerando.models.latent_grouping`): 64 latent channels at 21.5 frames/s,
                Stable Audio Open's latent shape, so the denoiser's sequence lengths (and every
                attention / caching result measured on them) carry over to the real model.
                Same compression as the real model: 64 numbers per 1024 mono samples.
    balanced    The decoder's ConvTranspose1d upsamplers are trained with equal polyphase tap
                sums (`train.autoencoder.balance_upsamplers`), so a constant input cannot come
                out periodic in the hop ("tonal artifacts", Pons et al. 2021); the saved
                weights satisfy it, no hook is needed at inference.
    widths      diffusers ties the encoder's full-rate width to its output (encoder_hidden_size =
                2 x encoder channels, mean and scale), so both the encoder and the decoder run 32
                channels at the full rate (the real model: 128 and 128). Deeper blocks widen
                (channel_multiples up to 8) where they are cheap.

Size: 2.4 M parameters (4.8 MB in fp16); the real VAE has 156 M. The committed checkpoint trained
1,815 steps of 4 x 0.74 s crops in 55 minutes on one thread (`accelerando.train.autoencoder`).

    vae = build_autoencoder_lite()                        # random weights, seeded
    z = vae.encode(wav).latent_dist.mode()                # wav [B, 1, S] -> z [B, 64, S // 1024]
    wav_hat = vae.decode(z).sample                        # [B, 1, frames x 1024]
    vae = load_autoencoder_lite("checkpoints/autoencoder_lite")   # fp16 safetensors + config.json
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from diffusers import AutoencoderOobleck
from torch import nn

from ..checkpoint import load_checked, save_fp16
from .common import seeded_build
from .latent_grouping import AutoencoderOobleckLite

# The AutoencoderOobleck keyword arguments of Stable-Audio-Lite (see the module docstring).
AUTOENCODER_LITE_CONFIG = dict(
    encoder_hidden_size=32,  # full-rate encoder width; = 2 x decoder_input_channels (mean, scale)
    downsampling_ratios=[2, 4, 4, 8],  # encoder hop 256 at 22.05 kHz (see "hop 256")
    channel_multiples=[1, 2, 4, 8],  # published [1, 2, 4, 8, 16]; capped where channels are cheap
    decoder_channels=32,  # full-rate decoder width (published 128)
    decoder_input_channels=16,  # encoder channels per encoder frame
    audio_channels=1,  # mono
    sampling_rate=22050,
    latent_frame_group=4,  # 4 x 16 = 64 latent channels per 1024 samples, 21.5 frames/s (see "group 4")
)

# A test-sized config of the same layout (hop 256, group 4: 16 latent channels at hop 1024).
AUTOENCODER_TINY_CONFIG = dict(
    encoder_hidden_size=8,
    downsampling_ratios=[2, 4, 4, 8],
    channel_multiples=[1, 1, 2, 2],
    decoder_channels=4,
    decoder_input_channels=4,
    audio_channels=1,
    sampling_rate=22050,
    latent_frame_group=4,
)

WEIGHTS_FILE = "autoencoder_lite.safetensors"  # fp16 state dict
CONFIG_FILE = "config.json"  # {"class": "AutoencoderOobleckLite", "config": {...}, "format": 1}
CLASSES = ("AutoencoderOobleckLite", "AutoencoderOobleck")  # the second: stock checkpoints (group 1)
FORMAT_VERSION = 1
TRAIN_COMMAND = ("python -m accelerando.train.autoencoder --corpus full --minutes 55 --threads 1 "
                 "--balanced_upsamplers True --out {path}")


def hop_length(config: dict = AUTOENCODER_LITE_CONFIG) -> int:
    """Samples per latent frame: the product of the strides times the frame group (1024 for the
    Lite config: 256 x 4)."""
    return math.prod(config["downsampling_ratios"]) * config.get("latent_frame_group", 1)


def latent_frames(num_samples: int, config: dict = AUTOENCODER_LITE_CONFIG) -> int:
    """Latent frames the encoder gives for `num_samples` samples: floor(samples / hop).

    Each strided conv has kernel 2s and padding ceil(s / 2), so a length divisible by the hop
    maps to exactly samples / hop frames and the decoder gives back frames x hop samples; the
    tail past the last whole hop (or group of encoder frames) is dropped (pad inputs to a
    multiple of the hop to keep it).
    Inputs shorter than one hop cannot be encoded.
    """
    hop = hop_length(config)
    if num_samples < hop:
        raise ValueError(f"{num_samples} samples: the encoder needs at least one hop ({hop} samples)")
    return num_samples // hop


def build_autoencoder_lite(
    config: dict | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> AutoencoderOobleckLite:
    """An `AutoencoderOobleckLite` with the Lite config (or `config`), random weights from `seed`.

    The caller's RNG state is left untouched; device "meta" builds shapes only.
    """
    config = dict(AUTOENCODER_LITE_CONFIG if config is None else config)
    _check_config(config)
    with seeded_build(seed, device):
        vae = AutoencoderOobleckLite(**config)
    # Plain nn.Module.to: diffusers' ModelMixin.to warns about fp32-pinned modules on any dtype
    # cast, even when there are none.
    return nn.Module.to(vae, device=device, dtype=dtype)


def _check_config(config: dict) -> None:
    # diffusers splits the encoder output into mean and scale halves; any other ratio builds a
    # model whose decoder input width does not match the latents and fails only at decode time.
    if config["encoder_hidden_size"] != 2 * config["decoder_input_channels"]:
        raise ValueError(
            f"encoder_hidden_size={config['encoder_hidden_size']} must be 2 x decoder_input_channels="
            f"{config['decoder_input_channels']} (the encoder emits mean and scale of each latent channel)"
        )


def save_autoencoder_lite(vae: AutoencoderOobleck, path: str | Path, extra: dict | None = None) -> Path:
    """Write `vae` to directory `path`: fp16 safetensors plus config.json (and `extra` metadata
    in it, e.g. training steps and validation numbers). Returns the directory."""
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vae.config.items() if not k.startswith("_")}
    meta = {"class": type(vae).__name__, "format": FORMAT_VERSION, "config": config, **(extra or {})}
    return save_fp16(vae, path, weights_name=WEIGHTS_FILE, config_name=CONFIG_FILE, meta=meta,
                     metadata={"format": str(FORMAT_VERSION)})


def load_autoencoder_lite(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    expect_config: dict | None = AUTOENCODER_LITE_CONFIG,
) -> AutoencoderOobleckLite:
    """Load a checkpoint written by `save_autoencoder_lite` (or the training script).

    The directory's config.json defines the architecture; unless `expect_config` is None it must
    equal `expect_config` (the Lite config by default), so a test-sized or outdated checkpoint is
    not silently used in its place. Every failure (missing directory or file, config differing,
    weights not matching the config) raises with the fix. Weights are stored fp16 and cast to
    `dtype`. Nothing is downloaded.
    """
    path = Path(path).expanduser()
    fix = f"Train one with `{TRAIN_COMMAND.format(path=path)}` (55 min on one CPU core)."
    if not path.is_dir():
        raise FileNotFoundError(f"autoencoder checkpoint directory {path} does not exist. {fix}")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"autoencoder checkpoint {path} lacks {' and '.join(missing)}. {fix}")
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
        config = meta["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path / CONFIG_FILE} is not an autoencoder-lite config ({err!r}). {fix}") from err
    if meta.get("class") not in CLASSES or meta.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{path / CONFIG_FILE}: class {meta.get('class')!r}, format {meta.get('format')!r}; expected "
            f"one of {CLASSES}, format {FORMAT_VERSION}. {fix}"
        )
    config = {"latent_frame_group": 1, **config}  # a stock checkpoint's layout
    if expect_config is not None:
        differ = sorted(k for k in set(config) | set(expect_config) if config.get(k) != expect_config.get(k))
        if differ:
            rows = ", ".join(f"{k}: checkpoint {config.get(k)!r} vs expected {expect_config.get(k)!r}" for k in differ)
            raise ValueError(
                f"autoencoder checkpoint {path} has another architecture ({rows}). {fix} "
                f"Or pass expect_config=None to load the checkpoint's own architecture."
            )
    _check_config(config)
    with seeded_build(0, "cpu"):
        vae = AutoencoderOobleckLite(**config)
    load_checked(vae, path / WEIGHTS_FILE, fix)
    return nn.Module.to(vae, device=device, dtype=dtype).eval()
