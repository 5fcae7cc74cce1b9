"""Editing autoregressive token models: a tree of continuations that share their prefixes' KV cache.

An edit at frame t of a token model's output keeps every token before t, so it keeps their keys
and values too: only frames t.. are decoded again. Alternative continuations (several edits of
one track, or several takes from one point) share the cache of their common prefix. Each branch
stores the self-attention keys/values of its own frames only; what the whole tree shares (the
text's cross-attention cache, or model A's text prefix) is stored once.

    tree = PrefixTree(model, text_ids)                 # transformers MusicgenForConditionalGeneration
    tree = PrefixTree.for_musicgen_lite(lite, text_states, text_mask, prompt_codes=None, guidance=3.0)
    take = tree.generate(frames=172, seed=0)           # root branch
    edit = tree.branch(take, at=100, seed=1)           # keeps frames 0..99 of `take`, decodes 100..171
    tree.tokens(edit)                                  # the path's tokens, frames on the last axis
    tree.nbytes(), tree.unshared_nbytes()              # stored vs one full cache per branch

One tree, one small adapter per model family (the model's inputs, its cache objects, the
decoding loop):

    MusicgenAdapter      transformers MusicGen. Frames are decoder steps, tokens [batch x K, n]
                         (MusicGen's row layout), cache position p holds the input that predicts
                         frame p (the start token, then frame p - 1). Sampling per row.
    MusicGenLiteAdapter  MusicGen-Lite A or B (`models.musicgen_lite`) with classifier-free
                         guidance as one batch of [cond; uncond] rows, exactly as its `generate`.
                         Codes [B, K, n], undelayed. Under the delay pattern decoder step s emits
                         codebook k of frame s - k and its input (cache position s) holds the
                         previous step's outputs, so keeping frames [0, t) keeps positions [0, t)
                         (their inputs are all known); position t is fed again (its logits were
                         not stored) and steps t .. t + K - 2 still force codebooks k > step - t to
                         the kept frames, as `generate(..., continuation=codes[..., :t])` does.
                         The shared part: model A's L text positions (cache positions [0, L),
                         before audio step 0), model B's cross-attention cache of text + prompt.
                         A branch of n frames stores n positions; the last K - 1 steps' inputs
                         (the delay pattern's end corners) are dropped since no edit reads them.

The logits of a branch are those of decoding its whole sequence in one go (tests), and with the
same seed a branch equals what the model's own generation gives for the kept prefix as a
continuation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from ..models.musicgen_lite import (MusicGenLite, cfg_logits, condition_rows, forced_tokens, inputs_and_labels,
                                   sample_logits)
from ..models.patterns import undelay_pattern

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values) [rows, heads, positions, head_dim]


@dataclass(eq=False)  # branches are compared by identity
class Branch:
    """Frames [start, start + n) of one continuation; everything before `start` is its parent's."""

    parent: Branch | None
    start: int
    tokens: torch.Tensor  # [..., n] tokens this branch decoded itself (frames on the last axis)
    keys: list[torch.Tensor] = field(repr=False)  # per layer [rows, heads, n, head_dim], positions [start, end)
    values: list[torch.Tensor] = field(repr=False)

    @property
    def end(self) -> int:
        return self.start + self.tokens.shape[-1]

    @property
    def frames(self) -> int:
        return self.tokens.shape[-1]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


def _kv_nbytes(kv) -> int:
    return sum(t.numel() * t.element_size() for pair in kv for t in pair if t is not None)


# ---------------------------------------------------------------------------------------------
# Adapters: what differs between model families
# ---------------------------------------------------------------------------------------------


