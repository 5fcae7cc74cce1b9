"""Latent frame grouping: an Oobleck autoencoder whose latent frame stacks g encoder frames.

Why: a hop-256 Lite autoencoder carries pitch where the hop-1024 one does not
(checkpoints/README.md), but at 22.05 kHz its 86 frames/s would make every latent sequence of the
book four times longer than Stable Audio Open's 21.5 frames/s. Stacking g = 4 consecutive encoder
frames into one latent frame (space to depth along time) gives back the published shape, 4 x 16 =
64 channels at 21.5 frames/s, without changing a weight: the denoiser, the codec and the caches
see the sequence lengths they were built for, and the autoencoder sees its own frames.

Layout: diffusers' encoder emits [B, 2C, T], the means of the C latent channels then their
scales, and `OobleckDiagonalGaussianDistribution` splits it in two halves. Each half is grouped
on its own, so a grouped latent splits the same way: [B, 2Cg, T / g], channel c * g + k of a half
holding channel c at frame offset k of its group. Encoder frames past the last whole group are
dropped, as the stock encoder drops samples past the last whole hop.

    vae = AutoencoderOobleckLite(**config, latent_frame_group=4)
    z = vae.encode(wav).latent_dist.mode()      # wav [B, 1, S] -> [B, 4C, S // (hop x 4)]
    wav_hat = vae.decode(z).sample               # [B, 1, frames x hop x 4]
"""

from __future__ import annotations

import math

import torch
from diffusers import AutoencoderOobleck
from diffusers.configuration_utils import register_to_config


def group_frames(h: torch.Tensor, group: int) -> torch.Tensor:
    """[B, C, T] -> [B, C x group, T // group]: channel c * group + k is channel c at offset k of
    each group of `group` frames; frames past the last whole group are dropped."""
    b, c, t = h.shape
    n = t // group
    return h[..., : n * group].reshape(b, c, n, group).transpose(2, 3).reshape(b, c * group, n)


def ungroup_frames(z: torch.Tensor, group: int) -> torch.Tensor:
    """[B, C x group, T] -> [B, C, T x group], the inverse of `group_frames`."""
    b, cg, t = z.shape
    if cg % group:
        raise ValueError(f"{cg} latent channels do not split into groups of {group} frames")
    return z.reshape(b, cg // group, group, t).transpose(2, 3).reshape(b, cg // group, t * group)


class AutoencoderOobleckLite(AutoencoderOobleck):
    """diffusers' `AutoencoderOobleck` with `latent_frame_group` encoder frames per latent frame.

    Weights, encoder and decoder are the stock ones (a checkpoint of either class loads into the
    other); only the latent layout differs. `latent_frame_group=1` is the stock model.
    """

    @register_to_config
    def __init__(self, encoder_hidden_size: int = 128, downsampling_ratios: list = [2, 4, 4, 8, 8],
                 channel_multiples: list = [1, 2, 4, 8, 16], decoder_channels: int = 128,
                 decoder_input_channels: int = 64, audio_channels: int = 2, sampling_rate: int = 44100,
                 latent_frame_group: int = 1):
        if int(latent_frame_group) < 1:
            raise ValueError(f"latent_frame_group={latent_frame_group}: use 1 (the stock layout) or more encoder frames "
                             "per latent frame, e.g. 4")
        super().__init__(encoder_hidden_size=encoder_hidden_size, downsampling_ratios=downsampling_ratios,
                         channel_multiples=channel_multiples, decoder_channels=decoder_channels,
                         decoder_input_channels=decoder_input_channels, audio_channels=audio_channels,
                         sampling_rate=sampling_rate)
        # Samples per latent frame: StableAudioPipeline and this library size audio by it.
        self.hop_length = int(math.prod(downsampling_ratios)) * int(latent_frame_group)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        h = super()._encode(x)
        group = self.config.latent_frame_group
        if group == 1:
            return h
        if h.shape[-1] < group:
            hop = math.prod(self.config.downsampling_ratios)
            raise ValueError(f"{x.shape[-1]} samples give {h.shape[-1]} encoder frames; one latent frame needs "
                             f"{group} ({group * hop} samples): pass longer audio")
        mean, scale = h.chunk(2, dim=1)
        return torch.cat([group_frames(mean, group), group_frames(scale, group)], dim=1)

    def _decode(self, z: torch.Tensor, return_dict: bool = True):
        group = self.config.latent_frame_group
        return super()._decode(z if group == 1 else ungroup_frames(z, group), return_dict)


def latent_frame_group(vae: AutoencoderOobleck) -> int:
    """Encoder frames per latent frame of `vae` (1 for the stock class)."""
    return int(vae.config.get("latent_frame_group", 1))


def latent_channels(vae: AutoencoderOobleck) -> int:
    """Channels of `vae`'s latents: the decoder's input channels times the frame group."""
    return vae.config.decoder_input_channels * latent_frame_group(vae)


def decoder_hop(vae: AutoencoderOobleck) -> int:
    """Audio samples per encoder (and decoder) frame: the product of the strides. A decoder that
    repeats itself does so at this period, not at the latent hop."""
    return math.prod(vae.config.downsampling_ratios)


def latent_hop(vae: AutoencoderOobleck) -> int:
    """Audio samples per latent frame: the product of the strides times the frame group (the
    model's `hop_length`, which the pipeline sizes audio by)."""
    return math.prod(vae.config.downsampling_ratios) * latent_frame_group(vae)
