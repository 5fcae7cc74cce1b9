"""Audio-domain calibration objectives: phase-coherent calibration (the thesis's WP1 contribution).

SVDQuant chooses each layer's smoothing by that layer's output error. In a latent audio model the
error that matters is the one heard after the whole denoising loop and the decoder, and a
magnitude-only view misses phase errors that smear transients and detune partials. These
objectives compare the decoded audio of the model being quantized with the full-precision
model's audio from the same prompts and noise, with the metrics suite's definitions
(`accelerando.metrics.fidelity`, three resolutions 512/1024/2048):

    stft_magnitude   multi-resolution STFT magnitude distance (spectral convergence + log magnitude)
    stft_complex     multi-resolution complex STFT distance, ||S - S_ref|| / ||S_ref||: phase-coherent

`pipeline_calibration(pipe, prompts, ...)` makes the two callables `quantize_` takes for a
diffusers audio pipeline: `calib` (run the pipeline, so hooks see every denoising step) and
`audio_fn` (the same run, returning waveforms and their sample rate).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..metrics.fidelity import complex_mrstft_distance, mrstft_distance

DISTANCES = {"stft_magnitude": mrstft_distance, "stft_complex": complex_mrstft_distance}


def stft_distance(reference: torch.Tensor, audio: torch.Tensor, sr: int, kind: str = "stft_complex") -> float:
    """Mean over clips of the `kind` distance of audio to reference ([batch, samples] or
    [batch, channels, samples], sample rate sr in Hz)."""
    if kind not in DISTANCES:
        raise ValueError(f"unknown audio objective {kind!r}: use one of {sorted(DISTANCES)}")
    if reference.shape != audio.shape:
        raise ValueError(f"audio {tuple(audio.shape)} and reference {tuple(reference.shape)} differ in shape")
    ref = reference.detach().float().cpu().reshape(reference.shape[0], -1, reference.shape[-1]).numpy()
    est = audio.detach().float().cpu().reshape(audio.shape[0], -1, audio.shape[-1]).numpy()
    return float(np.mean([DISTANCES[kind](r, e, sr) for r, e in zip(ref, est)]))


DECODE_MARGIN = 12  # latent frames decoded past the window: the Oobleck decoder's reach is about 9


@torch.no_grad()
def render(pipe, prompts: list[str], seconds: float, steps: int, guidance_scale: float = 6.0,
           seed: int = 0) -> tuple[torch.Tensor, int]:
    """Generate `prompts` and decode only the first `seconds`: (audio [batch, channels, samples], sr).

    The pipeline always denoises its full `sample_size` and decodes all of it before cropping;
    the Oobleck decoder is convolutional with a reach of about 9 latent frames, so decoding the
    window plus a 12-frame margin gives the same samples at a fraction of the cost (the decode of
    10 s is most of a short generation's time).
    """
    from ..models.stable_audio_lite import generate

    latents, sr = generate(pipe, prompts, seconds=seconds, steps=steps, guidance_scale=guidance_scale, seed=seed,
                           output_type="latent")
    samples = int(round(seconds * sr))
    frames = min(latents.shape[-1], -(-samples // pipe.vae.hop_length) + DECODE_MARGIN)
    audio = pipe.vae.decode(latents[..., :frames].to(pipe.vae.dtype)).sample[..., :samples]
    return audio.float().cpu(), sr


def pipeline_calibration(pipe, prompts: list[str], steps: int = 8, seconds: float = 2.0, guidance_scale: float = 6.0,
                         seed: int = 0) -> tuple[Callable, Callable]:
    """(calib, audio_fn) for `quantize_(pipe.transformer, config, calib=..., audio_fn=...)`.

    Both run `pipe` on `prompts` for `steps` denoising steps from the noise of `seed` and decode
    `seconds` of audio, so every call sees the same inputs; audio_fn returns (waveforms [batch,
    channels, samples], sample rate in Hz). The model argument is ignored: the pipeline holds the
    very transformer that `quantize_` patches.
    """

    def audio_fn(_model=None) -> tuple[torch.Tensor, int]:
        return render(pipe, prompts, seconds, steps, guidance_scale, seed)

    return audio_fn, audio_fn
