"""Editing autoregressive token models: a tree of continuations that share their prefixes' KV cache.

An edit at frame t of a token model's output keeps every token before t, so it keeps their keys
and values too: only frames t.. are decoded again. Alternative continuations (several edits of
one track, or several takes from one point) share the cache of their common prefix. Each branch
stores the self-attention keys/values of its own frames only; the text's cross-attention cache is
stored once for the whole tree.

    tree = PrefixTree(model, text_ids)                 # transformers MusicgenForConditionalGeneration
    take = tree.generate(frames=500, seed=0)           # root branch
    edit = tree.branch(take, at=300, seed=1)           # keeps frames 0..299 of `take`, redecodes 300..499
    tree.tokens(edit)                                  # [batch x codebooks, 500]
    tree.nbytes(), tree.unshared_nbytes()              # stored vs one full cache per branch

Frames are decoder steps: one token per codebook per step, [batch x codebooks] rows (MusicGen's
layout). Sampling: temperature / top-k on each row. Decoding reuses transformers' own cache
classes, so the logits of a branch are those of decoding its whole sequence in one go (tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache


@dataclass(eq=False)  # branches are compared by identity
class Branch:
    """Frames [start, start + n) of one continuation; everything before `start` is its parent's."""

    parent: Branch | None
    start: int
    tokens: torch.Tensor  # [rows, n] token ids this branch decoded itself
    keys: list[torch.Tensor] = field(repr=False)  # per layer [rows, heads, n, head_dim]
    values: list[torch.Tensor] = field(repr=False)

    @property
    def end(self) -> int:
        return self.start + self.tokens.shape[1]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


