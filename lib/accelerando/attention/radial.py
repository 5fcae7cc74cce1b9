"""Radial attention for audio: a local window plus bands one, two, ... bars away.

Music repeats at the bar: a frame is most like its neighbours and like the frames a whole number of
bars before and after it. Radial attention (Li et al. 2025) keeps a static mask whose density falls
with distance; here the fall follows the metre. A query at token position q may attend to a key at
position k when, with d = |q - k| in latent frames,

    d <= window                                   the local window, and
    |d - j * bar| <= half_width(j), j = 1..bars_back   a band around each of the nearest bar offsets,

and always when either is one of the first `sink_tokens` tokens (the Stable Audio DiT's global
token; attention sinks of a language model). `causal` drops keys after the query. A query sees at
most 2 * window + 1 + 2 * sum(2 * half_width(j) + 1) keys plus the sinks (half as many when causal)
whatever the length, so the cost grows linearly with the track instead of quadratically.

    config = RadialConfig(window_s=2.0, bars_back=4, bpm=120, beats_per_bar=4)
    out = radial_attention(q, k, v, config)               # q, k, v: [batch, heads, tokens, head_dim]
    mask = radial_mask(tokens, tokens, config)            # the same rule as a dense bool mask

Kernels, all equal to scaled_dot_product_attention under `radial_mask` (tests/test_radial_attention.py):
- "dense": that masked SDPA itself: the reference, quadratic in time and memory;
- "blocks": queries in blocks of `block_size`; each block gathers the keys its rows may need
  (the same offsets for every block, since the rule depends on distance only) and runs two small
  batched matmuls with the exact mask; memory is bounded by processing blocks in chunks;
- "flex": torch's FlexAttention with a block mask built from the same rule, compiled by
  torch.compile (Triton on a GPU, C++ on a CPU);
- "triton": the "blocks" plan in a hand-written Triton kernel with an online softmax
  (`radial_triton`), for GPUs; on a CPU only under Triton's interpreter, for tests.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

STABLE_AUDIO_FRAME_RATE = 44100 / 2048  # latent frames per second of Stable Audio Open (and -Lite)
KERNELS = ("dense", "blocks", "flex", "triton")
GATHER_BYTES = 64 * 2**20  # keys and values one chunk of query blocks gathers, at most


@dataclass(frozen=True)
class RadialConfig:
    """Which keys a query may attend to, in seconds and bars; `frame_rate` turns them into tokens.

    window_s       local window, seconds each side of the query
    bars_back      bar-spaced bands beyond the window (each side, or before only when `causal`)
    bpm, beats_per_bar
                   the metre that sets the bar length; `bar_frames` sets it directly instead
    band_width_s   half-width of the first band around its bar offset, seconds
    band_decay     each further band's half-width is this times the previous one (1: all equal;
                   0.5 halves it bar by bar, the energy decay of radial attention)
    sink_tokens    leading tokens that attend to and are attended by every token
    causal         keys after the query are never attended (autoregressive decoding)
    frame_rate     tokens per second of audio (Stable Audio latents: 21.5 Hz; MusicGen: 50 Hz)
    block_size     queries per block of the "blocks" and "flex" kernels
    """

    window_s: float = 2.0
    bars_back: int = 4
    bpm: float | None = 120.0
    beats_per_bar: int = 4
    bar_frames: float | None = None
    band_width_s: float = 0.25
    band_decay: float = 1.0
    sink_tokens: int = 1
    causal: bool = False
    frame_rate: float = STABLE_AUDIO_FRAME_RATE
    block_size: int = 64

    def __post_init__(self):
        if not (self.frame_rate > 0 and math.isfinite(self.frame_rate)):
            raise ValueError(f"frame_rate={self.frame_rate}: give the model's token rate in Hz "
                             f"(Stable Audio latents {STABLE_AUDIO_FRAME_RATE:.2f}, MusicGen 50)")
        if not self.window_s * self.frame_rate >= 1:
            raise ValueError(f"window_s={self.window_s}: the local window must cover at least one frame each side "
                             f"(window_s >= {1 / self.frame_rate:.3f} s at {self.frame_rate:.2f} frames/s)")
        if int(self.bars_back) != self.bars_back or self.bars_back < 0:
            raise ValueError(f"bars_back={self.bars_back}: the number of bar-spaced bands is a whole number >= 0")
        if self.bars_back and self.bar_frames is None:
            if self.bpm is None or not 20 <= self.bpm <= 400:
                raise ValueError(f"bpm={self.bpm}: bands need a tempo between 20 and 400 BPM; give bpm, "
                                 "bar_frames, or bars_back=0")
            if int(self.beats_per_bar) != self.beats_per_bar or self.beats_per_bar < 1:
                raise ValueError(f"beats_per_bar={self.beats_per_bar}: a whole number >= 1 "
                                 "(musical_controls.beats_per_bar turns '6/8' into 2)")
        if self.bar_frames is not None and not self.bar_frames >= 1:
            raise ValueError(f"bar_frames={self.bar_frames}: a bar must span at least one token")
        if not self.band_width_s >= 0:
            raise ValueError(f"band_width_s={self.band_width_s}: a band's half-width is >= 0 seconds")
        if not 0 < self.band_decay <= 1:
            raise ValueError(f"band_decay={self.band_decay}: use a factor in (0, 1]; bands narrow, "
                             "never widen, with distance")
        if int(self.sink_tokens) != self.sink_tokens or self.sink_tokens < 0:
            raise ValueError(f"sink_tokens={self.sink_tokens}: a whole number >= 0 (the Stable Audio DiT has "
                             "one global token: keep 1 for it)")
        if int(self.block_size) != self.block_size or self.block_size < 1:
            raise ValueError(f"block_size={self.block_size}: a whole number of queries >= 1")

    @classmethod
    def from_caption(cls, caption: str, **overrides) -> RadialConfig:
        """The tempo ("at 92 BPM"; a ramp's starting tempo) and metre ("3/4"; 4/4 if none) a caption
        states, read as `MusicalControls.from_caption` reads them; without a tempo the default bpm."""
        from ..musical_controls import MusicalControls

        controls = MusicalControls.from_caption(caption, seconds=60.0)  # a minute holds several bars
        found: dict = {}
        if controls.beats is not None:
            beat = controls.beats[1] - controls.beats[0]
            found["bpm"] = 60.0 / beat
            if controls.downbeats is not None and len(controls.downbeats) > 1:
                found["beats_per_bar"] = int(round((controls.downbeats[1] - controls.downbeats[0]) / beat))
        return cls(**{**found, **overrides})

    @classmethod
    def from_audio(cls, wav: torch.Tensor, sr: int, beats_per_bar: int = 4, **overrides) -> RadialConfig:
        """The tempo a beat tracker finds in `wav` ([samples] or [channels, samples] at `sr` Hz), e.g.
        the prompt of a continuation; refuses audio without a steady beat."""
        from ..metrics.rhythm import track_beats

        bpm, _ = track_beats(wav, sr, name="radial attention prompt")
        if bpm is None:
            raise ValueError("no steady beat found in the audio (fewer than 3 beats): give bpm= or bar_frames= "
                             "instead, or bars_back=0 for the local window alone")
        return cls(bpm=bpm, beats_per_bar=beats_per_bar, **overrides)

    @property
    def window(self) -> int:
        """The local window in tokens each side."""
        return int(round(self.window_s * self.frame_rate))

    @property
    def bar(self) -> float:
        """The bar length in tokens (fractional: a band's centre is rounded, not the bar)."""
        if self.bar_frames is not None:
            return float(self.bar_frames)
        return 60.0 / self.bpm * self.beats_per_bar * self.frame_rate

    @property
    def bands(self) -> list[tuple[int, int]]:
        """(centre offset, half-width) in tokens of each bar-spaced band, nearest first."""
        half = self.band_width_s * self.frame_rate
        return [(int(round(j * self.bar)), int(round(half * self.band_decay ** (j - 1))))
                for j in range(1, int(self.bars_back) + 1)]

    @property
    def reach(self) -> int:
        """The farthest distance in tokens a non-sink query attends to."""
        return max([self.window] + [c + h for c, h in self.bands])

    def offsets(self) -> torch.Tensor:
        """Every allowed signed distance q - k (ascending, int64) between non-sink tokens."""
        reach = self.reach
        d = torch.arange(-reach, reach + 1)
        return d[allowed_distance(self, d)]

    def keys_per_query(self) -> int:
        """Keys a non-sink query far from the track's ends attends to, sinks included."""
        return int(self.offsets().numel()) + self.sink_tokens


def allowed_distance(config: RadialConfig, d: torch.Tensor) -> torch.Tensor:
    """The rule on signed distances d = q - k between non-sink tokens (a bool tensor like d)."""
    dist = d.abs()
    ok = dist <= config.window
    for centre, half in config.bands:
        ok = ok | ((dist - centre).abs() <= half)
    if config.causal:
        ok = ok & (d >= 0)
    return ok


def allowed(config: RadialConfig, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
    """Whether a query at token position `query_pos` may attend to a key at `key_pos` (broadcasting)."""
    sinks = config.sink_tokens
    ok = allowed_distance(config, query_pos - key_pos) | (key_pos < sinks) | (query_pos < sinks)
    if config.causal:
        ok = ok & (key_pos <= query_pos)
    return ok


def radial_mask(n_queries: int, n_keys: int, config: RadialConfig, query_start: int = 0,
                device: torch.device | str | None = None) -> torch.Tensor:
    """The rule as a dense bool mask [n_queries, n_keys] (True: attend); queries sit at token
    positions query_start .. query_start + n_queries - 1, keys at 0 .. n_keys - 1."""
    q = torch.arange(query_start, query_start + n_queries, device=device)
    k = torch.arange(n_keys, device=device)
    return allowed(config, q[:, None], k[None, :])


def radial_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    config: RadialConfig,
    *,
    kernel: str = "blocks",
    query_start: int = 0,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of `query` [B, heads, Nq, head_dim] to `key`, `value` [B, kv_heads, Nk, head_dim]
    under the radial rule; returns [B, heads, Nq, head_dim].

    kv_heads must divide heads (grouped-query attention). `query_start` is the token position of
    the first query (a cached decoding step: the last position; keys always start at 0).
    `key_padding_mask` [B, Nk] bool marks the keys that exist (False: padding). A query that may
    attend to no key gets zeros.
    """
    _check_inputs(query, key, value, query_start, key_padding_mask)
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: choose one of {KERNELS}")
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if key.shape[1] != query.shape[1]:
        key, value = repeat_kv_heads(key, query.shape[1]), repeat_kv_heads(value, query.shape[1])
    if kernel == "dense":
        return _dense(query, key, value, config, query_start, key_padding_mask, scale)
    if kernel == "flex":
        return _flex(query, key, value, config, query_start, key_padding_mask, scale)
    return _blocks(query, key, value, config, query_start, key_padding_mask, scale, use_triton=kernel == "triton")


def repeat_kv_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, kv_heads, N, D] -> [B, heads, N, D], each key/value head shared by heads // kv_heads query heads."""
    rep = heads // x.shape[1]
    return x if rep == 1 else torch.repeat_interleave(x, rep, dim=1, output_size=heads)


def _check_inputs(query, key, value, query_start, key_padding_mask) -> None:
    if query.dim() != 4 or key.dim() != 4 or value.shape != key.shape:
        raise ValueError(f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}: "
                         "pass [batch, heads, tokens, head_dim] tensors, key and value of one shape")
    if query.shape[0] != key.shape[0] or query.shape[-1] != key.shape[-1] or query.shape[1] % key.shape[1]:
        raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)}: batch and head_dim must match "
                         "and the key heads divide the query heads")
    if query_start < 0 or query_start + query.shape[2] > key.shape[2]:
        raise ValueError(f"queries at positions {query_start}..{query_start + query.shape[2] - 1} but only "
                         f"{key.shape[2]} keys: a query needs its own key (append it to the cache first)")
    if key_padding_mask is not None and (key_padding_mask.dtype != torch.bool
                                         or tuple(key_padding_mask.shape) != (key.shape[0], key.shape[2])):
        raise ValueError(f"key_padding_mask {tuple(key_padding_mask.shape)} {key_padding_mask.dtype}: "
                         f"pass a bool [batch, keys] = {(key.shape[0], key.shape[2])} mask, True where a key exists")


