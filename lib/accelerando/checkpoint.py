"""Small trained checkpoints: fp16 safetensors weights beside a config.json.

The models this project trains are committed (a few MB each), so weights are stored in half
precision and always loaded against the architecture their config.json describes: a mismatch is
an error naming the tensors, never a partial load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .machine import REPO_ROOT
from .record import note_input

CHECKPOINTS = REPO_ROOT / "checkpoints"  # the committed Lite checkpoints, one folder per model


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes: how a checkpoint names the weights it was trained against."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_fp16(module: nn.Module, directory: str | Path, *, weights_name: str, config_name: str, meta: dict,
              metadata: dict[str, str] | None = None) -> Path:
    """Write `module`'s state dict (floats as fp16) to directory/weights_name and `meta` as JSON
    to directory/config_name. Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).cpu().contiguous()
             for k, v in module.state_dict().items()}
    save_file(state, str(directory / weights_name), metadata=metadata)
    (directory / config_name).write_text(json.dumps(meta, indent=1) + "\n")
    return directory


def load_checked(module: nn.Module, weights_path: str | Path, fix: str = "", new_parts: tuple[str, ...] = ()
                 ) -> nn.Module:
    """Load safetensors weights into `module` (cast to its dtypes) after checking that names and
    shapes match exactly; otherwise a ValueError lists missing, unexpected and misshapen tensors.
    `new_parts`: name prefixes of submodules the file may lack (added since it was saved; they keep
    their initial weights), for starting a larger model from a smaller one's checkpoint."""
    state = load_file(str(weights_path))
    note_input(weights_path)  # the run record keys the chapter on this checkpoint's files
    own = module.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(new_parts) or not new_parts)
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{weights_path} does not match its config.json: {len(missing)} missing tensors {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}, {len(wrong)} of another shape "
            f"{[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:3]]}. The files come from "
            f"different runs or were damaged. {fix}".rstrip()
        )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=not new_parts)
    return module
