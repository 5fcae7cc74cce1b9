"""A key/value cache for the self-attention of a Stable Audio DiT, as attention processors.

A dense pass records every self-attention layer's keys and values (after the rotary embedding);
a later pass on a subset of the tokens (`KeyValueCache.active`) computes fresh keys/values for
those tokens only, merges them into the recorded ones and attends to the whole set. This is what
SIGE-style sparse editing needs (`accelerando.sparse.dit`): queries for the edited tokens, keys and
values for all of them.

    cache = KeyValueCache.install(pipe.transformer)   # self-attention processors swapped in
    ...                                               # dense passes record, sparse passes read
    cache.remove(pipe.transformer)                    # the processors that were there before

    with key_value_cache(pipe.transformer) as cache:  # the same, restored on exit
        ...

Installation goes through `set_attn_processor` and removal restores the previous processors
(`accelerando.attention.processors`), so the cache stacks with other processor patches.
Cross-attention layers keep their processors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn

from .processors import install_attn_processors, is_self_attention, restore_attn_processors


class KeyValueCache:
    """Per-layer self-attention keys/values of one DiT, shared by its caching processors.

    `keys[i]`, `values[i]`: [batch, kv_heads, tokens, head_dim] after the rotary embedding, for
    every token (the DiT's global token first). `active`: token indices [n] of the current sparse
    pass, or None for a dense pass (which overwrites the cache).
    """

    def __init__(self, layers: int):
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers
        self.active: torch.Tensor | None = None
        self._saved: dict | None = None  # the processors installation replaced

    @classmethod
    def install(cls, transformer: nn.Module) -> KeyValueCache:
        """Give every self-attention layer of `transformer` (a StableAudioDiTModel) a caching
        processor through `set_attn_processor`; `remove` restores what was there."""
        names = [name for name in getattr(transformer, "attn_processors", {}) if is_self_attention(name)]
        if not names:
            raise TypeError(f"{type(transformer).__name__} has no self-attention processors (*.attn1.processor): "
                            "pass a StableAudioDiTModel such as pipe.transformer")
        cache = cls(len(names))
        layer_of = {name: i for i, name in enumerate(names)}
        cache._saved = install_attn_processors(
            transformer,
            lambda name, old: KeyValueCacheProcessor(cache, layer_of[name]) if name in layer_of else old)
        return cache

    def remove(self, transformer: nn.Module) -> None:
        """Set back the processors that `install` replaced (the same objects)."""
        if self._saved is None:
            raise RuntimeError("this cache is not installed: call KeyValueCache.install(transformer) first")
        restore_attn_processors(transformer, self._saved)
        self._saved = None

    def reset_state(self) -> None:
        """Forget the recorded keys/values (e.g. before another track)."""
        self.keys = [None] * len(self.keys)
        self.values = [None] * len(self.values)
        self.active = None

    def snapshot(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(keys, values) per layer, as lists of the cached tensors (not copies)."""
        if any(k is None for k in self.keys):
            raise RuntimeError("the key/value cache is empty: run a dense pass first")
        return list(self.keys), list(self.values)

    def load(self, snapshot: tuple[list[torch.Tensor], list[torch.Tensor]]) -> None:
        self.keys, self.values = list(snapshot[0]), list(snapshot[1])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


@contextmanager
def key_value_cache(transformer: nn.Module) -> Iterator[KeyValueCache]:
    """`KeyValueCache.install(transformer)` for the body of a `with` block; removed on exit."""
    cache = KeyValueCache.install(transformer)
    try:
        yield cache
    finally:
        cache.remove(transformer)


class KeyValueCacheProcessor:
    """Self-attention of one DiT layer that records (dense pass) or merges into (sparse pass) the
    layer's entry of a `KeyValueCache`.

    # Adapted from diffusers.models.attention_processor.StableAudioAttnProcessor2_0.__call__
    # (diffusers 0.42.1): the cache has to sit between the rotary embedding and the attention,
    # inside the processor, so the projection, grouped-query and partial-rotary steps are copied.
    """

    def __init__(self, cache: KeyValueCache, layer: int):
        self.cache, self.layer = cache, layer

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb=None) -> torch.Tensor:
        """hidden_states [B, tokens, width] -> [B, tokens, width]; tokens are the active ones in a
        sparse pass."""
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("the key/value cache serves unmasked self-attention only")
        batch = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = query.shape[-1] // attn.heads
        kv_heads = key.shape[-1] // head_dim
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # [B, heads, tokens, head_dim]
        key = key.view(batch, -1, kv_heads, head_dim).transpose(1, 2)  # [B, kv_heads, tokens, head_dim]
        value = value.view(batch, -1, kv_heads, head_dim).transpose(1, 2)
        if rotary_emb is not None:  # on the first rot_dim features, in fp32, as the stock processor
            query, key = _rotate(query, rotary_emb), _rotate(key, rotary_emb)
        cache = self.cache
        if cache.active is None:
            cache.keys[self.layer], cache.values[self.layer] = key, value
        else:
            cached_k, cached_v = cache.keys[self.layer], cache.values[self.layer]
            if cached_k is None or cached_k.shape[0] != batch:
                raise RuntimeError("sparse pass without a matching dense pass: the cache is empty or "
                                   "holds another batch; run a dense pass first")
            key = cached_k.index_copy(2, cache.active, key)
            value = cached_v.index_copy(2, cache.active, value)
            # the merged set stays: the cache then describes the track as it is now
            cache.keys[self.layer], cache.values[self.layer] = key, value
        if kv_heads != attn.heads:
            rep = attn.heads // kv_heads
            key = torch.repeat_interleave(key, rep, dim=1, output_size=key.shape[1] * rep)
            value = torch.repeat_interleave(value, rep, dim=1, output_size=value.shape[1] * rep)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def _rotate(x: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary embedding on the first rot_dim features of x [B, heads, tokens, head_dim], in fp32."""
    dtype = x.dtype
    x = x.to(torch.float32)
    rot = rotary_emb[0].shape[-1]
    rotated = apply_rotary_emb(x[..., :rot], rotary_emb, use_real=True, use_real_unbind_dim=-2)
    return torch.cat((rotated, x[..., rot:]), dim=-1).to(dtype)
