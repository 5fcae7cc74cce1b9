"""Radial attention in token language models made of transformers' `MusicgenAttention`: MusicGen's
decoder and MusicGen-Lite A and B, through transformers' attention interface.

A token model decodes causally, one step at a time with a key/value cache, so its pattern is the
causal one: the window and the bands before the query only. The self-attention of every decoder
layer is routed to `radial_attention` (queries are the last rows of the cached keys); the
cross-attention to the text (and audio prompt) keeps the implementation it had. For MusicGen-Lite
A, a prefix LM, the text prefix of each call is added to the sinks, so every step still reads the
whole prompt.

    patch = patch_token_model(lm, RadialConfig(causal=True, frame_rate=codec.frame_rate, bpm=120))
    ...                                   # generate as usual
    patch.remove()                        # the implementation, attributes and hooks that were there
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .radial import RadialConfig, radial_attention

IMPLEMENTATION = "accelerando_radial"  # the name under transformers' AttentionInterface


def _registered() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, radial_attention_forward)


def radial_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                             **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [B, heads, q, head_dim], key and value
    [B, heads, k, head_dim] (the cache included), `attention_mask` additive or bool [B, 1, q, k];
    returns ([B, q, heads, head_dim], None). Modules without a radial config (cross-attention)
    go to the implementation they had."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.musicgen.modeling_musicgen import eager_attention_forward

    state: _TokenModelPatch | None = getattr(module, "accelerando_radial", None)
    if state is None or module not in state.self_attention:
        fallback = state.previous if state is not None else "sdpa"
        fn = ALL_ATTENTION_FUNCTIONS.get_interface(fallback, eager_attention_forward)
        return fn(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if dropout and module.training:
        raise ValueError("radial attention has no attention dropout: train with attention_dropout=0 or model.eval()")
    q_len, k_len = query.shape[2], key.shape[2]
    exists = None
    if attention_mask is not None:
        last = attention_mask[:, 0, -1, :k_len]  # the last query may see every key that exists
        exists = last if last.dtype == torch.bool else last > torch.finfo(last.dtype).min / 2
    config = state.config
    if state.prefix:
        config = replace(config, sink_tokens=config.sink_tokens + state.prefix)
    out = radial_attention(query, key, value, config, kernel=state.kernel, query_start=k_len - q_len,
                           key_padding_mask=exists, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


class _TokenModelPatch:
    """What `patch_token_model` changed on one model, and how to undo it."""

    def __init__(self, model: nn.Module, config: RadialConfig, kernel: str):
        from transformers.models.musicgen.modeling_musicgen import MusicgenAttention

        self.config, self.kernel, self.prefix = config, kernel, 0
        layers = [m for m in model.modules() if hasattr(m, "self_attn") and isinstance(m.self_attn, MusicgenAttention)]
        if not layers:
            raise TypeError(f"{type(model).__name__} has no decoder layers with a MusicgenAttention self_attn: pass "
                            "MusicGen's decoder or a MusicGen-Lite model (a diffusers DiT goes to apply_radial_attention)")
        self.self_attention = {layer.self_attn for layer in layers}
        self.modules = [m for m in model.modules() if isinstance(m, MusicgenAttention)]
        self.configs = list({id(m.config): m.config for m in self.modules}.values())
        previous = {c._attn_implementation for c in self.configs}
        if IMPLEMENTATION in previous:
            raise RuntimeError("radial attention is already on this model: remove that patch first")
        if len(previous) != 1:
            raise RuntimeError(f"the attention layers use different implementations {previous}: cannot restore them as one")
        self.previous = previous.pop() or "sdpa"
        _registered()
        for m in self.modules:
            m.accelerando_radial = self
        for c in self.configs:
            c._attn_implementation = IMPLEMENTATION
        self._hook = None
        if getattr(getattr(model, "config", None), "variant", None) == "a":  # MusicGen-Lite A: the text is a prefix
            self._hook = model.register_forward_pre_hook(self._read_prefix, with_kwargs=True)

    def _read_prefix(self, model, args, kwargs):
        text_states = kwargs["text_states"] if "text_states" in kwargs else args[1]
        self.prefix = int(text_states.shape[1])

    def remove(self) -> None:
        """Set back the attention implementation, and drop the attributes and the hook."""
        for c in self.configs:
            c._attn_implementation = self.previous
        for m in self.modules:
            if getattr(m, "accelerando_radial", None) is self:
                del m.accelerando_radial
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def patch_token_model(model: nn.Module, config: RadialConfig, kernel: str = "blocks") -> _TokenModelPatch:
    """Route the self-attention of every MusicgenAttention decoder layer of `model` through the
    causal radial rule. `config.frame_rate` is the model's steps per second (MusicGen-Lite with the
    delay pattern: the codec's frame rate). Returns the patch; `.remove()` undoes it."""
    if not config.causal:
        raise ValueError("a token model decodes causally: use RadialConfig(causal=True, frame_rate=<steps per second>)")
    if kernel not in ("dense", "blocks"):
        raise ValueError(f"kernel={kernel!r}: token models take 'blocks' or 'dense' (a compiled kernel would "
                         "recompile at every decoding step's new key length)")
    return _TokenModelPatch(model, config, kernel)
