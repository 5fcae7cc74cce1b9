"""Executing chapters into the book: parameter sets, caching and the strict HTML build.

A chapter is a MyST-markdown jupytext notebook `chapters/NN_name.md` whose cell tagged
`parameters` holds its defaults (the CPU run the book shows). `chapters/params/NN_name.yml` adds
named sets (`smoke` for the tests, `gpu` for readers with CUDA). Execution goes through papermill:

    python -m accelerando.book run 01_baselines                  # default set, into book/
    python -m accelerando.book run 01_baselines --set gpu        # into runs/gpu/
    python -m accelerando.book run 01_baselines -p preset small  # one parameter changed
    python -m accelerando.book params 01_baselines               # list parameters and sets
    python -m accelerando.book build                             # every chapter, then the HTML

`build` re-executes a chapter only when its source, its parameters or a library module it imported
changed (both are stored in the chapter's run record), and a failing chapter stops the build with
its traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .machine import REPO_ROOT
from .players import NOTEBOOK_DIR_ENV
from .record import BOOK_RECORD_DIR, RECORD_DIR_ENV, library_hashes

CHAPTERS = REPO_ROOT / "chapters"
BOOK = REPO_ROOT / "book"
PARAM_SETS = ("default", "smoke", "gpu")


class ChapterError(RuntimeError):
    """A chapter could not be found, parameterised or executed."""


# ---------------------------------------------------------------------------------------------
# Chapters and their parameters


def chapter_names() -> list[str]:
    """Chapters in book order (file names sort by their NN_ prefix)."""
    return sorted(p.stem for p in CHAPTERS.glob("[0-9][0-9]_*.md"))


def chapter_source(chapter: str) -> Path:
    path = CHAPTERS / f"{chapter}.md"
    if not path.exists():
        known = ", ".join(chapter_names()) or "none"
        raise ChapterError(f"no chapter {chapter!r} (looked for {path}); chapters: {known}")
    return path


def read_chapter(chapter: str):
    """The chapter as a notebook object (jupytext reads the MyST markdown)."""
    import jupytext

    return jupytext.read(chapter_source(chapter))


def default_params(nb) -> dict:
    """Values assigned in the cell tagged `parameters` (evaluated: they are plain literals)."""
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ChapterError(f"a chapter needs exactly one code cell tagged 'parameters', found {len(cells)}")
    namespace: dict = {}
    exec(cells[0].source, {}, namespace)  # noqa: S102 - the chapter's own literal defaults
    return {k: v for k, v in namespace.items() if not k.startswith("_")}


def param_sets(chapter: str) -> dict[str, dict]:
    """Named parameter sets of a chapter: `default` is empty (the notebook's own values)."""
    sets = {"default": {}}
    path = CHAPTERS / "params" / f"{chapter}.yml"
    if path.exists():
        loaded = yaml.safe_load(path.read_text()) or {}
        unknown = set(loaded) - set(PARAM_SETS)
        if unknown:
            raise ChapterError(f"{path}: unknown parameter set(s) {sorted(unknown)}; allowed: {list(PARAM_SETS)}")
        sets.update({name: values or {} for name, values in loaded.items()})
    return sets


def resolve_params(chapter: str, param_set: str = "default", overrides: dict | None = None) -> dict:
    """Defaults, then the named set, then `overrides`; every name must be a chapter parameter.

    Papermill would only warn about an unknown name and run with the default; a typo in a
    parameter name must not silently produce the default result, so it is an error here.
    """
    defaults = default_params(read_chapter(chapter))
    sets = param_sets(chapter)
    if param_set not in sets:
        raise ChapterError(f"chapter {chapter!r} has no parameter set {param_set!r}; sets: {sorted(sets)}")
    resolved = dict(defaults)
    for source, values in ((f"set {param_set!r}", sets[param_set]), ("overrides", overrides or {})):
        for name, value in values.items():
            if name not in defaults:
                raise ChapterError(
                    f"unknown parameter {name!r} for chapter {chapter!r} ({source}); "
                    f"its parameters are: {', '.join(sorted(defaults))}"
                )
            _check_type(chapter, name, defaults[name], value)
            resolved[name] = value
    return resolved


def _check_type(chapter: str, name: str, default, value) -> None:
    if default is None or value is None:
        return
    numeric = (int, float)
    same = isinstance(value, type(default)) or (
        isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)
    )
    if isinstance(default, numeric) and isinstance(value, bool) and not isinstance(default, bool):
        same = False
    if not same:
        raise ChapterError(
            f"parameter {name!r} of chapter {chapter!r} takes a {type(default).__name__} "
            f"(default {default!r}), got {value!r} ({type(value).__name__})"
        )


