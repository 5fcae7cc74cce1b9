"""Patch-parallel DiT steps against one process: step time, speed-up, bytes exchanged, deviation.

Run under torchrun, every rank the same command:

    torchrun --nproc-per-node 2 -m accelerando.bench distributed --seconds 10 47 120 --json

One denoising step of a Stable Audio DiT (published config, random weights, the same on every
rank; the classifier-free-guidance batch of two) on a track of each length: one process alone
(rank 0 computes, the others wait at a barrier, so "one device" has the same threads as each rank
of the parallel run), then all ranks patch-parallel in the exact and the stale mode
(`accelerando.distributed.patch_parallel`), interleaved over `rounds`. A parallel step's time is
the slowest rank's. The stale mode is timed after its warm-up steps, so its exchange overlaps
compute as it does in a generation. Deviation: the largest absolute difference of each mode's
output from the single process's, on the same inputs and timestep (the stale mode's keys and values
of the other ranks come from the warm-up step, one timestep earlier, on the same latent).
Prediction: the cost model (`accelerando.distributed.cost_model`) with this CPU's rate calibrated on
the first length's one-process step and the link measured by timed all-gathers; every other
point is a prediction checked against its measurement ("predicted_over_measured").

`quality_rows` reads the stale mode where it matters, in whole generations of the trained
Stable-Audio-Lite: each variant's decoded audio against the one-process audio of the same prompt and
noise, beside two scales to read it against (the exact mode: float rounding; one process from other
noise: a different piece of music for the same prompt).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from ..distributed import Device, dit_step_flops, measure_link, patch_parallel, patch_parallel_cost
from .quant import fidelity_scores
from ..machine import cpu_model
from ..models.stable_audio import TRANSFORMER_CONFIGS
from .radial import fair_dtype

FRAME_RATE = 44100 / 2048  # Stable Audio Open's latent frames per second
TEXT_TOKENS = 64           # T5 tokens of a prompt, as the pipeline pads them


def _inputs(config: dict, frames: int, dtype: torch.dtype, seed: int) -> dict:
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    g = torch.Generator().manual_seed(seed)
    batch = 2  # conditional and unconditional rows of classifier-free guidance
    return {
        "hidden_states": torch.randn(batch, config["in_channels"], frames, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(batch, TEXT_TOKENS, config["cross_attention_input_dim"], generator=g).to(dtype),
        "global_hidden_states": torch.randn(batch, 1, config["global_states_input_dim"], generator=g).to(dtype),
        "rotary_embedding": get_1d_rotary_pos_embed(config["attention_head_dim"] // 2, frames + 1, use_real=True,
                                                    repeat_interleave_real=False),
    }


def _step(transformer, inputs: dict, timestep: float) -> torch.Tensor:
    t = torch.tensor([timestep], dtype=inputs["hidden_states"].dtype)
    with torch.inference_mode():
        return transformer(inputs["hidden_states"], t, encoder_hidden_states=inputs["encoder_hidden_states"],
                           global_hidden_states=inputs["global_hidden_states"],
                           rotary_embedding=inputs["rotary_embedding"], return_dict=False)[0]


def _slowest(seconds: float) -> float:
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def step_rows(seconds: list[float], preset: str = "full", modes: tuple[str, ...] = ("exact", "stale"), *,
              rounds: int = 3, warmup_steps: int = 1, dtype: torch.dtype | None = None, seed: int = 0) -> list[dict]:
    """Per track length: one process and each patch-parallel mode, interleaved over `rounds`; a row
    per (seconds, variant) with min and median step time, speed-up against one process (median of
    the per-round ratios), bytes received per step per rank and the deviation from one process."""
    from diffusers import StableAudioDiTModel

    if not dist.is_initialized():
        raise RuntimeError("run under torchrun: torchrun --nproc-per-node 2 -m accelerando.bench distributed ...")
    if rounds < 3:
        raise ValueError(f"rounds={rounds}: a ratio needs at least 3 interleaved rounds")
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = dtype or fair_dtype()
    config = TRANSFORMER_CONFIGS[preset]
    torch.manual_seed(seed)  # the same random weights on every rank
    transformer = StableAudioDiTModel(**config).to(dtype).eval()
    link = measure_link(f"gloo, {world} ranks on this machine")
    element = torch.tensor([], dtype=dtype).element_size()
    device, rows = None, []
    for s in seconds:
        frames = int(round(s * FRAME_RATE))
        inputs = _inputs(config, frames, dtype, seed)
        times: dict[str, list[float]] = {"one process": [], **{m: [] for m in modes}}
        outputs, received = {}, {}
        for _ in range(rounds):
            dist.barrier()
            start = time.perf_counter()
            if rank == 0:
                outputs["one process"] = _step(transformer, inputs, 999.0)
            elapsed = time.perf_counter() - start
            dist.barrier()
            times["one process"].append(_slowest(elapsed if rank == 0 else 0.0))
            for mode in modes:
                with patch_parallel(transformer, mode=mode, warmup_steps=warmup_steps) as run:
                    for step in range(warmup_steps if mode == "stale" else 0):  # fill the stale keys and values,
                        _step(transformer, inputs, 999.0 + warmup_steps - step)  # at earlier (higher) timesteps
                    before = run.bytes_received
                    dist.barrier()
                    start = time.perf_counter()
                    outputs[mode] = _step(transformer, inputs, 999.0)  # the timestep one process ran
                    times[mode].append(_slowest(time.perf_counter() - start))
                    received[mode] = run.bytes_received - before
        reference = outputs.get("one process") if rank == 0 else None
        if device is None:  # calibrated once, on the first length: the others are predictions
            device = Device.calibrated(f"{cpu_model()}, {torch.get_num_threads()} thread(s), {dtype}",
                                       dit_step_flops(config, frames), statistics.median(times["one process"]))
        for variant, series in times.items():
            row = {"component": "patch_parallel_step", "seconds": s, "frames": frames, "variant": variant,
                   "ranks": 1 if variant == "one process" else world, "preset": preset,
                   "dtype": str(dtype).replace("torch.", ""), "threads_per_rank": torch.get_num_threads(),
                   "step_s_min": min(series), "step_s_median": statistics.median(series), "rounds": rounds,
                   "cpu": cpu_model()}
            cost = patch_parallel_cost(config, frames, world, device, link, mode=variant if variant in ("exact", "stale")
                                       else "exact", bytes_per_element=element)
            row["predicted_s"] = cost.one_process_s if variant == "one process" else cost.total_s
            row["predicted_over_measured"] = row["predicted_s"] / row["step_s_median"]
            row["calibrated_on_s"] = seconds[0]
            if variant != "one process":
                row["speedup"] = statistics.median(a / b for a, b in zip(times["one process"], series))
                row["predicted_speedup"] = cost.speedup
                row["bytes_received_per_rank"] = received[variant]
                if rank == 0:
                    row["max_abs_deviation"] = float((outputs[variant].float() - reference.float()).abs().max())
            rows.append(row)
    return rows


def quality_rows(prompts: list[str], *, steps: int = 25, seconds: float = 4.0, warmup_steps: tuple[int, ...] = (1, 2, 4),
                 seed: int = 0, checkpoint=None) -> list[dict]:
    """Whole generations of Stable-Audio-Lite (the committed checkpoint, or `checkpoint`) on every rank:
    one process, the exact mode, the stale mode after each of `warmup_steps`, and one process from
    other noise. Rows (rank 0; others return []): variant, warmup_steps, prompt, the largest sample
    difference and the four `fidelity_scores` of its first `seconds` of audio against the
    one-process audio (SI-SDR is +inf where the audio is identical)."""
    from ..models.stable_audio_lite import load_stable_audio_lite
    from ..quant.objectives import render

    if not dist.is_initialized():
        raise RuntimeError("run under torchrun: torchrun --nproc-per-node 2 -m accelerando.bench distributed ...")
    if not prompts:
        raise ValueError("quality_rows needs at least one prompt")
    pipe = load_stable_audio_lite() if checkpoint is None else load_stable_audio_lite(checkpoint)
    generate = lambda noise_seed: render(pipe, prompts, seconds, steps, seed=noise_seed)  # noqa: E731
    reference, sr = generate(seed)
    variants = {("one process, other noise", None): generate(seed + 1)[0]}
    with patch_parallel(pipe.transformer, mode="exact"):
        variants[("exact", 0)] = generate(seed)[0]
    for w in warmup_steps:
        with patch_parallel(pipe.transformer, mode="stale", warmup_steps=w):
            variants[("stale", w)] = generate(seed)[0]
    if dist.get_rank() != 0:
        return []
    rows = []
    for (variant, w), audio in variants.items():
        for i, (ref, gen) in enumerate(zip(reference.numpy(), audio.numpy())):
            rows.append({"component": "patch_parallel_quality", "variant": variant, "warmup_steps": w, "prompt": i,
                         "ranks": dist.get_world_size(), "steps": steps, "seconds": seconds,
                         "max_abs_difference": float(np.abs(ref - gen).max()), **fidelity_scores(ref, gen, sr)})
    return rows


def run_ranks(args: list[str], nproc: int = 2, threads: int = 1, timeout_s: float = 3600.0) -> list[dict]:
    """`torchrun --standalone --nproc-per-node nproc -m accelerando.bench distributed ARGS --json` on
    this machine, `threads` torch threads per rank; returns rank 0's records. For a notebook, which
    cannot be a rank itself. A failing run raises with the ranks' last output."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "accelerando.bench", "distributed", *map(str, args), "--threads", str(threads), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
