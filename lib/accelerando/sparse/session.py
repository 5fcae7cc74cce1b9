"""Editing sessions over a Stable Audio pipeline: regenerate a region, keep the rest, pay for the region.

    session = EditSession(pipe)                                   # Lite or full-size StableAudioPipeline
    audio = session.generate("a chorale in D major for brass", seconds=10, seed=0)
    audio = session.edit(4.0, 5.0, prompt="a snare fill", seed=1) # regenerate 4..5 s, keep the rest
    audio = session.undo()

`generate` runs `StableAudioPipeline.__call__`'s denoising loop (tests check it gives the same
audio) and keeps what an edit reuses: the latents after every step (the trajectory), optionally
every step's self-attention keys/values, and the decoder's block-boundary maps.

`edit` is RePaint-style inpainting on the cached trajectory: at every step the frames outside
[start, end) are reset to the original trajectory's latents at that noise level, so only the
region is regenerated and it is denoised in the context of the rest. `strength` < 1 starts from
the original's noised latents at a later step (SDEdit) instead of fresh noise. Two ways to run a
step (`mode`):

    dense    the stock transformer over every frame (the reference)
    sparse   only the region's frames plus `margin` frames each side, attending to cached keys and
             values of the rest (`accelerando.sparse.dit`): from the generation's record of the
             same step (refresh_every=0), or from a dense pass every `refresh_every` steps, or
             (kv_correction=True) from the record corrected by the last dense pass:
             record(i) + dense(j) - record(j)

and the waveform is re-decoded only where the changed latents reach (`CachedDecoder.update`), so
the audio outside the decoder's reach is bit-identical to before. `last_edit` reports where the
time went. Units: seconds for regions, latent frames for `margin`.

Why the correction: outside the region a token's input at step i is the original trajectory's,
so its keys/values differ from the record's only through what it attends to, the edit. A dense
pass at step j measures that difference; carrying it to later steps keeps both the noise level
of step i (from the record) and the sight of the edit (from step j), where a plain refresh keeps
step j's noise level for every step until the next one.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ..attention import KeyValueCache
from ..models.stable_audio_conditioning import check_prompts_fit, check_seconds, pipeline_conditioning, rotary
from .decoder import CachedDecoder
from .dit import dit_forward

MODES = ("sparse", "dense")


@dataclass
class Take:
    """One state of the track: its conditioning, latent trajectory and (optional) K/V record."""

    prompts: list[str]
    seed: int
    trajectory: list[torch.Tensor]  # steps + 1 latents [B, C, T]: the start, then after each step
    kv: list | None  # per step: (keys, values) per layer for the CFG batch, or None
    meta: dict = field(default_factory=dict)


class EditSession:
    """Generate a track, then edit regions of it, recomputing only what each edit touches."""

    def __init__(self, pipe, steps: int = 50, guidance_scale: float = 6.0, keep_kv: bool = True,
                 record_dtype: torch.dtype | None = None):
        """steps / guidance_scale: for the generation and every edit (an edit reuses the
        trajectory step by step). keep_kv: record every step's self-attention keys/values at
        generation (what sparse edits with refresh_every=0 or kv_correction attend to; ~3.5 MB per
        step for the Lite model, ~600 MB per step for the full-size one at 47 s in fp32, where
        refresh_every >= 1 without correction is the memory-light choice). record_dtype: store the
        record in this dtype (torch.bfloat16 halves it); it is cast back when read."""
        if int(steps) < 1:
            raise ValueError(f"steps={steps}: use at least 1 denoising step")
        if record_dtype is not None and not (isinstance(record_dtype, torch.dtype) and record_dtype.is_floating_point):
            raise ValueError(f"record_dtype={record_dtype!r}: use a floating torch dtype such as torch.bfloat16, or None")
        self.pipe, self.steps, self.guidance_scale, self.keep_kv = pipe, int(steps), float(guidance_scale), keep_kv
        self.record_dtype = record_dtype
        self.decoder = CachedDecoder(pipe.vae)
        self.takes: list[Take] = []
        self.seconds: float | None = None
        self.last_edit: dict = {}
        self._fingerprint: str | None = None

    # -- public ---------------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return int(self.pipe.vae.config.sampling_rate)

    @property
    def frame_seconds(self) -> float:
        return self.pipe.vae.hop_length / self.sample_rate

    @torch.no_grad()
    def generate(self, prompt: str | list[str], seconds: float, seed: int = 0) -> np.ndarray:
        """Text to audio as `StableAudioPipeline.__call__` makes it, keeping what edits reuse.

        Returns audio [batch, channels, int(seconds x sample_rate)] float32."""
        prompts = check_prompts_fit(self.pipe, prompt)
        self.seconds = check_seconds(self.pipe, seconds)
        self._fingerprint = self._pipeline_fingerprint()
        self.takes = []
        generator = torch.Generator("cpu").manual_seed(int(seed))
        cond = self._conditioning(prompts)
        frames = self.pipe.transformer.config.sample_size
        shape = (len(prompts), self.pipe.transformer.config.in_channels, frames)
        start = torch.randn(shape, generator=generator, dtype=cond["enc"].dtype) * self._init_sigma()
        trajectory, kv = self._denoise(start, cond, generator, begin=0, region=None, mode="dense",
                                       margin=0, refresh_every=1, record_kv=self.keep_kv)
        self.takes.append(Take(prompts, int(seed), trajectory, kv))
        audio = self.decoder.decode(trajectory[-1])
        return self._crop(audio)

    @torch.no_grad()
    def edit(self, start_s: float, end_s: float, prompt: str | list[str] | None = None, strength: float = 1.0,
             seed: int | None = None, mode: str = "sparse", margin: int = 8, refresh_every: int = 0,
             kv_correction: bool = False) -> np.ndarray:
        """Regenerate [start_s, end_s) seconds, holding the rest; returns the new track's audio.

        prompt: the region's new prompt (default: the track's). strength in (0, 1]: 1 regenerates
        the region from fresh noise, less starts from the current audio noised to that level.
        seed: the edit's noise (default: the track's seed + number of takes). mode: "sparse" or
        "dense" (see module doc); margin: frames computed fresh on each side of the region in
        sparse mode; refresh_every: 0 attends to the generation's recorded keys/values, k >= 1
        runs every k-th step densely and reuses its keys/values in between; kv_correction (with
        k >= 1 and a record): in between, the record of the step plus the last dense pass's
        difference from the record of its step.
        """
        take = self._current()
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: use one of {MODES}")
        if not 0 < strength <= 1:
            raise ValueError(f"strength={strength}: use 0 < strength <= 1 (1 regenerates the region from noise)")
        if int(margin) < 0 or int(refresh_every) < 0:
            raise ValueError(f"margin={margin}, refresh_every={refresh_every}: both must be >= 0")
        if mode == "sparse" and (refresh_every == 0 or kv_correction) and take.kv is None:
            raise ValueError("refresh_every=0 and kv_correction read the generation's recorded keys/values, and this "
                             "session did not record them: use EditSession(pipe, keep_kv=True) or refresh_every >= 1")
        if kv_correction and refresh_every == 0:
            raise ValueError("kv_correction carries a dense pass's difference to later steps: give refresh_every >= 1")
        if self._pipeline_fingerprint() != self._fingerprint:
            raise RuntimeError("the pipeline's models or configs changed since this track was generated; its cached "
                               "trajectory no longer belongs to them: call generate() again")
        region = self.frames_of(start_s, end_s)
        prompts = check_prompts_fit(self.pipe, take.prompts if prompt is None else prompt)
        if len(prompts) != len(take.prompts):
            raise ValueError(f"{len(prompts)} prompts for a batch of {len(take.prompts)} tracks: give one per track")
        seed = take.seed + len(self.takes) if seed is None else int(seed)
        generator = torch.Generator("cpu").manual_seed(seed)
        begin = min(self.steps - 1, round((1 - strength) * self.steps))
        x = take.trajectory[begin].clone()
        if begin == 0:  # the region starts from fresh noise
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype) * self._init_sigma()
            x[..., region[0]:region[1]] = noise[..., region[0]:region[1]]
        t0 = time.perf_counter()
        trajectory, kv = self._denoise(x, self._conditioning(prompts), generator, begin=begin, region=region,
                                       mode=mode, margin=int(margin), refresh_every=int(refresh_every),
                                       record_kv=take.kv is not None, base=take, correct=bool(kv_correction))
        t1 = time.perf_counter()
        audio = self.decoder.update(trajectory[-1])
        t2 = time.perf_counter()
        self.takes.append(Take(prompts, seed, take.trajectory[:begin] + trajectory, kv,
                               meta={"region_frames": region, "mode": mode}))
        self.last_edit |= {"region_frames": region, "region_fraction": (region[1] - region[0]) / x.shape[-1],
                           "begin_step": begin, "denoise_s": t1 - t0, "decode_s": t2 - t1,
                           "decoded_fraction": self.decoder.last_update["fraction"]["conv2"]}
        return self._crop(audio)

    def undo(self) -> np.ndarray:
        """Back to the take before the last edit: its audio bit for bit (the decoder restores the
        tiles the edit overwrote)."""
        if len(self.takes) < 2:
            raise RuntimeError("nothing to undo: no edit since generate()")
        self.takes.pop()
        return self._crop(self.decoder.undo())

    @property
    def latents(self) -> torch.Tensor:
        return self._current().trajectory[-1]

    def frames_of(self, start_s: float, end_s: float) -> tuple[int, int]:
        """Latent frames [a, b) covering [start_s, end_s) seconds of the track, with clear errors."""
        if self.seconds is None:
            raise RuntimeError("nothing to edit yet: call generate() first")
        if not (math.isfinite(start_s) and math.isfinite(end_s)):
            raise ValueError(f"region [{start_s}, {end_s}) s is not finite")
        if end_s <= start_s:
            raise ValueError(f"region [{start_s}, {end_s}) s is empty or reversed: give start < end")
        if start_s < 0 or end_s > self.seconds + 1e-9:
            raise ValueError(f"region [{start_s}, {end_s}) s is outside the track [0, {self.seconds}] s")
        if end_s - start_s < self.frame_seconds:
            raise ValueError(f"region of {end_s - start_s:.4f} s is shorter than one latent frame "
                             f"({self.frame_seconds:.4f} s): edit at least one frame")
        a = int(math.floor(start_s / self.frame_seconds + 1e-9))
        b = int(math.ceil(end_s / self.frame_seconds - 1e-9))
        return a, min(b, self.pipe.transformer.config.sample_size)

    # -- the denoising loop ---------------------------------------------------------------------

    def _denoise(self, x, cond, generator, *, begin, region, mode, margin, refresh_every, record_kv, base=None,
                 correct=False):
        """Steps begin..steps-1 from latents x; returns (trajectory from step `begin`, K/V record)."""
        # Adapted from diffusers.pipelines.stable_audio.pipeline_stable_audio.StableAudioPipeline.__call__
        # (diffusers 0.42.1), its denoising loop (step 7): that loop starts at step 0 and calls the
        # transformer on every frame, and its only hook, `callback(step, t, latents)`, runs after the
        # scheduler step with no say over the transformer's call; an edit starts at step `begin`
        # (SDEdit), runs some steps on the active frames only, and resets the frames outside the
        # region after each step (RePaint). The scheduler calls, CFG and rotary table are the pipeline's.
        pipe, tr = self.pipe, self.pipe.transformer
        sched = pipe.scheduler
        sched.set_timesteps(self.steps, device=x.device)
        sched.set_begin_index(begin)
        extra = pipe.prepare_extra_step_kwargs(generator, 0.0)
        frames = x.shape[-1]
        rotary_table = rotary(pipe, frames)
        active = None
        if region is not None:
            active = torch.arange(max(region[0] - margin, 0), min(region[1] + margin, frames))
        cache = KeyValueCache.install(tr)
        # steps before `begin` are the base take's, and so are their keys/values
        trajectory, record = [x.clone()], (list(base.kv[:begin]) if base is not None else [None] * begin) if record_kv else None
        delta = None  # per layer: last dense pass's keys/values minus the record's at its step
        times = {"dense_steps": 0, "sparse_steps": 0, "dense_s": 0.0, "sparse_s": 0.0, "dense_step_s": [],
                 "sparse_step_s": []}
        try:
            for i in range(begin, self.steps):
                t = sched.timesteps[i]
                inp = torch.cat([x] * 2) if self._cfg else x
                inp = sched.scale_model_input(inp, t)
                dense = mode == "dense" or (refresh_every > 0 and (i - begin) % refresh_every == 0)
                start = time.perf_counter()
                if dense:
                    out = dit_forward(tr, cache, inp, t.unsqueeze(0), cond["enc"], cond["glob"], rotary_table)
                    if correct and mode == "sparse":
                        keys, values = self._recorded(base, i)
                        delta = ([k - r for k, r in zip(cache.keys, keys)], [v - r for v, r in zip(cache.values, values)])
                else:
                    if refresh_every == 0:
                        cache.load(self._recorded(base, i))
                    elif correct:
                        keys, values = self._recorded(base, i)
                        cache.load(([r + d for r, d in zip(keys, delta[0])], [r + d for r, d in zip(values, delta[1])]))
                    out = torch.zeros_like(inp)
                    out[..., active] = dit_forward(tr, cache, inp, t.unsqueeze(0), cond["enc"], cond["glob"],
                                                   rotary_table, frames=active)
                kind = "dense" if dense else "sparse"
                times[f"{kind}_steps"] += 1
                times[f"{kind}_s"] += time.perf_counter() - start
                times[f"{kind}_step_s"].append(time.perf_counter() - start)
                if record is not None:
                    record.append(self._to_record(cache.snapshot()))
                if self._cfg:
                    uncond, text = out.chunk(2)
                    out = uncond + self.guidance_scale * (text - uncond)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Should have", module="torchsde")
                    x = sched.step(out, t, x, **extra).prev_sample
                if region is not None:  # RePaint: outside the region the track is what it was
                    held = base.trajectory[i + 1]
                    x = torch.cat([held[..., :region[0]], x[..., region[0]:region[1]], held[..., region[1]:]], dim=-1)
                trajectory.append(x.clone())
        finally:
            cache.remove(tr)
        self.last_edit = times | {"active_frames": None if active is None else len(active)}
        return trajectory, record

    # -- helpers --------------------------------------------------------------------------------

    def _to_record(self, snapshot):
        if self.record_dtype is None:
            return snapshot
        return tuple([t.to(self.record_dtype) for t in part] for part in snapshot)

    def _recorded(self, take: Take, step: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The take's recorded keys/values of `step`, in the transformer's dtype."""
        if take.kv is None or step >= len(take.kv) or take.kv[step] is None:
            raise RuntimeError(f"no recorded keys/values for step {step}: generate with keep_kv=True")
        dtype = self.pipe.transformer.dtype
        keys, values = take.kv[step]
        return [k.to(dtype) for k in keys], [v.to(dtype) for v in values]

    @property
    def _cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def _init_sigma(self) -> float:
        self.pipe.scheduler.set_timesteps(self.steps)
        return float(self.pipe.scheduler.init_noise_sigma)

    def _conditioning(self, prompts: list[str]) -> dict:
        """Cross-attention and global states exactly as `StableAudioPipeline.__call__` builds them
        (negative = zeros, first in the CFG batch)."""
        enc, glob = pipeline_conditioning(self.pipe, prompts, self.seconds, self._cfg)
        return {"enc": enc, "glob": glob}

    def _pipeline_fingerprint(self) -> str:
        parts = {name: (type(m).__name__, dict(getattr(m, "config", {})), sum(p.numel() for p in m.parameters()),
                        [str(p.dtype) for p in list(m.parameters())[:1]])
                 for name, m in (("transformer", self.pipe.transformer), ("vae", self.pipe.vae),
                                 ("projection", self.pipe.projection_model))}
        parts["scheduler"] = dict(self.pipe.scheduler.config)
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def _current(self) -> Take:
        if not self.takes:
            raise RuntimeError("nothing to edit yet: call generate() first")
        return self.takes[-1]

    def _crop(self, audio: torch.Tensor) -> np.ndarray:
        return audio[..., : int(self.seconds * self.sample_rate)].float().cpu().numpy()
