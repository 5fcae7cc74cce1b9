"""One generation on several processes (WP4), on torch.distributed.

- `patch_parallel`: displaced patch parallelism for a Stable Audio DiT (the latent frames split
  across the ranks; keys and values exchanged exactly or one denoising step stale, as DistriFusion
  does), as attention processors and hooks on the stock transformer.
"""

from .patch_parallel import MODES, PatchParallelAttnProcessor, PatchParallelRun, frame_slices, patch_parallel

__all__ = ["MODES", "PatchParallelAttnProcessor", "PatchParallelRun", "frame_slices", "patch_parallel"]