def _dense(query, key, value, config, query_start, key_padding_mask, scale) -> torch.Tensor:
    mask = radial_mask(query.shape[2], key.shape[2], config, query_start, query.device)[None, None]
    if key_padding_mask is not None:
        mask = mask & key_padding_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
    return torch.where(mask.any(-1, keepdim=True), out, torch.zeros((), dtype=out.dtype, device=out.device))


# ---------------------------------------------------------------------------------------------
# Query blocks: each block gathers the keys its rows may need and applies the exact mask


class _Plans:
    """A small least-recently-used store of plans and block masks: a denoising loop asks for the
    same shapes at every step and every layer."""

    def __init__(self, size: int = 16):
        self.size, self._store = size, OrderedDict()

    def get(self, key, build):
        if key in self._store:
            self._store.move_to_end(key)
            return self._store[key]
        value = self._store[key] = build()
        if len(self._store) > self.size:
            self._store.popitem(last=False)
        return value


_PLANS = _Plans()


def block_plan(config: RadialConfig, n_queries: int, n_keys: int, query_start: int = 0,
               device: torch.device | str | None = None) -> dict:
    """Which keys each block of non-sink queries gathers, and which of them each row may use.

    Returns {"dense_rows": queries at sink positions (attended densely), "block": rows per block,
    "blocks": number of blocks, "index": [blocks, width] key positions to gather (clamped into
    range), "mask": [blocks, block, width] bool, True where the row may attend to that key}.
    The key offsets from a block's first query are the same for every block, so the width is fixed.
    """
    device = torch.device(device or "cpu")
    key = (config, n_queries, n_keys, query_start, str(device))
    return _PLANS.get(key, lambda: _build_block_plan(config, n_queries, n_keys, query_start, device))


