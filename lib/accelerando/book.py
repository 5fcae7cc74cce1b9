"""Executing chapters into the book: parameter sets, caching and the strict HTML build.

A chapter is a MyST-markdown jupytext notebook `chapters/NN_name.md` whose cell tagged
`parameters` holds its defaults (the CPU run the book shows). `chapters/params/NN_name.yml` adds
named sets (`smoke` for the tests, `gpu` for readers with CUDA). Execution goes through papermill:

    python -m accelerando.book run 01_baselines                  # default set, into book/
    python -m accelerando.book run 01_baselines --set gpu        # into runs/gpu/
    python -m accelerando.book run 01_baselines -p preset small  # one parameter changed
    python -m accelerando.book params 01_baselines               # list parameters and sets
    python -m accelerando.book build                             # every chapter, then the HTML

    python -m accelerando.book status                            # each chapter current or stale, and why

`build` re-executes a chapter only when its source, its parameters, the code of a library module
it imported or a file it loaded (checkpoints) changed (all stored in the chapter's run record), and
a failing chapter stops the build with its traceback. Runs into the book refuse a dirty work tree
(`--allow-dirty` stores the diff in the record instead); the HTML build marks a stale chapter with
a banner (`setup`, a Sphinx extension named in _config.yml).
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

from .dashboard import read_record
from .dashboard import summary as run_summary
from .machine import BOOK_RUN_OUTPUTS, REPO_ROOT, dirty_files, git_commit
from .players import NOTEBOOK_DIR_ENV
from .record import ALLOW_DIRTY_ENV, BOOK_RECORD_DIR, RECORD_DIR_ENV, input_hashes, library_hashes
from .record import default_params as _default_params

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
    try:
        return _default_params(nb)
    except ValueError as err:
        raise ChapterError(str(err)) from None


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


def stale_reasons(chapter: str, params: dict, notebook: Path, record_dir: Path) -> list[str]:
    """Why a chapter's executed result no longer matches its code and data; [] when it is current.

    Compared with its run record: the chapter source and parameters (`cache_key`), the code of
    every library module its kernel had imported (`library`) and every file it loaded (`inputs`).
    """
    record = record_dir / f"{chapter}.json"
    if not notebook.exists():
        return [f"never executed ({notebook.name} missing)"]
    if not record.exists():
        return [f"no run record ({record})"]
    saved = json.loads(record.read_text())
    reasons = []
    if saved.get("cache_key") != cache_key(chapter, params):
        reasons.append("chapter source or parameters changed")
    if not saved.get("library"):
        reasons.append("its record lists no library modules")
    for kind, stored, now in (("library module", saved.get("library") or {}, library_hashes(saved.get("library") or {})),
                              ("input file", saved.get("inputs") or {}, input_hashes(saved.get("inputs") or {}))):
        reasons += [f"{kind} {name} {'deleted' if now[name] is None else 'changed'}"
                    for name in sorted(stored) if stored[name] != now[name]]
    if "inputs" not in saved:
        reasons.append("its record predates input-file keys (checkpoints it loaded are not listed)")
    return reasons


def is_current(chapter: str, params: dict, notebook: Path, record_dir: Path) -> bool:
    return not stale_reasons(chapter, params, notebook, record_dir)


def book_status(chapter: str) -> list[str]:
    """`stale_reasons` of the book's own (default-set) result of `chapter`."""
    notebook, record_dir = output_paths(chapter, "default")
    return stale_reasons(chapter, resolve_params(chapter), notebook, record_dir)


def check_clean_tree(allow_dirty: bool) -> None:
    """Refuse a book run from uncommitted changes, unless allowed (the record then stores the diff)."""
    dirty = dirty_files(REPO_ROOT, ignore=BOOK_RUN_OUTPUTS)
    if dirty and not allow_dirty:
        shown = "\n  ".join(dirty[:20]) + (f"\n  ... and {len(dirty) - 20} more" if len(dirty) > 20 else "")
        raise ChapterError(
            f"the work tree has uncommitted changes, so the book's result could not be traced to a commit:\n  {shown}\n"
            "Commit them (git add/commit) and run again, or pass --allow-dirty to store the diff in the run "
            "record (the chapter then says so), or run another set (--set smoke, -p ...) into runs/."
        )