def cache_key(chapter: str, params: dict) -> str:
    """Hash of the chapter source and its resolved parameters.

    The library is checked separately (`is_current`): the run record lists the hash of every
    accelerando module the chapter's kernel had loaded, so a change to a module the chapter never
    imports does not re-execute it.
    """
    h = hashlib.sha256()
    h.update(chapter_source(chapter).read_bytes())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Execution


def output_paths(chapter: str, param_set: str, overridden: bool = False) -> tuple[Path, Path]:
    """(executed notebook, record directory): the book's own for the plain default set; runs with
    another set go to runs/<set>/ and runs with overrides to runs/custom/, so they never replace
    the book's results."""
    if param_set == "default" and not overridden:
        return BOOK / "chapters" / f"{chapter}.ipynb", BOOK_RECORD_DIR
    base = REPO_ROOT / "runs" / ("custom" if overridden else param_set)
    return base / f"{chapter}.ipynb", base / "records"


def is_current(chapter: str, params: dict, notebook: Path, record_dir: Path) -> bool:
    record = record_dir / f"{chapter}.json"
    if not (notebook.exists() and record.exists()):
        return False
    saved = json.loads(record.read_text())
    if saved.get("cache_key") != cache_key(chapter, params) or not saved.get("library"):
        return False
    return saved["library"] == library_hashes(saved["library"])


