"""The run record: every number a chapter reports, with what produced it.

A chapter opens a `RunRecord` with its parameters (`start_chapter` takes them from its
`parameters` cell and shows the machine and commit in the page), logs each measurement and each
figure quoted in its prose, and saves at the end. The JSON file (in `book/records/` for the book's own runs, see
RECORD_DIR_ENV) holds
parameters, seed, git commit, package versions and hardware next to the figures, the code hash of
every library module and the hash of every checkpoint file the run used (the chapter runner's
cache key), and the same
figures go to Weights & Biases in offline mode (`WANDB_MODE=disabled` turns that off; nothing is
ever sent over the network unless a reader sets `WANDB_MODE=online` themselves).

Figures quoted in prose are also "glued" (myst-nb) so the text shows the value this run printed:
in a chapter, ``{glue:text}`name:.1f` `` renders the figure `name`.
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import json
import logging
import math
import numbers
import os
import sys
from pathlib import Path
from typing import Any

from .machine import REPO_ROOT, cpu_flags, git_commit, git_diff, git_ignored, hardware, package_versions

# Where records go. The chapter runner (accelerando.book) sets this variable: book/records for the
# book's own runs, runs/<set>/records otherwise. A chapter run by hand (Jupyter, plain papermill)
# writes to runs/records, so it never overwrites the book's results record.
RECORD_DIR_ENV = "ACCELERANDO_RECORD_DIR"
DEFAULT_RECORD_DIR = REPO_ROOT / "runs" / "records"
BOOK_RECORD_DIR = REPO_ROOT / "book" / "records"
LIBRARY_ROOT = REPO_ROOT / "lib"
# Set by the chapter runner for a default run that was allowed to start from a dirty work tree:
# the record then stores the uncommitted diff, so the result can still be traced to its code.
ALLOW_DIRTY_ENV = "ACCELERANDO_ALLOW_DIRTY"

# Files (checkpoint weights, ...) this process has loaded, noted by the loaders through
# `note_input`: the next saved record hashes them so that new weights make a chapter stale.
_INPUTS: set[Path] = set()


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
        if self.data["git"].get("dirty") and os.environ.get(ALLOW_DIRTY_ENV):
            self.data["git"]["diff"] = git_diff()
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
        self.data["inputs"] = input_hashes(_input_files())
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


def code_hash(path: Path) -> str:
    """sha256 (16 hex digits) of a Python file's code: its syntax tree without docstrings.

    Comments and docstrings do not reach the tree, so editing them keeps a chapter current; any
    change to what the code does changes the hash. A file that does not parse is hashed by bytes.
    """
    source = path.read_bytes()
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return hashlib.sha256(source).hexdigest()[:16]
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


def library_hashes(files) -> dict[str, str | None]:
    """Code hash (`code_hash`) of each library file (relative to lib/), None for a missing file.

    Stored in a run record, these tell the chapter runner whether the code a chapter used has
    changed since it ran.
    """
    hashes = {}
    for rel in sorted(files):
        path = LIBRARY_ROOT / rel
        hashes[rel] = code_hash(path) if path.exists() else None
    return hashes


def note_input(path: str | Path) -> None:
    """Called by loaders (`accelerando.checkpoint.load_checked`): the run depends on `path`.

    Every file in the same folder is keyed too (a checkpoint's weights, config.json, training log),
    except those git ignores (kept-best copies, a training run's resume state): a fresh clone does
    not have them, so keying on them would stale every chapter there.
    """
    _INPUTS.add(Path(path).resolve().parent)


def _input_files() -> list[str]:
    """Files in every folder noted so far: relative to the repository when inside it."""
    files = []
    for folder in sorted(_INPUTS):
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            files.append(str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path))
    ignored = git_ignored([f for f in files if not Path(f).is_absolute()], REPO_ROOT)
    return [f for f in files if f not in ignored]


def input_hashes(files) -> dict[str, str | None]:
    """sha256 (16 hex digits) of each input file's bytes (relative paths from the repository
    root), None for a file that no longer exists."""
    hashes = {}
    for name in sorted(files):
        path = REPO_ROOT / name
        hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None
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


# ---------------------------------------------------------------------------------------------
# Chapter start: one call opens the record from the parameters cell and shows the provenance

CHAPTER_DIR = REPO_ROOT / "chapters"
# Loggers every chapter silences: torchao (imported by diffusers when installed) reports CUDA-only
# extensions it cannot load on a CPU machine, and smoke sets give one-clip bootstrap intervals.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer",
                 "accelerando.metrics.stats")
PLOT_STYLE = {"figure.dpi": 90, "axes.grid": True, "grid.alpha": 0.3}


def default_params(nb) -> dict:
    """Values assigned in a notebook's one code cell tagged `parameters` (plain literals, evaluated)."""
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"a chapter needs exactly one code cell tagged 'parameters', found {len(cells)}")
    namespace: dict = {}
    exec(cells[0].source, {}, namespace)  # noqa: S102 - the chapter's own literal defaults
    return {k: v for k, v in namespace.items() if not k.startswith("_")}


