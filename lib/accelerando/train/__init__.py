"""Training entry points for the small models this project trains on its offline corpus.

One module per model, each a short script-like file (nanoGPT style): settings in a config
dataclass, then data, model, loop, checkpoint. Checkpoints are fp16 safetensors of a few MB,
committed with their training log and the command that made them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math


def warmup_cosine(base_lr: float, step: int, warmup_steps: int, progress: float, floor: float = 0.0) -> float:
    """Learning rate at `step`: linear warm-up over `warmup_steps`, then a cosine from `base_lr`
    down to `floor * base_lr` as `progress` (0..1, the share of the budget after warm-up) runs out."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0))))


def config_from_argv(config_cls, argv: list[str] | None, description: str):
    """A `config_cls` dataclass from command-line flags named like its fields (--max_steps 10);
    tuple fields take several values, fields defaulting to None take an int."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = config_cls()
    for f in dataclasses.fields(config_cls):
        value = getattr(defaults, f.name)
        if isinstance(value, tuple):
            parser.add_argument(f"--{f.name}", type=type(value[0]), nargs="+", default=value)
        elif value is None:
            parser.add_argument(f"--{f.name}", type=int, default=None)
        else:
            parser.add_argument(f"--{f.name}", type=type(value), default=value)
    args = parser.parse_args(argv)
    return config_cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items()})
