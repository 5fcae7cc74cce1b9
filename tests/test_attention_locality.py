"""The attention-by-distance profile: it sums weights by frame distance, recording leaves the
model's output unchanged, and the bar contrast reads peaks at whole bars."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from accelerando.attention.locality import DistanceProfile, attention_by_distance, bar_contrast
from accelerando.models.stable_audio_conditioning import rotary


def test_profile_sums_weight_by_distance_without_the_global_token():
    frames = 6
    probs = torch.zeros(1, 2, frames + 1, frames + 1)
    probs[:, :, 1:, 1:] = torch.eye(frames)  # every frame attends to itself
    probs[:, :, 0, :] = 1.0 / (frames + 1)  # the global token's row is left out
    profile = DistanceProfile()
    profile.add(probs)
    weight = profile.mean_weight()
    assert weight.shape == (frames,) and weight[0] == pytest.approx(1.0) and np.allclose(weight[1:], 0.0)
    with pytest.raises(RuntimeError, match="attention_by_distance"):
        DistanceProfile().mean_weight()


def test_recording_leaves_the_output_unchanged_and_restores_the_processors(tiny_lite_pipe):
    tr = tiny_lite_pipe.transformer
    stock = tr.attn_processors
    frames = 30
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, tr.config.in_channels, frames, generator=g)
    enc = torch.randn(1, 5, tr.config.cross_attention_input_dim, generator=g)
    glob = torch.randn(1, 1, tr.config.global_states_input_dim, generator=g)

    def forward():
        with torch.no_grad():
            return tr(x, torch.tensor([0.4]), encoder_hidden_states=enc, global_hidden_states=glob,
                      rotary_embedding=rotary(tiny_lite_pipe, frames), return_dict=False)[0]

    reference = forward()
    with attention_by_distance(tr) as profile:
        torch.testing.assert_close(forward(), reference, atol=1e-5, rtol=1e-4)
    weight = profile.mean_weight()
    assert weight.shape == (frames,) and (weight > 0).all() and (weight <= 1).all()
    assert all(tr.attn_processors[k] is p for k, p in stock.items())


def test_bar_contrast_reads_peaks_at_whole_bars():
    weight = np.ones(200)
    assert bar_contrast(weight, bar_frames=40.0, bars=2) == pytest.approx(1.0)
    weight[[40, 80]] = 3.0  # peaks at one and two bars
    assert bar_contrast(weight, bar_frames=40.0, bars=2, width=0) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="generate longer"):
        bar_contrast(weight, bar_frames=90.0, bars=2)
    with pytest.raises(ValueError, match="more than"):
        bar_contrast(weight, bar_frames=2.0)
