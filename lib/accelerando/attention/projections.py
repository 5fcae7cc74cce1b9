"""The projections around a Stable Audio DiT self-attention, for processors that replace only the
attention in the middle (radial masks; the key/value cache keeps its own copy until it moves here).

Follows diffusers' `StableAudioAttnProcessor2_0` (diffusers 0.42.1): query/key/value projections
split into heads, rotary embedding on the first rot_dim features in fp32, then after attention
the heads merged and the output projection.
"""

from __future__ import annotations

import torch

from .key_value_cache import _rotate


def self_attention_inputs(attn, hidden_states: torch.Tensor, rotary_emb=None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden_states [B, tokens, width] -> (query [B, heads, tokens, head_dim], key and value
    [B, kv_heads, tokens, head_dim]), rotary embedding applied to query and key."""
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states {tuple(hidden_states.shape)}: a DiT's self-attention takes [batch, tokens, width]")
    batch = hidden_states.shape[0]
    query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
    head_dim = query.shape[-1] // attn.heads
    kv_heads = key.shape[-1] // head_dim
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch, -1, kv_heads, head_dim).transpose(1, 2)
    value = value.view(batch, -1, kv_heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if rotary_emb is not None:
        query, key = _rotate(query, rotary_emb), _rotate(key, rotary_emb)
    return query, key, value


def attention_output(attn, out: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """out [B, heads, tokens, head_dim] -> [B, tokens, width] through the output projection (and the
    layer's residual and rescale, when it has them)."""
    batch, heads, tokens, head_dim = out.shape
    hidden = out.transpose(1, 2).reshape(batch, tokens, heads * head_dim)
    hidden = attn.to_out[1](attn.to_out[0](hidden))
    if attn.residual_connection and residual is not None:
        hidden = hidden + residual
    return hidden / attn.rescale_output_factor