def run_chapter(
    chapter: str,
    param_set: str = "default",
    overrides: dict | None = None,
    out: Path | None = None,
    record_dir: Path | None = None,
    force: bool = False,
    allow_dirty: bool = False,
) -> Path:
    """Execute one chapter with papermill; returns the executed notebook's path.

    A run into the book (the default set, default output) refuses a dirty work tree unless
    `allow_dirty`, in which case the run record stores `git diff HEAD`. The notebook is written to
    a temporary file and moved into place only on success, so a failed
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

    into_book = out == BOOK / "chapters" / f"{chapter}.ipynb"
    if into_book:
        check_clean_tree(allow_dirty)
    print(f"[book] {chapter}: executing ({param_set} set{', overrides ' + str(overrides) if overrides else ''})", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    record_dir.mkdir(parents=True, exist_ok=True)
    os.environ[RECORD_DIR_ENV] = str(record_dir)  # the kernel inherits it: RunRecord writes there
    os.environ[NOTEBOOK_DIR_ENV] = str(out.parent)  # audio players link files relative to the notebook
    if into_book and allow_dirty:
        os.environ[ALLOW_DIRTY_ENV] = "1"  # the kernel's RunRecord stores the diff
    else:
        os.environ.pop(ALLOW_DIRTY_ENV, None)
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
    if into_book:
        write_glance()
    print(f"[book] {chapter}: wrote {out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out}", flush=True)
    return out


def _execute_here(chapter: str, param_set: str, overrides: dict | None, repo: str | None) -> dict[str, bytes]:
    """A chapter run inside a Ray task: executed into a scratch book (chapters/, records/, audio/ as
    in book/) and returned as {relative path: bytes}. `repo`: the repository's path on this node
    (a local Ray), or None when the task runs in the copy Ray's runtime_env shipped (a cluster)."""
    root = Path(repo) if repo else Path.cwd()
    lib = str(root / "lib")
    os.environ["PYTHONPATH"] = lib + os.pathsep + os.environ.get("PYTHONPATH", "")  # the chapter's kernel imports it
    sys.path.insert(0, lib)
    from accelerando import book as here  # the shipped copy on a cluster, this module on a local Ray

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "chapters" / f"{chapter}.ipynb"
        here.run_chapter(chapter, param_set, overrides, out=out, record_dir=Path(tmp) / "records", force=True)
        return {str(f.relative_to(tmp)): f.read_bytes() for f in Path(tmp).rglob("*") if f.is_file()}


