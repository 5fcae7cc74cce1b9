"""WP2 SIGE-Audio: editing that recomputes only what an edit touches.

- `decoder`: the Oobleck decoder's reach from its convolutions; windowed and cached (SIGE-style)
  sparse re-decoding, exact to float rounding.
- `dit`: sparse DiT steps: the edited tokens only, attending to cached keys/values of the rest.
- `session`: `EditSession(pipe)`: generate, edit a region (RePaint-style inpainting on the
  cached trajectory, dense or sparse), undo.
- `prefix`: `PrefixTree(model, text_ids)` (transformers MusicGen) or
  `PrefixTree.for_musicgen_lite(model, text_states, text_mask)`: token-model edits that keep the
  cached prefix, with alternative continuations sharing it.
"""

from .decoder import CachedDecoder, decode_window, decoder_segments, measured_reach, receptive_field
from .dit import KVCacheAttention, dit_forward
from .prefix import Branch, MusicgenAdapter, MusicGenLiteAdapter, PrefixTree
from .session import EditSession

__all__ = ["Branch", "MusicGenLiteAdapter", "MusicgenAdapter", "PrefixTree", "CachedDecoder", "EditSession", "KVCacheAttention", "decode_window", "decoder_segments", "dit_forward",
           "measured_reach", "receptive_field"]
