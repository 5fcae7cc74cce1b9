"""One generation on several processes (WP4), on torch.distributed.

- `patch_parallel`: displaced patch parallelism for a Stable Audio DiT (the latent frames split
  across the ranks; keys and values exchanged exactly or one denoising step stale, as DistriFusion
  does), as attention processors and hooks on the stock transformer.
- `cost_model`: FLOPs and exchanged bytes of a patch-parallel step from the DiT's config, and the
  step time they predict on a device (measured here, or a labelled datasheet peak) and a link.
"""

from .cost_model import (PUBLISHED_DEVICES, PUBLISHED_LINKS, Device, Link, StepCost, dit_step_flops, exchanged_bytes,
                         measure_link, patch_parallel_cost)
from .patch_parallel import MODES, PatchParallelAttnProcessor, PatchParallelRun, frame_slices, patch_parallel

__all__ = ["PUBLISHED_DEVICES", "PUBLISHED_LINKS", "Device", "Link", "StepCost", "dit_step_flops", "exchanged_bytes",
           "measure_link", "patch_parallel_cost", "MODES", "PatchParallelAttnProcessor", "PatchParallelRun", "frame_slices", "patch_parallel"]
