"""Where a trained DiT's self-attention goes: attention weight by distance between frames.

Radial attention bets that attention falls off with distance except near whole bars. This
measures the bet on a trained model: during ordinary sampling, every self-attention layer's
weights (dense, as the stock processor computes them) are summed by the distance |q - k| in
frames between latent frames (the global token left out), averaged over queries and heads.

    with attention_by_distance(pipe.transformer) as profile:
        generate(pipe, caption, seconds=8.0)
    weight = profile.mean_weight()            # [max distance + 1]: mean weight per key at distance d
    bar_contrast(weight, bar_frames=43.1)     # weight near whole bars over weight half a bar away
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from .processors import attention_patch, is_self_attention
from .projections import attention_output, self_attention_inputs
from .radial import repeat_kv_heads


class DistanceProfile:
    """Attention weight summed by frame distance, and how many (query, key) pairs each distance has."""

    def __init__(self):
        self.weight = torch.zeros(0, dtype=torch.float64)
        self.pairs = torch.zeros(0, dtype=torch.float64)

    def add(self, probs: torch.Tensor, skip: int = 1) -> None:
        """probs [B, heads, tokens, tokens] attention weights; the first `skip` tokens (the global
        token) are left out. Weights are averaged over batch and heads, then summed by distance."""
        p = probs[:, :, skip:, skip:].double().mean(dim=(0, 1))  # [frames, frames]
        n = p.shape[0]
        if self.weight.numel() < n:
            self.weight = F.pad(self.weight, (0, n - self.weight.numel()))
            self.pairs = F.pad(self.pairs, (0, n - self.pairs.numel()))
        idx = torch.arange(n)
        distance = (idx[:, None] - idx[None, :]).abs().flatten()
        self.weight[:n] += torch.bincount(distance, weights=p.flatten(), minlength=n)
        self.pairs[:n] += torch.bincount(distance, minlength=n).double()

    def mean_weight(self) -> np.ndarray:
        """Mean attention weight one key at distance d receives from a query, d = 0, 1, ... frames."""
        if not self.pairs.numel():
            raise RuntimeError("no attention recorded: run the model inside attention_by_distance() first")
        return (self.weight / self.pairs.clamp(min=1)).numpy()


class DistanceProfileProcessor:
    """The stock self-attention, computed densely, that also adds its weights to a DistanceProfile."""

    def __init__(self, profile: DistanceProfile, skip: int = 1):
        self.profile, self.skip = profile, skip

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("the distance profile reads plain self-attention: profile a DiT called without an "
                             "attention_mask, with no other processor patch on its self-attention")
        query, key, value = self_attention_inputs(attn, hidden_states, rotary_emb)
        key, value = repeat_kv_heads(key, query.shape[1]), repeat_kv_heads(value, query.shape[1])
        scores = (query.float() @ key.float().transpose(-1, -2)) * query.shape[-1] ** -0.5
        probs = torch.softmax(scores, dim=-1)
        self.profile.add(probs, self.skip)
        out = (probs @ value.float()).to(query.dtype)
        return attention_output(attn, out, residual=hidden_states)


@contextmanager
def attention_by_distance(transformer) -> Iterator[DistanceProfile]:
    """Record the self-attention weights of every block of `transformer` (a StableAudioDiTModel) by
    frame distance while the block runs; the stock processors come back on exit."""
    profile = DistanceProfile()
    recorder = DistanceProfileProcessor(profile)
    with attention_patch(transformer, lambda name, old: recorder if is_self_attention(name) else old):
        yield profile


def bar_contrast(weight: np.ndarray, bar_frames: float, bars: int = 2, width: int = 1) -> float:
    """Mean weight within `width` frames of the first `bars` whole-bar distances over the mean weight
    within `width` frames of the half-bar distances next to them (j - 1/2 and j + 1/2 bars).

    Above 1: keys a whole number of bars away get more attention than keys half a bar off, the
    pattern radial attention's bands assume. Needs a profile reaching bars + 1/2 bars.
    """
    if not bar_frames > 2 * width + 1:
        raise ValueError(f"bar_frames={bar_frames}: a bar must span more than the {2 * width + 1} frames compared")
    far = int(round((bars + 0.5) * bar_frames)) + width
    if far >= len(weight):
        raise ValueError(f"the profile reaches {len(weight) - 1} frames, the contrast needs {far}: generate longer "
                         f"clips or use fewer bars (bars={bars})")

    def around(centre: float) -> float:
        c = int(round(centre))
        return float(np.mean(weight[c - width:c + width + 1]))

    on = np.mean([around(j * bar_frames) for j in range(1, bars + 1)])
    off = np.mean([around((j + s) * bar_frames) for j in range(1, bars + 1) for s in (-0.5, 0.5)])
    return float(on / off)
