"""Attention processors for diffusers models: where attention techniques plug in.

- `processors`: `install_attn_processors(model, make)` / `restore_attn_processors(model, saved)`
  and the `attention_patch(model, make)` context manager: set processors through the model's
  `set_attn_processor` and restore exactly the ones that were there, so patches stack.
- `key_value_cache`: `KeyValueCache`, the self-attention key/value cache of a Stable Audio DiT
  that sparse editing (`accelerando.sparse.dit`) attends to.
"""

from .key_value_cache import KeyValueCache, KeyValueCacheProcessor, key_value_cache
from .processors import attention_patch, install_attn_processors, is_self_attention, restore_attn_processors

__all__ = ["KeyValueCache", "KeyValueCacheProcessor", "attention_patch", "install_attn_processors",
           "is_self_attention", "key_value_cache", "restore_attn_processors"]
