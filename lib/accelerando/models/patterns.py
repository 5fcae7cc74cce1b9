"""Codebook patterns: how K parallel codebook streams become one token sequence for a language model.

RVQ codes are a matrix [K codebooks, T frames]; a decoder-only LM predicts one sequence. Two
patterns (Copet et al. 2023, MusicGen, section 2.2):

    flatten  [c1,t  c2,t  ... cK,t  c1,t+1 ...]: every token sees all earlier codebooks of its
             frame; exact autoregressive factorisation, K x T steps (the research plan's interleaved pattern)
    delay    codebook k shifted right by k frames, one step emits one token per codebook
             [B, K, T + K - 1]: T + K - 1 steps, codebook k sees codebooks < k of its frame
             only through the delay (MusicGen's default)

Each pattern has its exact inverse (tests check round trips); positions a pattern leaves empty
hold `pad`. Shapes: codes [batch, K, T] int64.
"""

from __future__ import annotations

import torch

PATTERNS = ("flatten", "delay")


def _check(codes: torch.Tensor) -> None:
    if codes.ndim != 3:
        raise ValueError(f"codes of shape {tuple(codes.shape)}: expected [batch, codebooks, frames]")


def flatten_pattern(codes: torch.Tensor) -> torch.Tensor:
    """[B, K, T] -> [B, T x K], frame-major: c1,t ... cK,t then frame t + 1."""
    _check(codes)
    return codes.transpose(1, 2).reshape(codes.shape[0], -1)


def unflatten_pattern(seq: torch.Tensor, codebooks: int) -> torch.Tensor:
    """[B, T x K] -> [B, K, T]; the inverse of `flatten_pattern`."""
    if seq.ndim != 2 or seq.shape[1] % codebooks:
        raise ValueError(f"sequence of shape {tuple(seq.shape)} is not [batch, frames x {codebooks}]")
    return seq.reshape(seq.shape[0], -1, codebooks).transpose(1, 2)


def delay_pattern(codes: torch.Tensor, pad: int) -> torch.Tensor:
    """[B, K, T] -> [B, K, T + K - 1]: codebook k starts k steps late; the gaps hold `pad`."""
    _check(codes)
    b, k, t = codes.shape
    out = codes.new_full((b, k, t + k - 1), pad)
    for i in range(k):
        out[:, i, i:i + t] = codes[:, i]
    return out


def undelay_pattern(seq: torch.Tensor) -> torch.Tensor:
    """[B, K, S] -> [B, K, S - K + 1]; the inverse of `delay_pattern`."""
    _check(seq)
    b, k, s = seq.shape
    t = s - k + 1
    if t < 1:
        raise ValueError(f"a delayed sequence of {s} steps holds no frame of {k} codebooks")
    return torch.stack([seq[:, i, i:i + t] for i in range(k)], dim=1)


def sequence_steps(pattern: str, frames: int, codebooks: int) -> int:
    """Decoding steps a pattern needs for `frames` frames of `codebooks` codebooks."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern {pattern!r}: use one of {PATTERNS}")
    return frames * codebooks if pattern == "flatten" else frames + codebooks - 1