def _build_block_plan(config, n_queries, n_keys, query_start, device) -> dict:
    sinks = config.sink_tokens
    dense_rows = max(0, min(n_queries, sinks - query_start))
    rows = n_queries - dense_rows
    block = max(1, min(config.block_size, rows))
    blocks = -(-rows // block)
    d = config.offsets()  # allowed q - k
    r = torch.arange(block)
    rel = torch.unique((r[:, None] - d[None, :]).flatten())  # key offsets from the block's first query
    first = query_start + dense_rows + torch.arange(blocks) * block  # [blocks]
    index = first[:, None] + rel[None, :]  # [blocks, width]
    exists = (index >= sinks) & (index < n_keys)
    ok = allowed_distance(config, r[:, None] - rel[None, :])  # [block, width]
    row_exists = (first[:, None] + r[None, :]) < query_start + n_queries  # [blocks, block]
    mask = ok[None] & exists[:, None, :] & row_exists[:, :, None]
    if sinks:
        sink_index = torch.arange(min(sinks, n_keys))
        index = torch.cat([sink_index.expand(blocks, -1), index], dim=1)
        mask = torch.cat([row_exists[:, :, None].expand(-1, -1, sink_index.numel()), mask], dim=2)
    return {"dense_rows": dense_rows, "block": block, "blocks": blocks,
            "index": index.clamp(0, n_keys - 1).to(device), "mask": mask.to(device)}


def _blocks(query, key, value, config, query_start, key_padding_mask, scale, use_triton=False) -> torch.Tensor:
    batch, heads, n_queries, dim = query.shape
    plan = block_plan(config, n_queries, key.shape[2], query_start, query.device)
    head_rows = plan["dense_rows"]
    outputs = []
    if head_rows:  # sink queries see every key (up to their own position when causal)
        outputs.append(_dense(query[:, :, :head_rows], key, value, config, query_start, key_padding_mask, scale))
    if n_queries > head_rows and use_triton:
        from .radial_triton import triton_block_attention

        outputs.append(triton_block_attention(query, key, value, plan, _bias(plan, torch.float32), key_padding_mask,
                                              scale))
    elif n_queries > head_rows:
        block, blocks, index = plan["block"], plan["blocks"], plan["index"]
        width = index.shape[1]
        bias = _bias(plan, query.dtype)  # [blocks, block, width]: 0 where allowed, -inf elsewhere
        q = query[:, :, head_rows:] * scale  # scaling the queries is cheaper than scaling the scores
        pad = blocks * block - q.shape[2]
        if pad:
            q = F.pad(q, (0, 0, 0, pad))
        q = q.reshape(batch, heads, blocks, block, dim)
        per_block = 3 * batch * heads * width * dim * key.element_size() + 2 * batch * heads * block * width * 4
        chunk = max(1, GATHER_BYTES // per_block)
        parts = []
        for start in range(0, blocks, chunk):
            idx = index[start:start + chunk]
            n = idx.shape[0]
            k = key.index_select(2, idx.flatten()).view(batch, heads, n, width, dim)
            v = value.index_select(2, idx.flatten()).view(batch, heads, n, width, dim)
            scores = torch.matmul(q[:, :, start:start + chunk], k.transpose(-1, -2))  # [B, H, n, block, width]
            scores += bias[start:start + chunk]
            if key_padding_mask is not None:
                exists = key_padding_mask[:, idx.flatten()].view(batch, 1, n, 1, width)
                scores = scores.masked_fill(~exists, float("-inf"))
            # softmax accumulates in fp32 for 16-bit inputs and returns their dtype
            weights = torch.softmax(scores, dim=-1)
            if key_padding_mask is not None:
                weights = weights.nan_to_num(0.0)  # a row whose every key is padding: zeros
            parts.append(torch.matmul(weights, v))
        out = torch.cat(parts, dim=2).reshape(batch, heads, blocks * block, dim)
        outputs.append(out[:, :, : n_queries - head_rows])
    return torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]


def _bias(plan: dict, dtype: torch.dtype) -> torch.Tensor:
    """The plan's mask as an additive bias in `dtype`, made once per dtype. Padding rows past the
    last query get no -inf at all (their output is dropped), so no row is empty."""
    key = ("bias", dtype)
    if key not in plan:
        mask = plan["mask"] | ~plan["mask"].any(-1, keepdim=True)
        zero = torch.zeros((), dtype=dtype, device=mask.device)
        plan[key] = torch.where(mask, zero, torch.tensor(float("-inf"), dtype=dtype, device=mask.device))
    return plan[key]


# ---------------------------------------------------------------------------------------------
# FlexAttention


_FLEX: dict = {}


def flex_block_mask(config: RadialConfig, n_queries: int, n_keys: int, query_start: int = 0,
                    device: torch.device | str | None = None):
    """torch's BlockMask for the rule, built from the allowed offsets block by block (never from a
    dense [n_queries, n_keys] grid, which at 10 minutes would take gigabytes); every listed block
    is a partial one, so the mask_mod decides inside it. Key padding is not in it (a score_mod)."""
    device = torch.device(device or "cpu")
    size = max(config.block_size, 128) if device.type == "cuda" else config.block_size
    key = ("flex", config, n_queries, n_keys, query_start, str(device), size)
    return _PLANS.get(key, lambda: _build_flex_mask(config, n_queries, n_keys, query_start, device, size))


def _build_flex_mask(config, n_queries, n_keys, query_start, device, size):
    from torch.nn.attention.flex_attention import BlockMask

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(config, q_idx + query_start, kv_idx)

    d = config.offsets()
    r = torch.arange(size)
    q_blocks, kv_blocks = -(-n_queries // size), -(-n_keys // size)
    sink_blocks = torch.arange(-(-config.sink_tokens // size)) if config.sink_tokens else torch.empty(0, dtype=torch.long)
    rows = []
    for i in range(q_blocks):
        pos = query_start + i * size + r  # query positions of this block (the last may run past the end)
        if int(pos[0]) < config.sink_tokens:  # a sink query reads every key (up to itself when causal)
            last = (query_start + min((i + 1) * size, n_queries) - 1) // size if config.causal else kv_blocks - 1
            blocks = torch.arange(min(last, kv_blocks - 1) + 1)
        else:
            blocks = torch.unique(torch.cat([torch.div(pos[:, None] - d[None, :], size, rounding_mode="floor").flatten(),
                                             sink_blocks]))
            blocks = blocks[(blocks >= 0) & (blocks < kv_blocks)]
        rows.append(blocks)
    width = max(len(b) for b in rows)
    indices = torch.zeros(1, 1, q_blocks, width, dtype=torch.int32)
    counts = torch.zeros(1, 1, q_blocks, dtype=torch.int32)
    for i, blocks in enumerate(rows):
        indices[0, 0, i, :len(blocks)] = blocks.to(torch.int32)
        counts[0, 0, i] = len(blocks)
    return BlockMask.from_kv_blocks(counts.to(device), indices.to(device), BLOCK_SIZE=size, mask_mod=mask_mod,
                                    seq_lengths=(n_queries, n_keys))


def _flex(query, key, value, config, query_start, key_padding_mask, scale) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    block_mask = flex_block_mask(config, query.shape[2], key.shape[2], query_start, query.device)
    score_mod = None
    if key_padding_mask is not None:
        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.where(key_padding_mask[b, kv_idx], score, float("-inf"))
    out = _FLEX["fn"](query, key, value, score_mod=score_mod, block_mask=block_mask, scale=scale)
    return out.nan_to_num(0.0)  # a row whose every key is padding: zeros, as the other kernels