def run_on_ray(chapters: list[str], address: str, param_set: str = "default", force: bool = False,
               allow_dirty: bool = False) -> list[Path]:
    """Execute each stale chapter of `chapters` as a Ray task and write its notebook, record and audio
    back where a local run would (the book for the default set, runs/<set>/ otherwise).

    `address`: "local" starts a Ray on this machine (tasks share this checkout); anything else is
    passed to `ray.init` (e.g. "auto", "ray://head:10001"), and the repository without its data,
    caches and virtual environment is shipped as the tasks' working directory (the cluster's nodes
    need the same Python packages: `pip install -e .` in their image). A task asks for one GPU for
    the gpu set. The record's commit is this checkout's, which a run into the book requires clean.
    """
    import ray

    todo = []
    for chapter in chapters:
        params = resolve_params(chapter, param_set)
        out, record_dir = output_paths(chapter, param_set)
        if force or not is_current(chapter, params, out, record_dir):
            todo.append((chapter, out, record_dir))
        else:
            print(f"[book] {chapter}: up to date ({cache_key(chapter, params)})", flush=True)
    if not todo:
        return []
    if param_set == "default":
        check_clean_tree(allow_dirty)
    local = address == "local"
    runtime_env = None if local else {"working_dir": str(REPO_ROOT),
                                      "excludes": ["data/", ".cache/", ".venv/", "runs/", "book/_build/", ".git/",
                                                   "node_modules/", "*.sqlite"]}
    if not ray.is_initialized():
        ray.init(address=None if local else address, runtime_env=runtime_env, include_dashboard=False,
                 log_to_driver=False, **({"_node_ip_address": "127.0.0.1"} if local else {}))
    task = ray.remote(_execute_here).options(num_gpus=1 if param_set == "gpu" else 0, num_cpus=1)
    pending = {task.remote(chapter, param_set, None, str(REPO_ROOT) if local else None): (chapter, out, record_dir)
               for chapter, out, record_dir in todo}
    for chapter, *_ in todo:
        print(f"[book] {chapter}: executing on Ray ({param_set} set)", flush=True)
    written, commit = [], git_commit()
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        chapter, out, record_dir = pending.pop(done[0])
        try:
            files = ray.get(done[0])
        except ray.exceptions.RayTaskError as err:
            raise ChapterError(f"chapter {chapter!r} failed on Ray: {err}; the previous result is untouched") from None
        for name, data in files.items():
            kind, _, rest = name.partition("/")
            target = {"chapters": out.parent, "records": record_dir, "audio": record_dir.parent / "audio"}[kind] / rest
            if kind == "records" and rest == f"{chapter}.json":
                record = json.loads(data)
                record["ran_on"] = f"a Ray task ({address})"
                if not local:  # the shipped copy has no .git: the commit is the one the driver shipped
                    record["git"] = commit
                data = (json.dumps(record, indent=1) + "\n").encode()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        print(f"[book] {chapter}: wrote {out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out}", flush=True)
        written.append(out)
    return written


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
    write_glance()
    cmd = jupyter_book_command(BOOK, strict)
    subprocess.run(cmd, check=True, cwd=REPO_ROOT)
    html = BOOK / "_build" / "html"
    # Chapters' audio players point at ../audio/<chapter>/*.ogg from book/chapters/: Sphinx does
    # not know these files, so they are copied to the same place relative to the HTML pages.
    if (BOOK / "audio").is_dir():
        shutil.copytree(BOOK / "audio", html / "book" / "audio", dirs_exist_ok=True)
    return html / "index.html"


# ---------------------------------------------------------------------------------------------
# Results at a glance: a page of every chapter's recorded figures

GLANCE = BOOK / "chapters" / "glance.md"  # beside the executed chapters: a run's output, not a source