def run_chapter(
    chapter: str,
    param_set: str = "default",
    overrides: dict | None = None,
    out: Path | None = None,
    record_dir: Path | None = None,
    force: bool = False,
) -> Path:
    """Execute one chapter with papermill; returns the executed notebook's path.

    The notebook is written to a temporary file and moved into place only on success, so a failed
    run never replaces the last good result; the failed notebook is kept under runs/failed/.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    params = resolve_params(chapter, param_set, overrides)
    default_out, default_records = output_paths(chapter, param_set, overridden=bool(overrides))
    out = Path(out).resolve() if out else default_out
    record_dir = Path(record_dir) if record_dir else (default_records if out == default_out else out.parent / "records")
    key = cache_key(chapter, params)
    if not force and is_current(chapter, params, out, record_dir):
        print(f"[book] {chapter}: up to date ({key})", flush=True)
        return out

    print(f"[book] {chapter}: executing ({param_set} set{', overrides ' + str(overrides) if overrides else ''})", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    record_dir.mkdir(parents=True, exist_ok=True)
    os.environ[RECORD_DIR_ENV] = str(record_dir)  # the kernel inherits it: RunRecord writes there
    os.environ[NOTEBOOK_DIR_ENV] = str(out.parent)  # audio players link files relative to the notebook
    nb = read_chapter(chapter)
    injected = {**param_sets(chapter)[param_set], **(overrides or {})}  # validated above
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_out = Path(tmp) / out.name
        try:
            papermill.execute_notebook(
                nb, str(tmp_out), parameters=injected, kernel_name="python3", cwd=str(out.parent),
                progress_bar=False, log_output=False,
            )
        except PapermillExecutionError as err:
            failed = REPO_ROOT / "runs" / "failed" / out.name
            failed.parent.mkdir(parents=True, exist_ok=True)
            if tmp_out.exists():
                shutil.copy(tmp_out, failed)
            tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(err.traceback))  # drop the kernel's colour codes
            raise ChapterError(
                f"chapter {chapter!r} failed in cell {err.cell_index} ({err.ename}: {err.evalue}).\n"
                f"{tb}\nThe failed notebook is at {failed}; the previous result is untouched."
            ) from None
        shutil.move(tmp_out, out)
    _stamp_record(chapter, record_dir, key, param_set, params, started)
    print(f"[book] {chapter}: wrote {out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out}", flush=True)
    return out


def _stamp_record(chapter: str, record_dir: Path, key: str, param_set: str, params: dict, started: float) -> None:
    """Check the record the run saved holds the parameters it ran with; add the cache key and set."""
    path = record_dir / f"{chapter}.json"
    if not path.exists() or path.stat().st_mtime < started:
        raise ChapterError(f"chapter {chapter!r} ran but saved no run record at {path}: it must call RunRecord.save()")
    record = json.loads(path.read_text())
    recorded = record.get("params", {})
    wrong = sorted(k for k in params if k not in recorded or recorded[k] != json.loads(json.dumps(params[k])))
    if wrong:
        raise ChapterError(
            f"chapter {chapter!r}'s run record does not hold the parameters it ran with: {wrong}; "
            "pass every parameter, unchanged, to RunRecord(params=...)"
        )
    record.update(cache_key=key, param_set=param_set)
    path.write_text(json.dumps(record, indent=1) + "\n")


def jupyter_book_command(path_output: Path, strict: bool = True) -> list[str]:
    """The Jupyter Book 1.x build of the whole book into `path_output`/_build/html.

    `--all` rewrites every page: without it an unchanged page is skipped, and so are its warnings
    and any re-vendored static files.
    """
    jb = Path(sys.executable).with_name("jupyter-book")  # 1.0.4 has no `python -m jupyter_book`
    cmd = [str(jb), "build", str(REPO_ROOT), "--path-output", str(path_output), "--all"]
    return cmd + (["-W", "-n", "--keep-going"] if strict else [])


def build_html(strict: bool = True) -> Path:
    """Jupyter Book 1.x HTML build of the whole book (warnings are errors when strict)."""
    cmd = jupyter_book_command(BOOK, strict)
    subprocess.run(cmd, check=True, cwd=REPO_ROOT)
    html = BOOK / "_build" / "html"
    # Chapters' audio players point at ../audio/<chapter>/*.ogg from book/chapters/: Sphinx does
    # not know these files, so they are copied to the same place relative to the HTML pages.
    if (BOOK / "audio").is_dir():
        shutil.copytree(BOOK / "audio", html / "book" / "audio", dirs_exist_ok=True)
    return html / "index.html"


# ---------------------------------------------------------------------------------------------
# Command line


def _parse_value(text: str):
    """A `-p NAME VALUE` value is YAML: 3 -> int, 0.5 -> float, [1, 2] -> list, tiny -> str."""
    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m accelerando.book", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute one chapter")
    run.add_argument("chapter")
    run.add_argument("--set", default="default", dest="param_set", help="parameter set: default, smoke or gpu")
    run.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="override a parameter (YAML value)")
    run.add_argument("--out", type=Path, help="executed notebook path (default: book/chapters or runs/<set>)")
    run.add_argument("--force", action="store_true", help="execute even if the result is current")
    build = sub.add_parser("build", help="execute every chapter that changed, then build the HTML")
    build.add_argument("--force", action="store_true", help="re-execute every chapter")
    build.add_argument("--no-html", action="store_true", help="execute chapters only")
    show = sub.add_parser("params", help="list a chapter's parameters and sets")
    show.add_argument("chapter")
    args = parser.parse_args(argv)

    try:
        if args.command == "run":
            overrides = {name: _parse_value(value) for name, value in args.p}
            run_chapter(args.chapter, args.param_set, overrides, out=args.out, force=args.force)
        elif args.command == "build":
            for chapter in chapter_names():
                run_chapter(chapter, force=args.force)
            if not args.no_html:
                index = build_html()
                print(f"[book] built {index.relative_to(REPO_ROOT)}")
        elif args.command == "params":
            defaults = default_params(read_chapter(args.chapter))
            sets = param_sets(args.chapter)
            print(yaml.safe_dump({"default": defaults, **{k: v for k, v in sets.items() if k != "default"}}, sort_keys=False))
    except ChapterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"error: the HTML build failed ({err}); see the Sphinx messages above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
