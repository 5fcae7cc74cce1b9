"""Sparse re-decoding of the Oobleck decoder: recompute only the samples a latent edit changes.

The Oobleck decoder (Stable Audio's VAE) is convolutions and pointwise Snake activations, no
attention and no norms, so a change to latent frames [a, b) changes the waveform only on an
interval that the convolutions' kernels, strides, paddings and dilations fix. This module derives
that interval from the modules themselves (`Conv1d` / `ConvTranspose1d` index algebra), in both
directions:

    changed_range(chain, a, b)   which outputs an input change reaches (forward)
    needed_range(chain, a, b)    which inputs the outputs [a, b) read (backward)

and uses it two ways:

    decode_window(vae, z, start, end)   decode only the latent window that outputs [start, end)
                                         samples need (no cache: the halo is recomputed by every
                                         layer); exact, since zero padding at the track's ends
                                         is reproduced by clipping to the track
    CachedDecoder(vae)                   SIGE-style: `decode(z)` keeps the residual stream between
                                         the decoder's blocks; `update(z_new)` finds the changed
                                         frames (the difference mask), and per block runs the
                                         block on just the active window of its cached input and
                                         scatters the result into its cached output. Each block
                                         recomputes only its own halo, not the whole decoder's.

Both equal a full `vae.decode` to float rounding (tests check random regions, the track's ends
included). Units: latent frames for `z` [batch, channels, frames], samples for audio
[batch, audio_channels, samples]. The cache holds the block boundaries only (about 2 GB fp32 for
47 s of the full-size decoder, against ~14 GB for every activation).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..models.latent_grouping import latent_channels, latent_frame_group, ungroup_frames

Range = tuple[int, int]


# ---------------------------------------------------------------------------------------------
# Index algebra of one convolution (dilation, stride, padding, kernel from the module)
# ---------------------------------------------------------------------------------------------


def _geometry(conv: nn.Module) -> tuple[int, int, int, int, bool]:
    if not isinstance(conv, (nn.Conv1d, nn.ConvTranspose1d)):
        raise TypeError(f"{type(conv).__name__} is not a Conv1d or ConvTranspose1d")
    if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
        raise ValueError(f"{conv}: only numeric zero padding has a fixed index algebra")
    transposed = isinstance(conv, nn.ConvTranspose1d)
    if transposed and (conv.dilation[0] != 1 or conv.output_padding[0] != 0):
        raise ValueError(f"{conv}: transposed convolutions with dilation or output_padding are not supported")
    return conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0], transposed


def _out_length(conv: nn.Module, length: int) -> int:
    k, s, p, d, transposed = _geometry(conv)
    if transposed:
        return (length - 1) * s - 2 * p + k
    return (length + 2 * p - d * (k - 1) - 1) // s + 1


def _forward_range(conv: nn.Module, rng: Range, length: int) -> Range:
    """Outputs of `conv` (input length `length`) that read any input in [a, b)."""
    k, s, p, d, transposed = _geometry(conv)
    a, b = rng
    if transposed:  # y[t] = sum_i x[i] w[t + p - i s], 0 <= t + p - i s < k
        lo, hi = a * s - p, (b - 1) * s - p + k
    else:  # y[t] = sum_j x[t s - p + j d], 0 <= j < k
        lo, hi = -((-(a + p - (k - 1) * d)) // s), (b - 1 + p) // s + 1
    return max(lo, 0), min(hi, _out_length(conv, length))


def _backward_range(conv: nn.Module, rng: Range, length: int) -> Range:
    """Inputs of `conv` (input length `length`) that outputs [a, b) read, clipped to the input."""
    k, s, p, d, transposed = _geometry(conv)
    a, b = rng
    if transposed:
        lo, hi = -((k - 1 - a - p) // s), (b - 1 + p) // s + 1
    else:
        lo, hi = a * s - p, (b - 1) * s - p + (k - 1) * d + 1
    return max(lo, 0), min(hi, length)


def _offset_scale(conv: nn.Module) -> int:
    """Run on an input slice starting at i0, `conv`'s output index t' is the full index t' + i0 x scale
    (true for stride-1 convolutions and for transposed ones, the decoder's two kinds)."""
    k, s, p, d, transposed = _geometry(conv)
    if not transposed and s != 1:
        raise ValueError(f"{conv}: strided convolutions do not map slices to slices (the decoder has none)")
    return s if transposed else 1


@dataclass
class Segment:
    """A run of the decoder computed as one unit: `fn` maps its input map to its output map, and
    `convs` lists its convolutions in order (pointwise ops and identity residuals add no reach)."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    convs: list[nn.Module]

    def lengths(self, length: int) -> list[int]:
        out = [length]
        for conv in self.convs:
            out.append(_out_length(conv, out[-1]))
        return out

    def changed(self, rng: Range, length: int) -> Range:
        for conv, n in zip(self.convs, self.lengths(length)):
            rng = _forward_range(conv, rng, n)
        return rng

    def needed(self, rng: Range, length: int) -> Range:
        for conv, n in zip(reversed(self.convs), reversed(self.lengths(length)[:-1])):
            rng = _backward_range(conv, rng, n)
        return rng

    def scale(self) -> int:
        return math.prod(_offset_scale(c) for c in self.convs)

    def compute(self, x: torch.Tensor, out_rng: Range) -> torch.Tensor:
        """The segment's output on [a, b) from its full input map x, computing only what it reads."""
        i0, i1 = self.needed(out_rng, x.shape[-1])
        y = self.fn(x[..., i0:i1])
        off = i0 * self.scale()
        return y[..., out_rng[0] - off: out_rng[1] - off]


def decoder_segments(vae) -> list[Segment]:
    """The Oobleck decoder as segments: input conv, one per upsampling block, output conv; for
    grouped latents (`latent_grouping`) an "ungroup" segment first, whose index algebra is that of
    a transposed conv with kernel = stride = the group (a weightless meta-device module carries
    the geometry)."""
    dec = vae.decoder
    segments = [Segment("conv1", dec.conv1, [dec.conv1])]
    group = latent_frame_group(vae)
    if group > 1:
        geometry = nn.ConvTranspose1d(1, 1, group, stride=group, device="meta")
        segments.insert(0, Segment("ungroup", lambda z: ungroup_frames(z, group), [geometry]))
    for i, block in enumerate(dec.block):
        convs = [block.conv_t1]
        for unit in (block.res_unit1, block.res_unit2, block.res_unit3):
            convs += [unit.conv1, unit.conv2]
        segments.append(Segment(f"block{i}", block, convs))
    segments.append(Segment("conv2", lambda h: dec.conv2(dec.snake1(h)), [dec.conv2]))
    return segments


def whole_decoder(vae) -> Segment:
    """The decoder as one segment: latents in, audio out."""
    segments = decoder_segments(vae)

    def run(z: torch.Tensor) -> torch.Tensor:
        for seg in segments:
            z = seg.fn(z)
        return z

    return Segment("decoder", run, [c for s in segments for c in s.convs])


def receptive_field(vae) -> dict:
    """The decoder's reach from the index algebra: how many latent frames one changed frame's
    output spreads past its own hop on each side, and how many frames an output sample reads."""
    whole = whole_decoder(vae)
    frames, hop = 4096, vae.hop_length
    mid = frames // 2
    lo, hi = whole.changed((mid, mid + 1), frames)
    need_lo, need_hi = whole.needed((mid * hop, (mid + 1) * hop), frames)
    return {"spread_samples_left": mid * hop - lo, "spread_samples_right": hi - (mid + 1) * hop,
            "spread_frames": max(mid * hop - lo, hi - (mid + 1) * hop) / hop,
            "reads_frames_left": mid - need_lo, "reads_frames_right": need_hi - mid - 1, "hop": hop}


@torch.no_grad()
def measured_reach(vae, frames: int = 64, frame: int | None = None, seed: int = 0) -> dict:
    """The reach measured, not derived: perturb latent frame `frame` of random latents and see
    which samples of the decode change. Returns the per-sample |difference| [samples] of the
    first audio channel, the changed span in samples relative to the frame's own hop, and the
    track's peak (to judge the size of the tail)."""
    frame = frames // 2 if frame is None else frame
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(1, latent_channels(vae), frames, generator=gen)
    z2 = z.clone()
    z2[..., frame] += torch.randn(z2[..., frame].shape, generator=gen)
    base, moved = vae.decode(z).sample, vae.decode(z2).sample
    diff = (moved - base)[0].abs().amax(0)
    changed = diff.nonzero().flatten()
    hop = vae.hop_length
    return {"diff": diff.numpy(), "hop": hop, "frame": frame, "peak": float(base.abs().max()),
            "left_samples": frame * hop - int(changed.min()), "right_samples": int(changed.max()) + 1 - (frame + 1) * hop}


# ---------------------------------------------------------------------------------------------
# Decoding a window, and the cached (SIGE-style) decoder
# ---------------------------------------------------------------------------------------------


def check_latents(vae, z: torch.Tensor) -> None:
    if z.ndim != 3 or z.shape[1] != latent_channels(vae):
        raise ValueError(f"latents of shape {tuple(z.shape)}: expected [batch, "
                         f"{latent_channels(vae)} channels, frames]")
    if not torch.isfinite(z).all():
        raise ValueError("latents contain NaN or inf: decode finite latents (check the sampler's output)")


@torch.no_grad()
def decode_window(vae, z: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Samples [start, end) of `vae.decode(z)` computed from the latent window they need only.

    z [batch, channels, frames]; start/end in samples. Returns [batch, audio_channels, end - start].
    """
    check_latents(vae, z)
    whole = whole_decoder(vae)
    total = whole.lengths(z.shape[-1])[-1]
    if not 0 <= start < end <= total:
        raise ValueError(f"samples [{start}, {end}) are not inside the decoded track [0, {total})")
    return whole.compute(z, (start, end))


class CachedDecoder:
    """Oobleck decoding that keeps block-boundary maps so a latent edit re-decodes only its reach.

        dec = CachedDecoder(pipe.vae)
        audio = dec.decode(z)                 # full decode, fills the cache
        audio = dec.update(z_edited)          # same result as dec.decode(z_edited), sparse
        audio = dec.undo()                    # the audio before the update, bit for bit

    `update` compares z_edited with the cached latents (the difference mask) and propagates the
    changed frame ranges block by block. `last_update` reports the ranges and the fraction of
    each block's output that was recomputed. Each update keeps the tiles it overwrote (SIGE's
    scatter-back), so `undo` restores the maps exactly rather than re-decoding them, which would
    differ from the maps' earlier values by float rounding.
    """

    def __init__(self, vae):
        self.vae = vae
        self.segments = decoder_segments(vae)
        self.maps: list[torch.Tensor] | None = None  # [z, (ungrouped z,) after conv1, after each block, audio]
        self.last_update: dict = {}  # changed ranges, recomputed fraction and seconds per segment
        self.last_decode: dict = {}  # seconds per segment of the last full decode
        self._undo: list[list[tuple[int, Range, torch.Tensor]]] = []  # per update: (map, range, old tile)

    @property
    def latents(self) -> torch.Tensor:
        if self.maps is None:
            raise RuntimeError("nothing decoded yet: call decode(z) before update(z)")
        return self.maps[0]

    def cache_bytes(self) -> int:
        """Bytes of the block-boundary maps plus the tiles kept for undo."""
        maps = sum(m.numel() * m.element_size() for m in self.maps or [])
        return maps + sum(t.numel() * t.element_size() for step in self._undo for _, _, t in step)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Full decode of z [batch, channels, frames] -> audio [batch, audio_channels, samples]."""
        check_latents(self.vae, z)
        maps, seconds = [z.clone()], {}
        for seg in self.segments:
            start = time.perf_counter()
            maps.append(seg.fn(maps[-1]))
            seconds[seg.name] = time.perf_counter() - start
        self.maps = maps
        self._undo = []
        self.last_decode = {"seconds": seconds}
        return maps[-1].clone()

    @staticmethod
    def changed_frames(old: torch.Tensor, new: torch.Tensor) -> list[Range]:
        """Maximal runs of latent frames where `new` differs from `old` in any batch row or channel."""
        diff = (old != new).flatten(0, 1).any(0).tolist()
        runs, start = [], None
        for i, d in enumerate(diff + [False]):
            if d and start is None:
                start = i
            elif not d and start is not None:
                runs.append((start, i))
                start = None
        return runs

    @torch.no_grad()
    def update(self, z: torch.Tensor, keep_undo: bool = True) -> torch.Tensor:
        """Audio of the edited latents z (same shape as the cached ones), recomputing only the
        samples the changed frames reach. Equals `decode(z)` to float rounding. keep_undo: keep
        the overwritten tiles for `undo` (memory: the recomputed fraction of the maps)."""
        check_latents(self.vae, z)
        if z.shape != self.latents.shape or z.dtype != self.latents.dtype:
            raise ValueError(f"latents {tuple(z.shape)} {z.dtype} do not match the cached decode "
                             f"{tuple(self.latents.shape)} {self.latents.dtype}: call decode(z) for a new track")
        ranges = self.changed_frames(self.maps[0], z)
        kept = [(0, (a, b), self.maps[0][..., a:b].clone()) for a, b in ranges] if keep_undo else []
        self.maps[0] = z.clone()
        report = {"frames": ranges, "fraction": {}, "seconds": {}}
        for i, (seg, (x, y)) in enumerate(zip(self.segments, zip(self.maps[:-1], self.maps[1:])), start=1):
            start = time.perf_counter()
            n = x.shape[-1]
            ranges = _merge([seg.changed(r, n) for r in ranges])
            for r in ranges:
                if keep_undo:
                    kept.append((i, r, y[..., r[0]:r[1]].clone()))
                y[..., r[0]:r[1]] = seg.compute(x, r)
            report["fraction"][seg.name] = sum(b - a for a, b in ranges) / y.shape[-1]
            report["seconds"][seg.name] = time.perf_counter() - start
        report["samples"] = ranges
        self.last_update = report
        if keep_undo:
            self._undo.append(kept)
        return self.maps[-1].clone()

    def undo(self) -> torch.Tensor:
        """Restore the maps (and audio) from before the last `update(keep_undo=True)`, exactly."""
        if not self._undo:
            raise RuntimeError("nothing to undo: no update kept its overwritten tiles since the last decode")
        for i, (a, b), tile in reversed(self._undo.pop()):
            self.maps[i][..., a:b] = tile
        return self.maps[-1].clone()


def _merge(ranges: list[Range]) -> list[Range]:
    out: list[list[int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]