class PrefixTree:
    """Continuations of one text-conditioned MusicGen generation, sharing prefix caches."""

    def __init__(self, model, text_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """model: transformers `MusicgenForConditionalGeneration`; text_ids [batch, tokens] of its
        text encoder's vocabulary (the conditioning every branch shares)."""
        if text_ids.ndim != 2 or text_ids.shape[1] == 0:
            raise ValueError(f"text_ids of shape {tuple(text_ids.shape)}: expected [batch, tokens] with tokens >= 1")
        self.model = model.eval()
        self.codebooks = model.decoder.config.num_codebooks
        self.rows = text_ids.shape[0] * self.codebooks
        self.start_token = model.generation_config.decoder_start_token_id
        self.max_frames = model.decoder.config.max_position_embeddings
        self.attention_mask = attention_mask
        with torch.no_grad():
            self.encoder_outputs = model.text_encoder(input_ids=text_ids, attention_mask=attention_mask)
        self.cross: DynamicCache | None = None
        self.branches: list[Branch] = []

    # -- decoding -----------------------------------------------------------------------------

    def _forward(self, ids: torch.Tensor, cache: EncoderDecoderCache) -> torch.Tensor:
        out = self.model(encoder_outputs=self.encoder_outputs, attention_mask=self.attention_mask,
                         decoder_input_ids=ids, past_key_values=cache, use_cache=True)
        return out.logits[:, -1]  # [rows, vocab]

    @staticmethod
    def _path(branch: Branch | None, upto: int) -> list[tuple[Branch, int, int]]:
        """(segment, lo, hi) in path order: the frames/positions [lo, hi) < upto each segment owns
        on `branch`'s path (a parent owns its frames up to where its child on the path starts)."""
        nodes = []
        while branch is not None:
            nodes.append(branch)
            branch = branch.parent
        nodes.reverse()
        out = []
        for i, node in enumerate(nodes):
            hi = min(nodes[i + 1].start if i + 1 < len(nodes) else node.end, upto)
            if hi > node.start:
                out.append((node, node.start, hi))
        return out

    def _cache_for(self, branch: Branch | None, upto: int) -> EncoderDecoderCache:
        """A transformers cache of positions [0, upto) of `branch`'s path plus the shared cross cache.
        Position p holds the input that predicts frame p (the start token at 0, then frame p - 1)."""
        path = self._path(branch, upto)
        self_cache = DynamicCache()
        if path:
            layers = len(path[0][0].keys)
            self_cache = DynamicCache([
                (torch.cat([s.keys[layer][:, :, lo - s.start:hi - s.start] for s, lo, hi in path], dim=2),
                 torch.cat([s.values[layer][:, :, lo - s.start:hi - s.start] for s, lo, hi in path], dim=2))
                for layer in range(layers)])
        return EncoderDecoderCache(self_cache, self.cross if self.cross is not None else DynamicCache())

    def _inputs(self, branch: Branch | None, upto: int) -> torch.Tensor:
        """The token ids [rows, upto + 1] of a path: the start token, then frames [0, upto)."""
        ids = [torch.full((self.rows, 1), self.start_token, dtype=torch.long)]
        ids += [s.tokens[:, lo - s.start:hi - s.start] for s, lo, hi in self._path(branch, upto)]
        return torch.cat(ids, dim=1)

    @torch.no_grad()
    def _decode(self, parent: Branch | None, at: int, frames: int, seed: int, temperature: float,
                top_k: int, reuse: bool = True) -> Branch:
        if frames < 1:
            raise ValueError(f"frames={frames}: decode at least one frame")
        if not isinstance(frames, int) or not isinstance(at, int):
            raise TypeError(f"at={at!r}, frames={frames!r}: frame counts are ints")
        if at + frames > self.max_frames:
            raise ValueError(f"frames {at}..{at + frames} exceed the decoder's {self.max_frames} positions")
        ids = self._inputs(parent, at)  # start token + frames [0, at)
        gen = torch.Generator().manual_seed(int(seed))
        if reuse:
            cache = self._cache_for(parent, at)  # positions [0, at)
            logits = self._forward(ids[:, at:], cache)  # position `at` (frame at - 1) predicts frame `at`
        else:  # recompute the prefix in one forward (what an edit costs without the stored cache)
            cache = self._cache_for(None, 0)
            logits = self._forward(ids, cache)
        if self.cross is None:
            self.cross = cache.cross_attention_cache
        tokens = []
        for step in range(frames):
            nxt = sample(logits, temperature, top_k, gen)
            tokens.append(nxt)
            if step + 1 < frames:
                logits = self._forward(nxt[:, None], cache)
        layers = cache.self_attention_cache.layers  # positions [0, at + frames): keep this branch's own
        keys = [layer.keys[:, :, at:].clone() for layer in layers]
        values = [layer.values[:, :, at:].clone() for layer in layers]
        branch = Branch(parent, at, torch.stack(tokens, dim=1), keys, values)
        self.branches.append(branch)
        return branch

    def generate(self, frames: int, seed: int = 0, temperature: float = 1.0, top_k: int = 250) -> Branch:
        """A new root branch: frames 0..frames-1 decoded from the start token."""
        return self._decode(None, 0, frames, seed, temperature, top_k)

    def branch(self, parent: Branch, at: int, frames: int | None = None, seed: int = 0, temperature: float = 1.0,
               top_k: int = 250, reuse: bool = True) -> Branch:
        """A continuation of `parent`'s path that keeps its frames [0, at) and decodes `frames`
        new ones from `at` (default: up to the parent's end). reuse=False recomputes the prefix's
        keys/values in one forward instead of reading the stored ones (same result, for timing)."""
        if parent not in self.branches:
            raise ValueError("parent is not a branch of this tree")
        if not 0 < at < parent.end:
            raise ValueError(f"at={at}: branch inside the parent's frames, 0 < at < {parent.end}")
        return self._decode(parent, at, parent.end - at if frames is None else frames, seed, temperature, top_k, reuse)

    # -- reading ------------------------------------------------------------------------------

    def tokens(self, branch: Branch) -> torch.Tensor:
        """All frames of `branch`'s path: [rows, branch.end] token ids."""
        return self._inputs(branch, branch.end)[:, 1:]

    def _cross_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in (self.cross.layers if self.cross else [])
                   for t in (layer.keys, layer.values) if t is not None)

    def nbytes(self, branches: list[Branch] | None = None) -> int:
        """Bytes of keys/values the tree stores for `branches` (default: all), each frame once,
        plus the shared cross-attention cache."""
        return sum(b.nbytes() for b in (self.branches if branches is None else branches)) + self._cross_nbytes()

    def unshared_nbytes(self, branches: list[Branch] | None = None) -> int:
        """Bytes if each of `branches` (default: all) kept a full cache of its whole path and its
        own cross-attention cache."""
        chosen = self.branches if branches is None else branches
        return int(sum(b.nbytes() / b.tokens.shape[1] * b.end + self._cross_nbytes() for b in chosen))


def sample(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator) -> torch.Tensor:
    """One token per row from logits [rows, vocab]: greedy at temperature 0, else top-k sampling."""
    if temperature < 0 or top_k < 0:
        raise ValueError(f"temperature={temperature}, top_k={top_k}: both must be >= 0")
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
