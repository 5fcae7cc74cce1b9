"""Sparse DiT steps for editing: run only the edited tokens, attend to cached keys/values of the rest.

During an edit the tokens outside the edited region are known at every denoising step (their
noised latents come from the cached generation) and their outputs are thrown away, so a step
needs the transformer's output for the edited tokens only. SIGE's recipe for attention applies:
queries, the MLP and the outputs are computed for the active tokens (edit + margin), and each
self-attention layer attends to the full key/value set, fresh for the active tokens and cached
for the others. The cache comes from a dense pass (the original generation's at the same step,
or an edit step run densely every k steps); the approximation is that cached tokens do not see
the edit. `accelerando.sparse.session` measures its error against dense inpainting.

    cache = KeyValueCache.install(pipe.transformer)        # swaps the self-attention processors
    out = dit_forward(pipe.transformer, cache, x, t, enc, glob, rotary)            # dense, records K/V
    out = dit_forward(pipe.transformer, cache, x, t, enc, glob, rotary, frames=idx) # sparse
    cache.remove(pipe.transformer)                         # the processors that were there before

The cache is an attention processor (`accelerando.attention.KeyValueCache`), and every other
layer of the DiT works token by token (its pre/post convolutions have kernel size 1), so a sparse
step is the stock `StableAudioDiTModel.forward` on the active frames with their rows of the rotary
table.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import KeyValueCache


def dit_forward(
    transformer: nn.Module,
    cache: KeyValueCache,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    global_hidden_states: torch.Tensor,
    rotary_embedding: tuple[torch.Tensor, torch.Tensor],
    frames: torch.Tensor | None = None,
) -> torch.Tensor:
    """The DiT's forward with a key/value cache installed; optionally on a subset of frames.

    hidden_states [B, C, T] latent frames; rotary_embedding for T + 1 tokens (the global token
    first). frames=None: a dense pass that refills the cache, returns [B, C_out, T]. frames [n]
    (sorted latent-frame indices): a sparse pass on those frames only, returns [B, C_out, n].
    """
    x, (cos, sin) = hidden_states, rotary_embedding
    if frames is None:
        cache.active = None
    else:
        tokens = torch.cat([frames.new_zeros(1), frames + 1])  # the global token is always active
        cache.active = tokens
        x, cos, sin = hidden_states.index_select(2, frames), cos[tokens], sin[tokens]
    try:
        return transformer(x, timestep, encoder_hidden_states=encoder_hidden_states,
                           global_hidden_states=global_hidden_states, rotary_embedding=(cos, sin),
                           return_dict=False)[0]
    finally:
        cache.active = None
