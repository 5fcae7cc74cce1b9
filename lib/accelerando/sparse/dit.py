"""Sparse DiT steps for editing: run only the edited tokens, attend to cached keys/values of the rest.

During an edit the tokens outside the edited region are known at every denoising step (their
noised latents come from the cached generation) and their outputs are thrown away, so a step
needs the transformer's output for the edited tokens only. SIGE's recipe for attention applies:
queries, the MLP and the outputs are computed for the active tokens (edit + margin), and each
self-attention layer attends to the full key/value set, fresh for the active tokens and cached
for the others. The cache comes from a dense pass (the original generation's at the same step,
or an edit step run densely every k steps); the approximation is that cached tokens do not see
the edit. `accelerando.sparse.session` measures its error against dense inpainting.

    kv = KVCacheAttention.install(pipe.transformer)        # swaps the self-attention processors
    out = dit_forward(pipe.transformer, kv, x, t, enc, glob, rotary)            # dense, records K/V
    out = dit_forward(pipe.transformer, kv, x, t, enc, glob, rotary, frames=idx) # sparse

The patch is a diffusers attention processor (`set_attn_processor`), so the stock
`StableAudioDiTBlock.forward` runs unchanged; `dit_forward` mirrors `StableAudioDiTModel.forward`
(tests check the dense path equals the stock forward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import StableAudioAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb


class KVCacheAttention:
    """Shared state of the self-attention processors of one DiT: the per-layer key/value cache.

    `keys[i]`, `values[i]`: [batch, kv_heads, tokens, head_dim] after rotary embedding, for every
    token (the global token first). `active`: token indices [n] of the current sparse pass, or None
    for a dense pass (which overwrites the cache).
    """

    def __init__(self, layers: int):
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers
        self.active: torch.Tensor | None = None

    @classmethod
    def install(cls, transformer) -> KVCacheAttention:
        """Give every block's self-attention a caching processor (cross-attention is untouched)."""
        cache = cls(len(transformer.transformer_blocks))
        for i, block in enumerate(transformer.transformer_blocks):
            block.attn1.set_processor(_CachingSelfAttnProcessor(cache, i))
        return cache

    @staticmethod
    def uninstall(transformer) -> None:
        for block in transformer.transformer_blocks:
            block.attn1.set_processor(StableAudioAttnProcessor2_0())

    def snapshot(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if any(k is None for k in self.keys):
            raise RuntimeError("the key/value cache is empty: run a dense pass first")
        return list(self.keys), list(self.values)

    def load(self, snapshot: tuple[list[torch.Tensor], list[torch.Tensor]]) -> None:
        self.keys, self.values = list(snapshot[0]), list(snapshot[1])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


class _CachingSelfAttnProcessor:
    """`StableAudioAttnProcessor2_0` for self-attention with a key/value cache (see module doc)."""

    def __init__(self, cache: KVCacheAttention, layer: int):
        self.cache, self.layer = cache, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("the caching processor serves unmasked self-attention only")
        batch = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = query.shape[-1] // attn.heads
        kv_heads = key.shape[-1] // head_dim
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, kv_heads, head_dim).transpose(1, 2)
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


def _rotate(x: torch.Tensor, rotary_emb) -> torch.Tensor:
    dtype = x.dtype
    x = x.to(torch.float32)
    rot = rotary_emb[0].shape[-1]
    rotated = apply_rotary_emb(x[..., :rot], rotary_emb, use_real=True, use_real_unbind_dim=-2)
    return torch.cat((rotated, x[..., rot:]), dim=-1).to(dtype)


def dit_forward(
    transformer,
    cache: KVCacheAttention,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    global_hidden_states: torch.Tensor,
    rotary_embedding: tuple[torch.Tensor, torch.Tensor],
    frames: torch.Tensor | None = None,
) -> torch.Tensor:
    """`StableAudioDiTModel.forward` with a key/value cache; optionally on a subset of frames.

    hidden_states [B, C, T] latent frames; rotary_embedding for T + 1 tokens (the global token
    first). frames=None: a dense pass that refills the cache, returns [B, C_out, T]. frames [n]
    (sorted latent-frame indices): a sparse pass on those frames only, returns [B, C_out, n].
    """
    tr = transformer
    cross = tr.cross_attention_proj(encoder_hidden_states)
    glob = tr.global_proj(global_hidden_states)
    glob = glob + tr.timestep_proj(tr.time_proj(timestep.to(tr.dtype))).unsqueeze(1)
    x = hidden_states if frames is None else hidden_states.index_select(2, frames)
    x = tr.preprocess_conv(x) + x
    h = torch.cat([glob, tr.proj_in(x.transpose(1, 2))], dim=-2)
    cos, sin = rotary_embedding
    if frames is None:
        cache.active = None
    else:
        tokens = torch.cat([frames.new_zeros(1), frames + 1])  # the global token is always active
        cache.active = tokens
        cos, sin = cos[tokens], sin[tokens]
    try:
        for block in tr.transformer_blocks:
            h = block(hidden_states=h, encoder_hidden_states=cross, rotary_embedding=(cos, sin))
    finally:
        cache.active = None
    h = tr.proj_out(h).transpose(1, 2)[:, :, 1:]
    return tr.postprocess_conv(h) + h