def start_chapter(chapter: str, namespace: dict, source: str | Path | None = None) -> RunRecord:
    """Open `chapter`'s run record with the values its parameters currently have in `namespace`.

    Call it first in a chapter's setup cell, `run = start_chapter("01_baselines", globals())`: the
    parameter names come from the chapter's `parameters` cell (`source`, default
    chapters/<chapter>.md), their values from the notebook (papermill's injected ones included), so
    no parameter is typed twice. It also fixes torch's threads (parameter `threads`) before the
    hardware is recorded, sets the plot style, silences QUIET_LOGGERS, and displays the machine,
    threads, torch version and commit in the executed notebook.
    """
    import jupytext

    from .machine import set_threads

    names = default_params(jupytext.read(Path(source or CHAPTER_DIR / f"{chapter}.md")))
    missing = sorted(set(names) - set(namespace))
    if missing:
        raise NameError(f"start_chapter({chapter!r}): parameters {missing} are not defined: run the parameters cell first")
    params = {name: namespace[name] for name in names}
    if isinstance(params.get("threads"), int):
        set_threads(params["threads"])
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import matplotlib.pyplot as plt

        plt.rcParams.update(PLOT_STYLE)
    except ImportError:  # the library works without the book's packages
        pass
    run = RunRecord(chapter, params=params, seed=params.get("seed"))
    _show(provenance_markdown(run.data))
    return run


def provenance_markdown(data: dict) -> str:
    """One paragraph naming the machine, threads, torch version and commit a record was made with."""
    hw, git = data["hardware"], data["git"]
    flags = ", ".join(hw.get("cpu_flags") or []) or "no AVX2"
    commit = f"`{git['commit'][:10]}`" if git.get("commit") else "no git commit"
    if git.get("dirty") is None:
        tree = "work tree state unknown"
    elif not git["dirty"]:
        tree = "clean work tree"
    elif git.get("diff") is not None:
        tree = "**uncommitted changes** (their diff is stored in the run record)"
    else:
        tree = "**uncommitted changes** (not a book run: results go to runs/, not the book)"
    gpus = f" | GPUs: {', '.join(hw['gpus'])}" if hw.get("gpus") else ""
    return (f"**This run:** {hw['cpu']} ({flags}), {hw['cpu_count']} logical cores{gpus} | "
            f"torch {data['packages'].get('torch')} with {hw['torch_threads']} threads | "
            f"commit {commit}, {tree} | started {data['started']}")


def _show(markdown: str) -> None:
    """Display Markdown in a notebook kernel (an output the book renders); print elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:
        get_ipython = None
    if get_ipython is not None and getattr(get_ipython(), "kernel", None) is not None:
        display(Markdown(markdown))
    else:
        print(markdown)
