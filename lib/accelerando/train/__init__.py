"""Training entry points for the small models this project trains on its offline corpus.

One module per model, each a short script-like file (nanoGPT style): settings in a config
dataclass, then data, model, loop, checkpoint. Checkpoints are fp16 safetensors of a few MB,
committed with their training log and the command that made them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing


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
