"""The run record: every number a chapter reports, with what produced it.

A chapter opens a `RunRecord` with its parameters, logs each measurement and each figure quoted in
its prose, and saves at the end. The JSON file (in `book/records/` for the book's own runs, see
RECORD_DIR_ENV) holds
parameters, seed, git commit, package versions and hardware next to the figures, and the same
figures go to Weights & Biases in offline mode (`WANDB_MODE=disabled` turns that off; nothing is
ever sent over the network unless a reader sets `WANDB_MODE=online` themselves).

Figures quoted in prose are also "glued" (myst-nb) so the text shows the value this run printed:
in a chapter, ``{glue:text}`name:.1f` `` renders the figure `name`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import numbers
import os
import sys
from pathlib import Path
from typing import Any

from .machine import REPO_ROOT, git_commit, hardware, package_versions

# Where records go. The chapter runner (accelerando.book) sets this variable: book/records for the
# book's own runs, runs/<set>/records otherwise. A chapter run by hand (Jupyter, plain papermill)
# writes to runs/records, so it never overwrites the book's results record.
RECORD_DIR_ENV = "ACCELERANDO_RECORD_DIR"
DEFAULT_RECORD_DIR = REPO_ROOT / "runs" / "records"
BOOK_RECORD_DIR = REPO_ROOT / "book" / "records"
LIBRARY_ROOT = REPO_ROOT / "lib"


def _jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and inf become None (strict JSON has neither), tensors become lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class RunRecord:
    """Collects one chapter run's parameters, measurements and quoted figures.

    >>> run = RunRecord("01_baselines", params={"preset": "tiny"}, seed=0)
    >>> run.log(component="dit_forward", latency_s_min=0.1)     # a measurement row
    >>> run.figure("dit_47s_latency_s", 65.2, unit="s")          # a number the prose quotes
    >>> path = run.save()
    """

    def __init__(self, chapter: str, params: dict, seed: int | None = None, record_dir: str | Path | None = None):
        self.chapter = chapter
        self.path = Path(record_dir or os.environ.get(RECORD_DIR_ENV) or DEFAULT_RECORD_DIR) / f"{chapter}.json"
        self.data: dict[str, Any] = {
            "chapter": chapter,
            "params": _jsonable(params),
            "seed": seed,
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git": git_commit(),
            "packages": package_versions(),
            "hardware": hardware(),
            "measurements": [],
            "figures": {},
        }
        self._wandb = _start_wandb(chapter, self.data)

    def log(self, record: dict | None = None, **fields) -> dict:
        """Append one measurement (a flat dict: component, latency, memory, ...); returns it."""
        row = _jsonable({**(record or {}), **fields})
        self.data["measurements"].append(row)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if isinstance(v, (int, float))} | {"component": row.get("component")})
        return row

    def figure(self, name: str, value: float, unit: str | None = None, note: str | None = None):
        """Record a figure the prose quotes and glue it for `{glue:text}`; returns the value."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"figure {name!r} must be a real number, got {type(value).__name__}")
        # plain Python numbers: numpy scalars would be glued as 'np.float64(...)'
        value = int(value) if isinstance(value, numbers.Integral) else float(value)
        if not math.isfinite(value):
            raise ValueError(f"figure {name!r} is {value}: a quoted figure must be a finite number")
        self.data["figures"][name] = {"value": value, "unit": unit, "note": note}
        if self._wandb is not None:
            self._wandb.summary[name] = value
        _glue(name, value)
        return value

    def save(self) -> Path:
        """Write the record as JSON (and close the wandb run); returns the file's path."""
        self.data["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.data["library"] = library_hashes(_loaded_library_files())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(_jsonable(self.data), indent=1) + "\n")
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        return self.path


def _loaded_library_files() -> list[str]:
    """Library source files (relative to lib/) of every accelerando module imported so far."""
    files = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if (name == "accelerando" or name.startswith("accelerando.")) and path:
            path = Path(path).resolve()
            if path.is_relative_to(LIBRARY_ROOT):
                files.append(str(path.relative_to(LIBRARY_ROOT)))
    return sorted(files)


def library_hashes(files) -> dict[str, str | None]:
    """sha256 (16 hex digits) of each library file, None for a file that no longer exists.

    Stored in a run record, these tell the chapter runner whether the code a chapter used has
    changed since it ran.
    """
    hashes = {}
    for rel in sorted(files):
        path = LIBRARY_ROOT / rel
        hashes[rel] = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else None
    return hashes


def load_record(chapter: str, record_dir: str | Path | None = None) -> dict:
    """Read a saved run record back (default: the book's, for chapters that build on earlier results)."""
    path = Path(record_dir or BOOK_RECORD_DIR) / f"{chapter}.json"
    if not path.exists():
        raise FileNotFoundError(f"no run record at {path}: execute chapter {chapter!r} first (make book)")
    return json.loads(path.read_text())


def _start_wandb(chapter: str, data: dict):
    """An offline wandb run, unless WANDB_MODE says otherwise ('disabled' skips wandb entirely)."""
    mode = os.environ.get("WANDB_MODE", "offline")
    if mode == "disabled":
        return None
    import wandb

    wandb_dir = Path(os.environ.get("WANDB_DIR", REPO_ROOT / ".cache"))
    wandb_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project="accelerando", name=chapter, mode=mode, dir=str(wandb_dir),
        config={"params": data["params"], "seed": data["seed"], "git": data["git"], "hardware": data["hardware"]},
        settings=wandb.Settings(silent=True, console="off"),
    )


def _glue(name: str, value) -> None:
    try:
        from myst_nb import glue
    except ImportError:  # the library works without the book's packages
        return
    glue(name, value, display=False)
