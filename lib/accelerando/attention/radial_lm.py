"""Radial attention in token language models made of transformers' `MusicgenAttention`: MusicGen's
decoder and MusicGen-Lite A and B, through transformers' attention interface.

A token model decodes causally, one step at a time with a key/value cache, so its pattern is the
causal one: the window and the bands before the query only. The self-attention of every decoder
layer is routed to `radial_attention` (queries are the last rows of the cached keys); the
cross-attention to the text (and audio prompt) keeps the implementation it had. For MusicGen-Lite
A, a prefix LM, the text prefix of each call is added to the sinks, so every step still reads the
whole prompt.

A causal radial step never reads a key farther back than the pattern's reach (sinks aside), so
MusicGen-Lite's key/value cache is bounded while the patch is on (`model.new_cache()` returns a
`RadialCacheLayer` cache): it keeps the sinks and the last `reach` steps, and memory per generated
step stays constant however long the piece. The attention is unchanged by the eviction: the kept
keys are the sinks and one contiguous run ending at the query, so every distance the rule reads
is the same in the shortened cache.

    patch = patch_token_model(lm, RadialConfig(causal=True, frame_rate=codec.frame_rate, bpm=120))
    ...                                   # generate as usual
    patch.remove()                        # the implementation, attributes and hooks that were there
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from transformers.cache_utils import DynamicLayer

from .radial import RadialConfig, radial_attention

IMPLEMENTATION = "accelerando_radial"  # the name under transformers' AttentionInterface


def _registered() -> None:
    """Register the attention function, and SDPA's mask builder under the same name: transformers
    models (MusicGen's decoder) build their 4-D masks through it, and the cross-attention falls
    back to SDPA with them."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, radial_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


def radial_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                             **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [B, heads, q, head_dim], key and value
    [B, heads, k, head_dim] (the cache included), `attention_mask` None, a [B, k] key mask, or an
    additive or bool [B, 1, q, k] mask; returns ([B, q, heads, head_dim], None). Only the mask's
    key padding is read: the causal radial rule replaces its causal part. Modules without a radial
    config (cross-attention) go to the implementation they had."""
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
    config = state.config
    if state.prefix:
        config = replace(config, sink_tokens=config.sink_tokens + state.prefix)
    exists = None
    if attention_mask is not None:
        # the last query may see every key that exists
        last = attention_mask if attention_mask.dim() == 2 else attention_mask[:, 0, -1, :]
        if last.shape[-1] > k_len:  # a bounded cache dropped the keys between the sinks and the recent run
            sinks = min(config.sink_tokens, k_len)
            last = torch.cat([last[:, :sinks], last[:, last.shape[-1] - (k_len - sinks):]], dim=-1)
        if last.dtype == torch.bool:
            exists = last
        elif last.is_floating_point():  # additive: 0 where allowed, a large negative where not
            exists = last > torch.finfo(last.dtype).min / 2
        else:  # 0/1 integers
            exists = last != 0
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
            raise TypeError(f"{type(model).__name__} has neither attention processors nor decoder layers with a "
                            "MusicgenAttention self_attn: pass a StableAudioDiTModel (for a pipeline, pipe.transformer), "
                            "a MusicGen model or its decoder, or a MusicGen-Lite model")
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
        self._model = model if callable(getattr(model, "new_cache", None)) else None
        if self._model is not None:  # MusicGen-Lite: its generation loop asks the model for a cache
            stock = model.new_cache
            model.new_cache = lambda: self._bounded(stock())

    @property
    def sinks(self) -> int:
        return self.config.sink_tokens + self.prefix

    def _bounded(self, stock_cache):
        """The model's own cache with the self-attention part replaced by a bounded one."""
        from functools import partial

        from transformers.cache_utils import Cache, EncoderDecoderCache

        bounded = Cache(layer_class_to_replicate=partial(RadialCacheLayer, self))
        if isinstance(stock_cache, EncoderDecoderCache):
            return EncoderDecoderCache(bounded, stock_cache.cross_attention_cache)
        return bounded

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
        if self._model is not None:
            del self._model.new_cache  # the class's method again
            self._model = None


class RadialCacheLayer(DynamicLayer):
    """A self-attention cache layer that keeps the sinks and the last `reach` steps only.

    `update` returns the kept keys plus the new ones (all a causal radial query can read) and then
    evicts what no later query will read. `get_seq_length` is the number of steps seen, as for the
    full cache, so positions do not shift.
    """

    def __init__(self, patch: _TokenModelPatch):
        super().__init__()
        self.patch, self.seen = patch, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.seen += key_states.shape[-2]
        keys = torch.cat([self.keys, key_states], dim=-2)
        values = torch.cat([self.values, value_states], dim=-2)
        sinks, reach = self.patch.sinks, self.patch.config.reach
        if keys.shape[-2] > sinks + reach:
            self.keys = torch.cat([keys[:, :, :sinks], keys[:, :, -reach:]], dim=-2)
            self.values = torch.cat([values[:, :, :sinks], values[:, :, -reach:]], dim=-2)
        else:
            self.keys, self.values = keys, values
        return keys, values

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0


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
