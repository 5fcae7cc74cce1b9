"""WP2 SIGE-Audio: editing that recomputes only what an edit touches.

- `decoder`: the Oobleck decoder's reach from its convolutions; windowed and cached (SIGE-style)
  sparse re-decoding, exact to float rounding.
- `dit`: sparse DiT steps: the edited tokens only, attending to cached keys/values of the rest
  (the cache is `accelerando.attention.KeyValueCache`).
- `session`: `EditSession(pipe)`: generate, edit a region (RePaint-style inpainting on the
  cached trajectory, dense or sparse), undo.

Token-model edits from a stored prefix are `accelerando.editing.prefix_tree`.
"""

from .decoder import CachedDecoder, decode_window, decoder_segments, measured_reach, receptive_field
from .dit import dit_forward
from .session import EditSession

__all__ = ["CachedDecoder", "EditSession", "decode_window", "decoder_segments", "dit_forward", "measured_reach",
           "receptive_field"]
