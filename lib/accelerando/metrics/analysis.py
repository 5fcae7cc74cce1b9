"""Shared front end of the musical metrics: validated mono at one analysis rate, and the
sentinel rule for clips a metric cannot score."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..audio import check_audio, resample, to_mono

log = logging.getLogger(__name__)

# librosa's defaults are tuned at 22.05 kHz; everything musical is analysed there.
ANALYSIS_SR = 22050


def analysis_signal(wav: torch.Tensor | np.ndarray, sr: int, *, name: str) -> np.ndarray:
    """Validate [channels, samples], downmix to mono and resample to ANALYSIS_SR: float32 [samples]."""
    wav = check_audio(wav, sr, name=name)
    return to_mono(resample(wav.float(), sr, ANALYSIS_SR))


def undefined(metric: str, name: str, reason: str) -> None:
    """The documented sentinel: log why `metric` is undefined for clip `name`, return None."""
    log.warning("%s undefined for %s: %s (returning None; aggregation skips it)", metric, name, reason)
    return None
