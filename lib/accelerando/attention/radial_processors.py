"""Radial attention in a Stable Audio DiT, through its attention processors (and, through the same
two calls, in a MusicGen-style token model: `radial_lm`).

    saved = apply_radial_attention(pipe.transformer, RadialConfig(bpm=120))   # every attn1
    ...
    remove_radial_attention(pipe.transformer, saved)                          # exactly what was there

    with radial_attention_patch(pipe.transformer, config, kernel="blocks"):   # the same, scoped
        audio = pipe(prompt, ...)

Only the self-attention (`attn1`) changes; the cross-attention to the text keeps its processor.
The DiT puts one global token (timing and conditioning) before the latent frames, so the config's
first sink token is that token: keep `sink_tokens >= 1`. Installing goes through
`set_attn_processor` (`accelerando.attention.processors`), so it stacks with other patches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .processors import install_attn_processors, is_self_attention, restore_attn_processors
from .projections import attention_output, self_attention_inputs
from .radial import KERNELS, RadialConfig, radial_attention


class RadialAttnProcessor:
    """A DiT self-attention under the radial rule; `StableAudioAttnProcessor2_0`'s call signature."""

    def __init__(self, config: RadialConfig, kernel: str = "blocks"):
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r}: choose one of {KERNELS}")
        self.config, self.kernel = config, kernel

    def __repr__(self) -> str:
        return f"RadialAttnProcessor({self.config}, kernel={self.kernel!r})"

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb=None) -> torch.Tensor:
        """hidden_states [B, tokens, width] -> [B, tokens, width]; `attention_mask` [B, tokens] bool
        marks the tokens that exist (as the DiT passes it), or None."""
        if encoder_hidden_states is not None:
            raise ValueError("radial attention is a self-attention rule: leave the cross-attention (attn2) "
                             "its own processor (apply_radial_attention does)")
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.is_floating_point():
                raise ValueError(f"attention_mask {tuple(attention_mask.shape)} {attention_mask.dtype}: radial attention "
                                 "takes the DiT's [batch, tokens] mask of existing tokens (bool or 0/1 integers)")
            attention_mask = attention_mask.bool()
        query, key, value = self_attention_inputs(attn, hidden_states, rotary_emb)
        out = radial_attention(query, key, value, self.config, kernel=self.kernel, key_padding_mask=attention_mask)
        return attention_output(attn, out.to(query.dtype), residual=hidden_states)


def _check_dit_config(config: RadialConfig) -> None:
    if config.sink_tokens < 1:
        raise ValueError("sink_tokens=0 would cut the DiT's global token (timing and conditioning) off from the "
                         "frames: use sink_tokens >= 1 for a Stable Audio DiT")
    if config.causal:
        raise ValueError("causal=True: a diffusion transformer denoises every frame at once; use causal "
                         "attention for autoregressive models only")


def apply_radial_attention(model: nn.Module, config: RadialConfig, kernel: str = "blocks",
                           layers: set[int] | None = None):
    """Put radial attention on `model`: a diffusers StableAudioDiTModel (every block's self-attention,
    or the blocks numbered in `layers`, through `set_attn_processor`), or a token model made of
    transformers' MusicgenAttention (MusicGen's decoder, MusicGen-Lite; `config.causal` must be
    set, see `radial_lm`). Returns what `remove_radial_attention` needs to undo it."""
    if not hasattr(model, "attn_processors"):
        from .radial_lm import patch_token_model

        if layers is not None:
            raise ValueError("layers= picks DiT blocks; a token model's patch covers every decoder layer")
        return patch_token_model(model, config, kernel)
    _check_dit_config(config)
    if layers is not None:
        blocks = {_block_of(name) for name in model.attn_processors if is_self_attention(name)}
        if not set(layers) <= blocks:
            raise ValueError(f"layers={sorted(layers)}: this DiT's blocks are numbered 0..{max(blocks)}")
    processor = RadialAttnProcessor(config, kernel)
    return install_attn_processors(model, lambda name, old: processor if _chosen(name, layers) else old)


def remove_radial_attention(model: nn.Module, saved) -> None:
    """Undo `apply_radial_attention`: the DiT's processors that were there (the same objects), or
    a token model's attention implementation."""
    if hasattr(saved, "remove"):
        saved.remove()
    else:
        restore_attn_processors(model, saved)


@contextmanager
def radial_attention_patch(model: nn.Module, config: RadialConfig, kernel: str = "blocks",
                           layers: set[int] | None = None) -> Iterator:
    """`apply_radial_attention` for the body of a `with` block; undone on exit, also on errors."""
    saved = apply_radial_attention(model, config, kernel, layers)
    try:
        yield saved
    finally:
        remove_radial_attention(model, saved)


def _block_of(name: str) -> int | None:
    """The block number in a processor key such as "transformer_blocks.3.attn1.processor"."""
    return next((int(part) for part in name.split(".") if part.isdigit()), None)


def _chosen(name: str, layers: set[int] | None) -> bool:
    return is_self_attention(name) and (layers is None or _block_of(name) in layers)