class MusicgenAdapter:
    """transformers `MusicgenForConditionalGeneration` conditioned on text_ids [batch, tokens].

    Frames are decoder steps (no delay pattern: the tree decodes the raw token rows);
    tokens [rows = batch x K, frames]. Shared: the text's cross-attention cache."""

    def __init__(self, model, text_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
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
        self.cross: DynamicCache | None = None  # filled by the first decode
        self.no_tokens = torch.zeros(self.rows, 0, dtype=torch.long)
        self.keep_logits = False  # diagnostics: keep the logits of the last decode
        self.last_logits: torch.Tensor | None = None

    def inputs(self, known: torch.Tensor) -> torch.Tensor:
        """Token ids [rows, t + 1] of positions [0, t]: the start token, then frames [0, t)."""
        return torch.cat([torch.full((self.rows, 1), self.start_token, dtype=torch.long), known], dim=1)

    def cache(self, prefix: KV | None) -> EncoderDecoderCache:
        """A cache of self-attention positions [0, t) and the shared cross cache; None: empty."""
        if prefix is None:
            return EncoderDecoderCache(DynamicCache(), DynamicCache())
        return EncoderDecoderCache(DynamicCache(prefix), self.cross)

    def _forward(self, ids: torch.Tensor, cache: EncoderDecoderCache) -> torch.Tensor:
        out = self.model(encoder_outputs=self.encoder_outputs, attention_mask=self.attention_mask,
                         decoder_input_ids=ids, past_key_values=cache, use_cache=True)
        return out.logits[:, -1]  # [rows, vocab]

    def decode(self, known: torch.Tensor, prefix: KV | None, frames: int, gen: torch.Generator,
               temperature: float, top_k: int, top_p: float) -> tuple[torch.Tensor, KV]:
        """Frames [t, t + frames) after the kept ones `known` [rows, t]: (tokens [rows, frames],
        per layer K/V of positions [t, t + frames)). prefix: stored K/V of positions [0, t), or
        None to recompute them in one forward."""
        at = known.shape[1]
        ids = self.inputs(known)
        cache = self.cache(prefix)
        logits = self._forward(ids[:, at:] if prefix is not None else ids, cache)  # position at predicts frame at
        if self.cross is None:
            self.cross = cache.cross_attention_cache
        tokens, kept = [], []
        for step in range(frames):
            if self.keep_logits:
                kept.append(logits)
            nxt = sample_logits(logits.float(), temperature, top_k, top_p, gen)
            tokens.append(nxt)
            if step + 1 < frames:
                logits = self._forward(nxt[:, None], cache)
        self.last_logits = torch.stack(kept, 1) if kept else None
        kv = [(layer.keys[:, :, at:].clone(), layer.values[:, :, at:].clone()) for layer in cache.self_attention_cache.layers]
        return torch.stack(tokens, dim=1), kv

    def shared_nbytes(self) -> int:
        return _kv_nbytes((layer.keys, layer.values) for layer in (self.cross.layers if self.cross else []))


class MusicGenLiteAdapter:
    """MusicGen-Lite (`models.musicgen_lite.MusicGenLite`, A or B) with CFG as `generate` runs it.

    text_states [B, L, text_dim], text_mask [B, L]; prompt_codes [B, K, P] (model B's audio
    prompt); guidance != 1 decodes rows [cond; uncond] (2B) and samples from cfg_logits.
    Tokens are codes [B, K, frames] (undelayed). Shared: model A's text positions [0, L) of the
    self-attention cache, model B's cross-attention cache (text + audio prompt memory)."""

    def __init__(self, model: MusicGenLite, text_states: torch.Tensor, text_mask: torch.Tensor,
                 prompt_codes: torch.Tensor | None = None, guidance: float = 3.0):
        cfg = model.config
        if cfg.pattern != "delay":
            raise ValueError(f"this model uses the {cfg.pattern} pattern; the prefix tree keeps the delay pattern's "
                             "steps (a flattened model edits by generate(..., continuation=codes) instead)")
        if text_states.ndim != 3 or text_states.shape[-1] != cfg.text_dim:
            raise ValueError(f"text_states of shape {tuple(text_states.shape)}: expected [batch, tokens, {cfg.text_dim}]")
        if text_mask.shape != text_states.shape[:2]:
            raise ValueError(f"text_mask of shape {tuple(text_mask.shape)} does not match text_states "
                             f"{tuple(text_states.shape[:2])}: expected [batch, tokens]")
        if prompt_codes is not None:
            if cfg.variant == "a":
                raise ValueError("model A takes no audio prompt: generate from it as the root and branch after it")
            if prompt_codes.ndim != 3 or prompt_codes.shape[:2] != (text_states.shape[0], cfg.codebooks):
                raise ValueError(f"prompt_codes of shape {tuple(prompt_codes.shape)}: expected "
                                 f"[{text_states.shape[0]}, {cfg.codebooks}, frames]")
        self.model = model.eval()
        self.batch, self.codebooks, self.special = text_states.shape[0], cfg.codebooks, cfg.codebook_size
        self.max_frames = cfg.max_frames
        self.guidance, self.guided = float(guidance), guidance != 1.0
        # the condition rows exactly as `generate` builds them: [cond; uncond] under guidance
        self.states, self.mask, self.prompt, self.prompt_mask = condition_rows(text_states, text_mask, prompt_codes,
                                                                               self.guided)
        self.rows = self.states.shape[0]
        self.text_positions = text_states.shape[1] if cfg.variant == "a" else 0  # cache positions before audio step 0
        self.shared: KV | DynamicCache | None = None  # filled by the first decode
        self.no_tokens = torch.zeros(self.batch, self.codebooks, 0, dtype=torch.long)
        self.keep_logits = False  # diagnostics: keep the model's logits [rows, K, steps, V] of the last decode
        self.last_logits: torch.Tensor | None = None
        self._kept: list[torch.Tensor] = []

    def inputs(self, known: torch.Tensor) -> torch.Tensor:
        """Step inputs [B, K, t + 1] of audio positions [0, t] given frames [0, t): the special
        token, then the delayed codes of steps [0, t) (their corners special)."""
        return inputs_and_labels(known, self.special)[0][..., :known.shape[-1] + 1]

    def cache(self, prefix: KV | None):
        """A model cache of audio positions [0, t) (after A's shared text positions, beside B's
        shared cross cache); None: an empty cache (the text prefix is then fed again)."""
        if prefix is None:
            return self.model.new_cache()
        if self.model.config.variant == "a":
            return DynamicCache([(torch.cat([tk, k], 2), torch.cat([tv, v], 2)) for (tk, tv), (k, v) in zip(self.shared, prefix)])
        return EncoderDecoderCache(DynamicCache(prefix), self.shared)

    def _logits(self, x: torch.Tensor, cache, past: int) -> torch.Tensor:
        """Logits [B, K, V] of the last of the steps x [B, K, s] after `past` cached ones."""
        rows = torch.cat([x, x]) if self.guided else x
        logits = self.model(rows, self.states, self.mask, self.prompt, self.prompt_mask, cache=cache, past_steps=past)
        if self.keep_logits:
            self._kept.append(logits[:, :, -1])
        logits = logits[:, :, -1]
        return cfg_logits(logits[:self.batch], logits[self.batch:], self.guidance) if self.guided else logits

    def decode(self, known: torch.Tensor, prefix: KV | None, frames: int, gen: torch.Generator,
               temperature: float, top_k: int, top_p: float) -> tuple[torch.Tensor, KV]:
        """Frames [t, t + frames) after the kept codes `known` [B, K, t]: (codes [B, K, frames],
        per layer K/V of audio positions [t, t + frames)). Steps t .. t + frames + K - 2, one
        sample per step (all codebooks, forced ones overwritten, as `generate` draws them);
        prefix: the stored K/V of audio positions [0, t), or None to prefill text + positions
        [0, t] in one forward as `generate(..., continuation=known)` does."""
        b, k, at = known.shape
        total = at + frames
        forced = forced_tokens(b, k, total, known, self.special)  # -1: sample; else the token to emit
        steps = forced.shape[-1]
        out = forced.clone()
        cache = self.cache(prefix)
        if prefix is None:
            x, past = self.inputs(known), 0
        else:  # position t's input is step t - 1's output, all of it kept
            x, past = forced[:, :, at - 1:at], at
        self._kept = []
        for step in range(at, steps):
            token = sample_logits(self._logits(x, cache, past), temperature, top_k, top_p, gen)  # [B, K]
            out[:, :, step] = torch.where(out[:, :, step] < 0, token, out[:, :, step])
            x, past = out[:, :, step:step + 1], step + 1
        self.last_logits = torch.stack(self._kept, 2) if self._kept else None
        self._kept = []
        if self.model.config.variant == "a":
            layers, offset = cache.layers, self.text_positions
            if self.shared is None:
                self.shared = [(layer.keys[:, :, :offset].clone(), layer.values[:, :, :offset].clone()) for layer in layers]
        else:
            layers, offset = cache.self_attention_cache.layers, 0
            if self.shared is None:
                self.shared = cache.cross_attention_cache
        kv = [(layer.keys[:, :, offset + at:offset + total].clone(), layer.values[:, :, offset + at:offset + total].clone())
              for layer in layers]
        return undelay_pattern(out)[..., at:], kv

    def shared_nbytes(self) -> int:
        if self.shared is None:
            return 0
        if isinstance(self.shared, DynamicCache):
            return _kv_nbytes((layer.keys, layer.values) for layer in self.shared.layers)
        return _kv_nbytes(self.shared)


# ---------------------------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------------------------


class PrefixTree:
    """Continuations of one conditioned generation, sharing their prefixes' caches.

        PrefixTree(model, text_ids, attention_mask=None)        transformers MusicGen
        PrefixTree(lite, text_states, text_mask, prompt_codes=None, guidance=3.0)  MusicGen-Lite
                                                                 (or `PrefixTree.for_musicgen_lite`)
    """

    def __init__(self, model, *condition, **kwargs):
        if isinstance(model, MusicGenLite):
            self.adapter = MusicGenLiteAdapter(model, *condition, **kwargs)
        else:
            self.adapter = MusicgenAdapter(model, *condition, **kwargs)
        self.model = self.adapter.model
        self.max_frames = self.adapter.max_frames
        self.branches: list[Branch] = []

    @classmethod
    def for_musicgen_lite(cls, model: MusicGenLite, text_states: torch.Tensor, text_mask: torch.Tensor,
                          prompt_codes: torch.Tensor | None = None, guidance: float = 3.0) -> PrefixTree:
        """A tree of MusicGen-Lite continuations: text_states [B, L, text_dim], text_mask [B, L],
        prompt_codes [B, K, P] (model B), guidance the CFG weight (1: conditional rows only)."""
        if not isinstance(model, MusicGenLite):
            raise TypeError(f"{type(model).__name__} is not a MusicGenLite: use PrefixTree(model, text_ids)")
        return cls(model, text_states, text_mask, prompt_codes=prompt_codes, guidance=guidance)

    @property
    def encoder_outputs(self):
        """(transformers MusicGen) the text encoder's outputs every branch attends to."""
        return self.adapter.encoder_outputs

    # -- paths ----------------------------------------------------------------------------------

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

    def _tokens(self, branch: Branch | None, upto: int) -> torch.Tensor:
        """Tokens of frames [0, upto) of a path, frames on the last axis."""
        parts = [s.tokens[..., lo - s.start:hi - s.start] for s, lo, hi in self._path(branch, upto)]
        return torch.cat([self.adapter.no_tokens, *parts], dim=-1)

    def _prefix(self, branch: Branch | None, upto: int) -> KV:
        """Per layer the stored keys/values of positions [0, upto) of `branch`'s path."""
        path = self._path(branch, upto)
        if not path:
            return []
        return [(torch.cat([s.keys[layer][:, :, lo - s.start:hi - s.start] for s, lo, hi in path], dim=2),
                 torch.cat([s.values[layer][:, :, lo - s.start:hi - s.start] for s, lo, hi in path], dim=2))
                for layer in range(len(path[0][0].keys))]

    def _cache_for(self, branch: Branch | None, upto: int):
        """The model's cache of positions [0, upto) of `branch`'s path plus the shared part (an
        empty cache when upto == 0)."""
        return self.adapter.cache(self._prefix(branch, upto) if upto else None)

    def _inputs(self, branch: Branch | None, upto: int) -> torch.Tensor:
        """The model's inputs of positions [0, upto] of a path (the start, then frames [0, upto))."""
        return self.adapter.inputs(self._tokens(branch, upto))

    # -- decoding -------------------------------------------------------------------------------

    @torch.no_grad()
    def _decode(self, parent: Branch | None, at: int, frames: int, seed: int, temperature: float,
                top_k: int, top_p: float, reuse: bool) -> Branch:
        if not isinstance(frames, int) or not isinstance(at, int):
            raise TypeError(f"at={at!r}, frames={frames!r}: frame counts are ints")
        if frames < 1:
            raise ValueError(f"frames={frames}: decode at least one frame")
        if at + frames > self.max_frames:
            raise ValueError(f"frames {at}..{at + frames} exceed the model's {self.max_frames} frame positions")
        known = self._tokens(parent, at)
        prefix = self._prefix(parent, at) if reuse and at else None  # None: recompute the prefix in one forward
        gen = torch.Generator().manual_seed(int(seed))
        tokens, kv = self.adapter.decode(known, prefix, frames, gen, temperature, top_k, top_p)
        branch = Branch(parent, at, tokens, [k for k, _ in kv], [v for _, v in kv])
        self.branches.append(branch)
        return branch

    def generate(self, frames: int, seed: int = 0, temperature: float = 1.0, top_k: int = 250,
                 top_p: float = 0.0) -> Branch:
        """A new root branch: frames [0, frames) decoded from the start."""
        return self._decode(None, 0, frames, seed, temperature, top_k, top_p, reuse=False)

    def branch(self, parent: Branch, at: int, frames: int | None = None, seed: int = 0, temperature: float = 1.0,
               top_k: int = 250, top_p: float = 0.0, reuse: bool = True) -> Branch:
        """A continuation of `parent`'s path that keeps its frames [0, at) and decodes `frames`
        new ones from `at` (default: up to the parent's end). reuse=False recomputes the prefix's
        keys/values (and the shared part) in one forward instead of reading the stored ones: the
        same result, what an edit costs without the tree."""
        if not any(parent is b for b in self.branches):
            raise ValueError("parent is not a branch of this tree")
        if not isinstance(at, int) or not 0 < at < parent.end:
            raise ValueError(f"at={at!r}: branch inside the parent's frames, 0 < at < {parent.end}")
        return self._decode(parent, at, parent.end - at if frames is None else frames, seed, temperature, top_k,
                            top_p, reuse)

    def discard(self, branch: Branch) -> None:
        """Forget a branch without children (its keys/values are freed with it)."""
        if any(b.parent is branch for b in self.branches):
            raise ValueError("this branch has children: discard them first")
        self.branches = [b for b in self.branches if b is not branch]

    # -- reading --------------------------------------------------------------------------------

    def tokens(self, branch: Branch) -> torch.Tensor:
        """All frames of `branch`'s path: transformers [rows, end] token ids; MusicGen-Lite
        [B, K, end] codes."""
        return self._tokens(branch, branch.end)

    codes = tokens  # MusicGen-Lite's name: codes [B, K, frames] for `codec.decode`

    def nbytes(self, branches: list[Branch] | None = None) -> int:
        """Bytes of keys/values the tree stores for `branches` (default: all), each frame once,
        plus the shared part (cross-attention cache, or model A's text prefix) once."""
        return sum(b.nbytes() for b in (self.branches if branches is None else branches)) + self.adapter.shared_nbytes()

    def unshared_nbytes(self, branches: list[Branch] | None = None) -> int:
        """Bytes if each of `branches` (default: all) kept a full cache of its whole path
        (positions [0, end)) and its own copy of the shared part."""
        chosen = self.branches if branches is None else branches
        return sum(b.nbytes() // b.frames * b.end + self.adapter.shared_nbytes() for b in chosen)
