"""Training entry points for the small models this project trains on its offline corpus.

One module per model, each a short script-like file (nanoGPT style): settings in a config
dataclass, then data, model and loss, handed as a `TrainingTask` to `run_training`, the one loop
(optimizer steps, warm-up-cosine schedule, EMA, validation cadence, logging, time budget,
resumable state): `autoencoder`, `dit` and `musicgen_lite` train through it; `clap` still has its
own loop (epochs without replacement, a schedule over the time budget, retrieval evaluations) and
`codec` is a k-means fit, not a gradient loop. Checkpoints are fp16 safetensors of a few MB,
committed with their training log and the command that made them.

Resuming: a run that stops before its goal (`max_steps`) because its time budget (`minutes`) ran
out, `steps_this_run` steps were done, or it was interrupted, leaves `resume_state.pt` beside the
checkpoint (fp32 model, EMA and optimizer state, step, schedule, RNG states of torch, numpy and
Python, the log so far; written at every validation and at the end of an unfinished run). The
same command run again continues from there, bit for bit as if it had not stopped, and appends
itself to the log's `runs`; the file is removed when the goal is met.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import math
import os
import random
import time
import typing
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..machine import cpu_flags, set_threads

RESUME_FILE = "resume_state.pt"  # beside the checkpoint; fp32 state, not committed
PRECISIONS = ("fp32", "bf16")
# settings a later run may change without breaking the continuation
RUN_SETTINGS = ("minutes", "steps_this_run", "threads", "encode_threads", "precision", "log_every", "resume")


def warmup_cosine(base_lr: float, step: int, warmup_steps: int, progress: float, floor: float = 0.0) -> float:
    """Learning rate at `step`: linear warm-up over `warmup_steps`, then a cosine from `base_lr`
    down to `floor * base_lr` as `progress` (0..1, the share of the budget after warm-up) runs out."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0))))


def parse_bool(text: str) -> bool:
    """A command-line boolean: true/false, yes/no, 1/0 (any case). argparse's `type=bool` would
    read "False" as True (a non-empty string)."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: pass True or False")
    return value


def _flag_type(value, annotation):
    """The parser of a field from its default, or, for a None default, from its annotation."""
    if value is not None:
        return parse_bool if isinstance(value, bool) else type(value)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    kind = args[0] if len(args) == 1 else annotation
    return parse_bool if kind is bool else kind


def config_from_argv(config_cls, argv: list[str] | None, description: str):
    """A `config_cls` dataclass from command-line flags named like its fields (--max_steps 10);
    tuple fields take several values, booleans take True / False, and fields defaulting to None
    take the type their annotation names (`int | None`: an int)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = config_cls()
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        value = getattr(defaults, f.name)
        if isinstance(value, tuple):
            parser.add_argument(f"--{f.name}", type=_flag_type(value[0], None), nargs="+", default=value)
        else:
            parser.add_argument(f"--{f.name}", type=_flag_type(value, hints[f.name]), default=value)
    args = parser.parse_args(argv)
    return config_cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items()})


# -- precision and threads ------------------------------------------------------------------------


def default_precision() -> str:
    """bf16 autocast where the CPU has AMX bf16 tiles (a bf16 GEMM several times the fp32 one),
    fp32 elsewhere (without AMX, bf16 autocast is slower than fp32 on CPU)."""
    return "bf16" if "AMX-BF16" in cpu_flags() else "fp32"


