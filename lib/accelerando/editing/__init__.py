"""Editing generated music by regenerating only part of it.

- `prefix_tree`: `PrefixTree(model, text_ids)` (transformers MusicGen) or
  `PrefixTree.for_musicgen_lite(model, text_states, text_mask)`: edits of autoregressive token
  models that keep the cached prefix, with alternative continuations sharing it.

Diffusion-model edits (region inpainting with sparse DiT steps) are `accelerando.sparse`.
"""

from .prefix_tree import Branch, MusicgenAdapter, MusicGenLiteAdapter, PrefixTree

__all__ = ["Branch", "MusicGenLiteAdapter", "MusicgenAdapter", "PrefixTree"]
