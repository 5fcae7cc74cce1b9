"""Displaced patch parallelism for a Stable Audio DiT: one generation on several processes.

DistriFusion (Li et al., CVPR 2024) splits an image's tokens across devices; here the latent
frames of a track are split into contiguous slices, one per rank of a `torch.distributed` group
(gloo on CPUs, NCCL on GPUs, launched by torchrun). Each rank runs the stock transformer on its own
slice (plus the global conditioning token every rank holds): the per-token layers (projections,
norms, feed-forward, cross-attention to the text, the 1x1 convolutions) need nothing from the other
ranks, and self-attention needs every frame's keys and values.

- `mode="exact"`: every self-attention all-gathers this step's keys and values before attending,
  so the output equals the single-process output up to float rounding.
- `mode="stale"`: after `warmup_steps` exact steps, a rank attends to its own fresh keys and
  values and the other ranks' from the previous denoising step, which an asynchronous all-gather,
  started right after they are computed, delivers while the rest of the network runs.
  Neighbouring denoising steps' activations are close, which is what the method bets on.

After each step the ranks all-gather the transformer's output slices, so the scheduler sees the
whole latent on every rank, exactly as without parallelism.

    import torch.distributed as dist
    dist.init_process_group("gloo")                      # torchrun sets rank and world size
    with patch_parallel(pipe.transformer, mode="stale", warmup_steps=2) as run:
        audio = pipe(prompt, num_inference_steps=25).audios
    run.bytes_received                                   # keys and values that came over the wire

The patch is an attention processor on each block's `attn1` (installed through
`set_attn_processor` and restored on exit, so it stacks with other patches), a pre-hook on
`proj_in` that cuts the frames, and a pre-hook and hook on the transformer that note the step,
cut the rotary table and gather the output: the transformer class and the pipeline's loop stay
the stock ones. The frames are cut at `proj_in`, not at the transformer's input, so that pre-hooks
other patches put on the transformer (the musical-control adapter adds a residual to the whole
latent) see the whole latent whatever order they were registered in; the 1x1 convolution before
`proj_in` is per frame, so cutting after it changes nothing. A new generation is recognised by its timestep
(the pipeline's DPM-Solver timesteps strictly fall within one), which resets the stale keys and
values. A sampler that calls the model twice at one timestep (Heun's) is not supported: its second
call would be taken for a new generation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..attention.processors import install_attn_processors, is_self_attention, restore_attn_processors
from ..attention.projections import attention_output, self_attention_inputs
from .cost_model import PREFIX_TOKENS  # the DiT's global token (timing, conditioning, timestep) before the frames

MODES = ("exact", "stale")


def frame_slices(frames: int, world_size: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) slices of `frames` latent frames, one per rank, sizes differing by
    at most one frame (the first ranks take the extra frames)."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: at least one rank")
    if frames < world_size:
        raise ValueError(f"{frames} latent frames cannot be split across {world_size} ranks: "
                         "use fewer ranks or a longer track")
    base, extra = divmod(frames, world_size)
    bounds, start = [], 0
    for r in range(world_size):
        end = start + base + (r < extra)
        bounds.append((start, end))
        start = end
    return bounds


@dataclass
class PatchParallelRun:
    """What one `patch_parallel` patch shares between its hooks and processors, and what it counted."""

    mode: str
    warmup_steps: int
    group: object | None
    rank: int
    world_size: int
    step: int = -1                      # denoising step of the current generation (0 = first)
    last_timestep: float | None = None
    slices: list[tuple[int, int]] = field(default_factory=list)
    bytes_received: int = 0             # keys and values received from the other ranks
    exact_exchanges: int = 0            # self-attention calls that waited for this step's keys and values
    stale_exchanges: int = 0            # calls that used the previous step's

    @property
    def synchronous(self) -> bool:
        return self.mode == "exact" or self.step < self.warmup_steps

    def new_step(self, timestep: torch.Tensor) -> None:
        t = float(timestep.flatten()[0])
        # timesteps fall within one generation: one that does not fall starts the next generation
        self.step = 0 if self.last_timestep is None or t >= self.last_timestep else self.step + 1
        self.last_timestep = t


class PatchParallelAttnProcessor:
    """A DiT self-attention whose queries are this rank's tokens and whose keys and values are
    every rank's; `StableAudioAttnProcessor2_0`'s call signature."""

    def __init__(self, run: PatchParallelRun):
        self.run = run
        self.previous: list[torch.Tensor] | None = None   # every rank's [2, B, kv_heads, frames, head_dim] of the last step
        self.pending: tuple[object, list[torch.Tensor]] | None = None

    def __repr__(self) -> str:
        return f"PatchParallelAttnProcessor(mode={self.run.mode!r}, rank={self.run.rank}/{self.run.world_size})"

    def _gather(self, local: torch.Tensor, async_op: bool):
        parts = [torch.empty_like(local) for _ in range(self.run.world_size)]
        handle = dist.all_gather(parts, local.contiguous(), group=self.run.group, async_op=async_op)
        self.run.bytes_received += local.numel() * local.element_size() * (self.run.world_size - 1)
        return handle, parts

    def finish(self) -> None:
        """Wait for an exchange still in flight (at the end of a generation or of the patch)."""
        if self.pending is not None:
            self.pending[0].wait()
            self.previous, self.pending = self.pending[1], None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb=None) -> torch.Tensor:
        """hidden_states [B, 1 + local frames, width] -> [B, 1 + local frames, width]."""
        if encoder_hidden_states is not None:
            raise ValueError("patch parallelism replaces the self-attention (attn1) only; the cross-attention keeps "
                             "its own processor (patch_parallel installs it so)")
        if attention_mask is not None:
            raise ValueError("patch parallelism takes no self-attention mask: the Stable Audio pipeline passes none")
        run = self.run
        query, key, value = self_attention_inputs(attn, hidden_states, rotary_emb)
        own = torch.stack([key[:, :, PREFIX_TOKENS:], value[:, :, PREFIX_TOKENS:]])  # [2, B, kv_heads, frames, head_dim]
        longest = max(e - s for s, e in run.slices)
        padded = F.pad(own, (0, 0, 0, longest - own.shape[3]))  # all_gather needs equal sizes
        if run.step == 0:
            self.finish()
            self.previous = None
        if run.synchronous or self.previous is None:
            _, parts = self._gather(padded, async_op=False)
            run.exact_exchanges += 1
            if run.mode == "stale":
                self.previous = parts
        else:
            self.finish()
            parts = list(self.previous)
            parts[run.rank] = padded
            run.stale_exchanges += 1
            self.pending = self._gather(padded, async_op=True)  # used at the next step
        frames = [p[:, :, :, : e - s] for p, (s, e) in zip(parts, run.slices)]
        keys = torch.cat([key[:, :, :PREFIX_TOKENS]] + [f[0] for f in frames], dim=2)
        values = torch.cat([value[:, :, :PREFIX_TOKENS]] + [f[1] for f in frames], dim=2)
        if keys.shape[1] != query.shape[1]:  # grouped-query attention: share each key head
            keys = keys.repeat_interleave(query.shape[1] // keys.shape[1], dim=1)
            values = values.repeat_interleave(query.shape[1] // values.shape[1], dim=1)
        out = F.scaled_dot_product_attention(query, keys.to(query.dtype), values.to(query.dtype))
        return attention_output(attn, out, residual=hidden_states)


def _local_rotary(rotary, start: int, end: int):
    """The rotary table's rows of the global token and of frames [start, end) (tables have a row
    per position, the global token first)."""
    if rotary is None:
        return None
    rows = torch.cat([torch.arange(PREFIX_TOKENS), torch.arange(PREFIX_TOKENS + start, PREFIX_TOKENS + end)])
    return tuple(table[rows.to(table.device)] for table in rotary)


@contextmanager
def patch_parallel(transformer: nn.Module, mode: str = "exact", warmup_steps: int = 1,
                   group=None) -> Iterator[PatchParallelRun]:
    """Run `transformer` (a diffusers StableAudioDiTModel) patch-parallel across the ranks of
    `group` (default: the world) for the body of the `with`; every rank enters it and runs the same
    pipeline call with the same inputs. Yields the run's counters. Restores the processors and
    removes the hooks on exit, also on errors."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose one of {MODES}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps={warmup_steps}: zero or more exact steps before the stale exchange")
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: launch with torchrun and call "
                           "dist.init_process_group('gloo') (CPU) or ('nccl') (GPU) first")
    if not hasattr(transformer, "transformer_blocks") or not hasattr(transformer, "set_attn_processor"):
        raise TypeError(f"{type(transformer).__name__} is not a Stable Audio DiT: pass pipe.transformer")
    run = PatchParallelRun(mode=mode, warmup_steps=warmup_steps, group=group,
                           rank=dist.get_rank(group), world_size=dist.get_world_size(group))
    processors: list[PatchParallelAttnProcessor] = []

    def make(name, old):
        if not is_self_attention(name):
            return old
        processors.append(PatchParallelAttnProcessor(run))
        return processors[-1]

    def start_step(module, args, kwargs):
        args, kwargs = list(args), dict(kwargs)
        hidden = args[0] if args else kwargs["hidden_states"]
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        if hidden.dim() != 3:
            raise ValueError(f"hidden_states {tuple(hidden.shape)}: the DiT takes latents [batch, channels, frames]")
        if kwargs.get("attention_mask") is not None:
            raise ValueError("patch parallelism takes no attention_mask: the Stable Audio pipeline passes none")
        run.slices = frame_slices(hidden.shape[-1], run.world_size)
        start, end = run.slices[run.rank]
        run.new_step(timestep)
        if run.step == 0:
            for p in processors:
                p.finish()
        if "rotary_embedding" in kwargs:
            kwargs["rotary_embedding"] = _local_rotary(kwargs["rotary_embedding"], start, end)
        elif len(args) > 4:
            args[4] = _local_rotary(args[4], start, end)
        return tuple(args), kwargs

    def cut_frames(module, args):
        frames = args[0]  # [B, frames, channels]: the latent after the per-frame 1x1 convolution
        if frames.shape[1] != run.slices[-1][1]:
            raise RuntimeError(f"proj_in got {frames.shape[1]} frames, the transformer {run.slices[-1][1]}: "
                               "patch_parallel needs the stock StableAudioDiTModel.forward")
        start, end = run.slices[run.rank]
        return (frames[:, start:end], *args[1:])

    def gather_output(module, args, kwargs, output):
        sample = output[0] if isinstance(output, tuple) else output.sample
        longest = max(e - s for s, e in run.slices)
        padded = F.pad(sample, (0, longest - sample.shape[-1])).contiguous()
        parts = [torch.empty_like(padded) for _ in range(run.world_size)]
        dist.all_gather(parts, padded, group=run.group)
        whole = torch.cat([p[..., : e - s] for p, (s, e) in zip(parts, run.slices)], dim=-1)
        if isinstance(output, tuple):
            return (whole,) + tuple(output[1:])
        output.sample = whole
        return output

    saved = install_attn_processors(transformer, make)
    hooks = [transformer.register_forward_pre_hook(start_step, with_kwargs=True),
             transformer.proj_in.register_forward_pre_hook(cut_frames),
             transformer.register_forward_hook(gather_output, with_kwargs=True)]
    try:
        yield run
    finally:
        for h in hooks:
            h.remove()
        for p in processors:
            p.finish()
        restore_attn_processors(transformer, saved)