def resolve_precision(precision: str | None) -> str:
    """`precision`, or `default_precision()` for None; raises on an unknown name."""
    precision = precision or default_precision()
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: use one of {PRECISIONS}")
    return precision


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """The forward pass's context: bf16 autocast on CPU (weights, gradients and optimizer state
    stay fp32), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_threads(threads: int | None) -> int:
    """`threads`, or every core for None (training alone on the machine)."""
    return threads if threads is not None else (os.cpu_count() or 1)


# -- the loop ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainingTask:
    """What a model's trainer hands `run_training`.

    model: the trained module (the EMA copies it); optimizer: over its parameters.
    batches(rng): the micro-batches of one optimizer step (a generator, so that it draws from
        `rng` in the order the batches are used).
    loss(model, batch): (scalar loss, {name: tensor averaged over the micro-batches into the step's log}).
    validate(model): a validation loss (float), per-part losses (list of floats) or, for a task
        without EMA, named measures ({name: float}), in fp32.
    on_validation(step, row, ema): after each validation row {"step", "seconds", "raw", "ema"}
        (without EMA: {"step", "seconds", **measures}) is logged, with the EMA model (e.g. to keep
        the best checkpoints).
    on_step(step, ema): after every optimizer step (e.g. sample every so many steps).
    state: the task's own counters, saved and restored with the resume state (mutate it in place).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Callable[[np.random.Generator], Iterable[Any]]
    loss: Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    validate: Callable[[nn.Module], float | list[float]]
    on_validation: Callable[[int, dict, nn.Module], None] | None = None
    on_step: Callable[[int, nn.Module], None] | None = None
    state: dict = dataclasses.field(default_factory=dict)


def settings_dict(cfg) -> dict:
    """A config dataclass as JSON-ready settings (tuples as lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def _rng_states(rng: np.random.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state, "python": random.getstate()}


def _set_rng_states(rng: np.random.Generator, states: dict) -> None:
    torch.set_rng_state(states["torch"])
    rng.bit_generator.state = states["numpy"]
    random.setstate(states["python"])


def _validation_row(step: int, seconds: float, raw, ema) -> dict:
    """A row of log["val"]: the model's and the EMA's validation ("raw", "ema"), or without EMA
    (`ema` None) the model's measures themselves."""
    if ema is not None:
        return {"step": step, "seconds": seconds, "raw": raw, "ema": ema}
    return {"step": step, "seconds": seconds, **(raw if isinstance(raw, dict) else {"loss": raw})}


def _describe(row: dict) -> str:
    """"raw 1.2345 ema 1.2300" (lists by their mean) of a validation row, for the console."""
    parts = [f"{k} {np.mean(v):.4f}" for k, v in row.items()
             if (k in ("raw", "ema") or isinstance(v, (int, float))) and not isinstance(v, bool)]
    return " ".join(parts)


def run_training(cfg, task: TrainingTask, rng: np.random.Generator, log: dict, log_fn=print,
                 command: str | None = None) -> tuple[nn.Module, bool]:
    """Train `task.model` as `cfg` says; returns (EMA model, or the model itself when cfg has no
    `ema_decay`; whether the goal was met). `log` gets "steps", "val", "runs" and "throughput".

    Reads of `cfg`: out, lr, max_steps (the goal; None: as many steps as `minutes` allows),
    minutes, steps_this_run, warmup_steps or warmup_frac, grad_clip, ema_decay, accumulate (1 if
    absent), val_every, log_every, precision, threads, resume. `rng` draws the batches; it and
    torch's global generator must be seeded by the caller before the model is built.
    """
    precision, threads = resolve_precision(cfg.precision), resolve_threads(cfg.threads)
    set_threads(threads)
    model, opt = task.model.train(), task.optimizer
    ema_decay = getattr(cfg, "ema_decay", None)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if ema_decay else model
    micro_batches = getattr(cfg, "accumulate", 1)
    out = Path(cfg.out)
    resume_path = out / RESUME_FILE
    run_start = time.perf_counter()

    # -- fresh start or continuation --------------------------------------------------------------
    fixed_warmup = getattr(cfg, "warmup_steps", None)
    sched = {"expected": cfg.max_steps or 10**9, "warmup": fixed_warmup}
    if fixed_warmup is None and cfg.max_steps:
        sched["warmup"] = max(1, int(cfg.warmup_frac * cfg.max_steps))
    step, prior_train_seconds, prior_wall_seconds = 0, 0.0, 0.0  # of the runs before this one
    if getattr(cfg, "resume", True) and resume_path.is_file():
        saved = torch.load(resume_path, weights_only=False)
        changed = {k for k in set(saved["settings"]) | set(settings_dict(cfg))
                   if k not in RUN_SETTINGS and saved["settings"].get(k) != settings_dict(cfg).get(k)}
        if changed:
            raise ValueError(f"{resume_path} is of a run with other settings ({sorted(changed)}): delete it, "
                             "or pass --resume False to start afresh")
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["optimizer"])
        step, sched = saved["step"], saved["schedule"]
        prior_train_seconds, prior_wall_seconds = saved["train_seconds"], saved["wall_seconds"]
        task.state.clear()
        task.state.update(saved["task_state"])
        log.clear()
        log.update(saved["log"])
        _set_rng_states(rng, saved["rng"])
        log_fn(f"resuming at step {step} from {resume_path}")
    else:
        log.update(steps=[], val=[], runs=[])
        first = task.validate(model)  # the EMA equals the model here
        log["val"].append(_validation_row(0, 0.0, first, first if ema is not model else None))
        log_fn(f"step 0: val {_describe(log['val'][-1])}")
    run = {"command": command, "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "start_step": step, "threads": threads, "precision": precision}
    log["runs"].append(run)

    def validate_and_log() -> None:
        row = _validation_row(step, prior_wall_seconds + time.perf_counter() - run_start, task.validate(model),
                              task.validate(ema) if ema is not model else None)
        log["val"].append(row)
        if task.on_validation:
            task.on_validation(step, row, ema)
        log_fn(f"step {step}: val {_describe(row)}")

    def save_resume_state() -> None:
        run.update(end_step=step, seconds=time.perf_counter() - run_start)
        state = {"settings": settings_dict(cfg), "model": model.state_dict(), "ema": ema.state_dict(),
                 "optimizer": opt.state_dict(), "step": step, "schedule": sched,
                 "train_seconds": prior_train_seconds + run_train_seconds,
                 "wall_seconds": prior_wall_seconds + time.perf_counter() - run_start, "task_state": task.state,
                 "log": log, "rng": _rng_states(rng)}
        out.mkdir(parents=True, exist_ok=True)
        torch.save(state, resume_path.with_suffix(".partial"))
        resume_path.with_suffix(".partial").rename(resume_path)

    # -- the loop ---------------------------------------------------------------------------------
    budget, run_first_step, run_train_seconds = cfg.minutes * 60, step, 0.0
    run_limit = step + cfg.steps_this_run if cfg.steps_this_run else None
    out_of_time = False
    while step < sched["expected"] and step != run_limit:
        elapsed = time.perf_counter() - run_start
        if elapsed >= budget:
            out_of_time = True
            break
        if cfg.max_steps is None and step - run_first_step >= 10:  # the goal from this run's pace
            pace = run_train_seconds / (step - run_first_step)
            sched["expected"] = step + max(1, int((budget - elapsed) / pace))
            if sched["warmup"] is None:  # fixed once, from the first estimate
                sched["warmup"] = max(1, int(cfg.warmup_frac * sched["expected"]))
        warmup = sched["warmup"]
        lr = warmup_cosine(cfg.lr, step, warmup or 10**9,
                           (step - (warmup or 0)) / max(1, sched["expected"] - (warmup or 0)), floor=0.1)
        for group in opt.param_groups:
            group["lr"] = lr

        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_sum, parts = 0.0, {}
        for batch in task.batches(rng):
            with autocast(precision):
                loss, extras = task.loss(model, batch)
            (loss / micro_batches).backward()
            loss_sum += loss.item() / micro_batches
            for name, value in extras.items():
                parts[name] = parts.get(name, 0) + value.detach().float() / micro_batches
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if ema is not model:
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - ema_decay)
        run_train_seconds += time.perf_counter() - t0
        step += 1
        log["steps"].append({"step": step, "lr": lr, "loss": loss_sum, **{k: v.tolist() for k, v in parts.items()},
                             "grad_norm": float(grad_norm)})
        if task.on_step:
            task.on_step(step, ema)
        if step % cfg.log_every == 0:
            recent = np.mean([r["loss"] for r in log["steps"][-cfg.log_every:]])
            log_fn(f"step {step}/{sched['expected']}: loss {recent:.4f} lr {lr:.2e} "
                   f"{run_train_seconds / (step - run_first_step):.2f} s/step")
        if step % cfg.val_every == 0:
            validate_and_log()
            if step < sched["expected"]:
                save_resume_state()

    # -- the end of this run ----------------------------------------------------------------------
    # without max_steps the goal is whatever this run's budget allows
    finished = step >= sched["expected"] or (cfg.max_steps is None and out_of_time)
    if finished and log["val"][-1]["step"] != step:
        validate_and_log()
    run.update(end_step=step, seconds=time.perf_counter() - run_start)
    log["throughput"] = {"steps": step, "train_seconds": prior_train_seconds + run_train_seconds,
                         "wall_seconds": prior_wall_seconds + time.perf_counter() - run_start,
                         "threads": threads, "precision": precision}
    if finished:
        resume_path.unlink(missing_ok=True)
    else:
        save_resume_state()
        log_fn(f"stopped at step {step} of {cfg.max_steps}: run the same command again to continue")
    return ema, finished