def _figure_text(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def glance_page(record_dir: Path = BOOK_RECORD_DIR) -> str:
    """The book's "Results at a glance" page (MyST): the machine, threads and commit of each
    chapter's run, and every figure its record holds, each table linked to its chapter. Made from
    the records alone, so it changes exactly when a chapter's results do."""
    runs = ["| chapter | CPU | CPU flags | threads | commit | finished |", "| --- | --- | --- | --- | --- | --- |"]
    sections = []
    for chapter in chapter_names():
        record = read_record(Path(record_dir) / f"{chapter}.json")
        link = f"{{doc}}`{chapter}`"
        if record is None:
            runs.append(f"| {link} | not executed yet | | | | |")
            continue
        run = run_summary(record)
        runs.append(f"| {link} | {run['cpu'] or '?'} | {', '.join(run['cpu_flags'])} | {run['threads'] or '?'} | "
                    f"`{(run['commit'] or 'none')[:10]}` | {(run['finished'] or '?')[:16]} |")
        if run["figures"]:
            rows = [f"| `{name}` | {_figure_text(value)} |" for name, value in run["figures"].items()]
            sections += [f"## {link}", "", "| figure | value |", "| --- | --- |", *rows, ""]
    return "\n".join([
        "# Results at a glance", "",
        "Every value on this page is read from a chapter's run record (`book/records/`) by "
        "`python -m accelerando.book glance`, which the book's build runs; each table links to the chapter whose run "
        "printed it, where the prose says what it measures and how sure it is. Absolute times compare only within one "
        "machine: the first table names each run's.", "",
        "## The runs", "", *runs, "", *sections])


def write_glance(record_dir: Path = BOOK_RECORD_DIR, out: Path = GLANCE) -> Path:
    out.write_text(glance_page(record_dir))
    return out


# ---------------------------------------------------------------------------------------------
# Glued figures

def glued_values(notebook: Path) -> dict[str, list[str]]:
    """Every value an executed notebook glued (myst-nb), as its text/plain form, by name."""
    glued: dict[str, list[str]] = {}
    for cell in json.loads(Path(notebook).read_text())["cells"]:
        for output in cell.get("outputs", []):
            scrap = output.get("metadata", {}).get("scrapbook")
            if scrap:
                glued.setdefault(scrap["name"], []).append(output["data"].get(scrap.get("mime_prefix", "") + "text/plain"))
    return glued


# A number typed in prose: digits not glued to a word (W4A4, fp16 and MiniLM-L6 are names).
TYPED_NUMBER = re.compile(r"(?<![\w.\-/])[-+−]?\d+(?:,\d{3})*(?:\.\d+)?(?![\w/])")
# Prose that may hold numbers: roles ({glue:text}`x`, {cite}`y`, {numref}`z`), inline code and
# math, link targets, HTML tags, quotes marked with double quotes, and numbered labels.
NOT_TYPED = re.compile(
    r"\{[\w:-]+\}`[^`]*`|``[^`]*``|`[^`]*`|\$\$?[^$]*\$\$?|\]\([^)]*\)|<[^>]*>|\"[^\"]*\"|“[^”]*”"
    r"|\b(?:Chapter|Chapters|Figure|Table|Section|Equation|Eq\.|WP|work package)\s+\d+(?:[–-]\d+)?",
)


def typed_numbers(chapter: str, text: str | None = None) -> list[tuple[int, str, str]]:
    """(line, number, line text) of each number typed in a chapter's markdown prose.

    Not counted: glued figures and other roles (citations, cross-references), inline code and math,
    text in double quotes (a quote marked as quoted) or blockquotes, numbered labels (Chapter 3,
    Figure 2, WP1), code cells, directive options and the front matter.
    """
    lines = (text if text is not None else chapter_source(chapter).read_text()).splitlines()
    found: list[tuple[int, str, str]] = []
    front = bool(lines and lines[0].strip() == "---")
    fence, fence_prose, display_math, env_math = None, False, False, False
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if front:
            front = not (number > 1 and stripped == "---")
            continue
        if fence and stripped.startswith(fence) and not stripped.strip(fence[0]):
            fence = None  # the closing fence
            continue
        opener = re.match(r"^(`{3,}|~{3,})(.*)$", stripped)
        if opener and not fence:
            fence, info = opener.group(1), opener.group(2).strip()
            # a directive's body ({note}, {warning}) is prose; code, math and figures are not
            fence_prose = info.startswith("{") and not info.startswith(("{code-cell}", "{math}", "{glue", "{figure}", "{image}"))
            continue
        if stripped.startswith("$$"):  # display math: "$$" alone opens or closes a block
            display_math ^= stripped.count("$$") == 1
            continue
        if stripped.startswith(("\\begin{", "\\end{")):  # an amsmath environment
            env_math = stripped.startswith("\\begin{")
            continue
        if (fence and not fence_prose) or display_math or env_math:
            continue
        if stripped.startswith((">", ":", "+++", "(", "<!--")):
            continue
        for match in TYPED_NUMBER.finditer(NOT_TYPED.sub(" ", line)):
            found.append((number, match.group(0), stripped))
    return found


# ---------------------------------------------------------------------------------------------
# Stale-chapter banner (a Sphinx extension: _config.yml lists accelerando.book)

STALE_BANNER_TITLE = "Stale result"


def stale_banner(chapter: str, reasons: list[str]) -> str:
    """A MyST admonition styled as a warning: the chapter's result no longer matches its code or data."""
    record = BOOK_RECORD_DIR / f"{chapter}.json"
    commit = "unknown"
    if record.exists():
        commit = (json.loads(record.read_text()).get("git") or {}).get("commit") or "unknown"
    listed = "\n".join(f"- {reason}" for reason in reasons[:12])
    more = f"\n- ... and {len(reasons) - 12} more" if len(reasons) > 12 else ""
    return (f"```{{admonition}} {STALE_BANNER_TITLE}\n:class: warning\n\nThis page was executed at commit `{commit[:10]}`; code or data "
            f"changed since, so its figures may not be what the current code gives:\n\n{listed}{more}\n\n"
            f"`make book` re-executes it.\n```\n")


def _mark_stale_page(app, docname: str, source: list[str]) -> None:
    """Sphinx `source-read`: put `stale_banner` after the first cell of a stale executed chapter."""
    folder, _, chapter = docname.rpartition("/")
    if folder != "book/chapters" or chapter not in chapter_names():
        return
    reasons = book_status(chapter)
    if not reasons:
        return
    nb = json.loads(source[0])
    banner = {"cell_type": "markdown", "metadata": {}, "source": stale_banner(chapter, reasons)}
    nb["cells"].insert(1 if nb["cells"] else 0, banner)
    source[0] = json.dumps(nb)


def setup(app) -> dict:
    """Sphinx extension entry point (named in _config.yml): marks stale chapters in the HTML."""
    app.connect("source-read", _mark_stale_page)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


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
    run.add_argument("--allow-dirty", action="store_true",
                     help="run into the book from uncommitted changes (the record stores the diff)")
    build = sub.add_parser("build", help="execute every chapter that changed, then build the HTML")
    build.add_argument("--force", action="store_true", help="re-execute every chapter")
    build.add_argument("--no-html", action="store_true", help="execute chapters only")
    build.add_argument("--allow-dirty", action="store_true",
                       help="run from uncommitted changes (each record stores the diff)")
    build.add_argument("--set", default="default", dest="param_set",
                       help="parameter set of every chapter (default: the book's; others go to runs/<set>/)")
    build.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="run each stale chapter as a Ray task on this cluster ('local': a Ray on this machine)")
    build.add_argument("--chapters", nargs="+", default=None, metavar="NAME", help="only these chapters")
    sub.add_parser("status", help="list each chapter as current or stale, and why")
    numbers = sub.add_parser("numbers", help="list numbers typed in a chapter's prose (not glued, quoted or labels)")
    numbers.add_argument("chapter")
    sub.add_parser("glance", help="write the Results at a glance page from the chapters' run records")
    show = sub.add_parser("params", help="list a chapter's parameters and sets")
    show.add_argument("chapter")
    args = parser.parse_args(argv)

    try:
        if args.command == "run":
            overrides = {name: _parse_value(value) for name, value in args.p}
            run_chapter(args.chapter, args.param_set, overrides, out=args.out, force=args.force,
                        allow_dirty=args.allow_dirty)
        elif args.command == "build":
            chapters = args.chapters or chapter_names()
            unknown = sorted(set(chapters) - set(chapter_names()))
            if unknown:
                raise ChapterError(f"no chapter(s) {unknown}; the chapters are {chapter_names()}")
            if args.ray_address:
                run_on_ray(chapters, args.ray_address, args.param_set, force=args.force, allow_dirty=args.allow_dirty)
            else:
                for chapter in chapters:
                    run_chapter(chapter, args.param_set, force=args.force, allow_dirty=args.allow_dirty)
            if not args.no_html and args.param_set == "default":
                index = build_html()
                print(f"[book] built {index.relative_to(REPO_ROOT)}")
        elif args.command == "status":
            for chapter in chapter_names():
                reasons = book_status(chapter)
                print(f"{chapter}: {'stale' if reasons else 'current'}")
                for reason in reasons:
                    print(f"    {reason}")
        elif args.command == "numbers":
            found = typed_numbers(args.chapter)
            for line, number, text in found:
                print(f"{args.chapter}.md:{line}: {number}    {text[:110]}")
            print(f"{len(found)} typed numbers in {args.chapter}")
        elif args.command == "glance":
            print(f"[book] wrote {write_glance().relative_to(REPO_ROOT)}")
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
