"""The chapter runner: parameter validation, caching, loud failures, and the strict HTML build."""

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from accelerando import book
from accelerando.book import ChapterError, cache_key, chapter_names, resolve_params, run_chapter

FAILING_CHAPTER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A chapter that fails

```{code-cell} ipython3
:tags: [parameters]

divisor = 0  # the failing cell divides by this
```

```{code-cell} ipython3
print("before the failure")
1 / divisor
```
"""


@pytest.fixture
def scratch_book(tmp_path, monkeypatch):
    """A book tree in tmp_path holding one chapter that fails."""
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    (chapters / "99_fails.md").write_text(FAILING_CHAPTER)
    monkeypatch.setattr(book, "CHAPTERS", chapters)
    monkeypatch.setattr(book, "REPO_ROOT", tmp_path)
    return tmp_path


def test_every_chapter_has_a_smoke_and_gpu_set():
    assert chapter_names(), "no chapters found"
    for chapter in chapter_names():
        sets = book.param_sets(chapter)
        assert {"default", "smoke", "gpu"} <= set(sets), chapter
        for name in sets:
            resolve_params(chapter, name)  # every set names real parameters with the right types


def test_unknown_parameter_is_an_error_naming_the_known_ones():
    chapter = chapter_names()[0]
    with pytest.raises(ChapterError, match=r"unknown parameter 'presett'.*preset"):
        resolve_params(chapter, overrides={"presett": "tiny"})


def test_wrong_type_unknown_set_and_missing_chapter_are_errors():
    chapter = chapter_names()[0]
    with pytest.raises(ChapterError, match="takes a int"):
        resolve_params(chapter, overrides={"threads": "two"})
    with pytest.raises(ChapterError, match="no parameter set 'fast'"):
        resolve_params(chapter, "fast")
    with pytest.raises(ChapterError, match="no chapter '00_nothing'"):
        resolve_params("00_nothing")


def test_cache_key_follows_parameters():
    chapter = chapter_names()[0]
    smoke = resolve_params(chapter, "smoke")
    assert cache_key(chapter, smoke) == cache_key(chapter, dict(smoke))
    assert cache_key(chapter, smoke) != cache_key(chapter, {**smoke, "seed": 1})


def test_a_result_is_current_until_its_source_parameters_or_library_change(tmp_path, monkeypatch):
    from accelerando import record as record_module

    chapter = chapter_names()[0]
    params = resolve_params(chapter, "smoke")
    lib = tmp_path / "lib"
    (lib / "accelerando").mkdir(parents=True)
    module = lib / "accelerando" / "used.py"
    module.write_text("x = 1\n")
    monkeypatch.setattr(record_module, "LIBRARY_ROOT", lib)
    notebook = tmp_path / f"{chapter}.ipynb"
    notebook.write_text("{}")
    saved = {"cache_key": cache_key(chapter, params), "library": record_module.library_hashes(["accelerando/used.py"]),
             "inputs": {}}
    (tmp_path / f"{chapter}.json").write_text(json.dumps(saved))
    assert book.is_current(chapter, params, notebook, tmp_path)
    assert not book.is_current(chapter, {**params, "seed": 7}, notebook, tmp_path)
    module.write_text('"""A docstring."""\nx = 1  # a comment added\n')
    assert book.is_current(chapter, params, notebook, tmp_path), "comments and docstrings are not code"
    module.write_text("x = 2\n")
    assert not book.is_current(chapter, params, notebook, tmp_path)
    assert book.stale_reasons(chapter, params, notebook, tmp_path) == ["library module accelerando/used.py changed"]


def test_a_changed_checkpoint_makes_a_chapter_stale(tmp_path, monkeypatch):
    """Loading weights through load_checked keys the record on every file of their folder."""
    import torch

    from accelerando import record as record_module
    from accelerando.checkpoint import load_checked, save_fp16

    monkeypatch.setattr(record_module, "_INPUTS", set())
    monkeypatch.setattr(record_module, "REPO_ROOT", tmp_path)
    model = torch.nn.Linear(2, 2)
    folder = save_fp16(model, tmp_path / "checkpoints" / "m", weights_name="w.safetensors", config_name="config.json",
                       meta={"d": 2})
    load_checked(torch.nn.Linear(2, 2), folder / "w.safetensors")
    chapter = chapter_names()[0]
    params = resolve_params(chapter, "smoke")
    run = record_module.RunRecord(chapter, params=params, record_dir=tmp_path)
    run.save()
    assert set(run.data["inputs"]) == {"checkpoints/m/w.safetensors", "checkpoints/m/config.json"}
    saved = json.loads(run.path.read_text())
    saved["cache_key"] = cache_key(chapter, params)
    run.path.write_text(json.dumps(saved))
    notebook = tmp_path / f"{chapter}.ipynb"
    notebook.write_text("{}")
    assert book.is_current(chapter, params, notebook, tmp_path)
    (folder / "config.json").write_text('{"d": 3}\n')
    assert book.stale_reasons(chapter, params, notebook, tmp_path) == ["input file checkpoints/m/config.json changed"]


def test_files_git_ignores_are_not_inputs(tmp_path, monkeypatch):
    """A training run's resume state or kept-best copies beside a checkpoint are not in a fresh
    clone: keying on them would stale every chapter there."""
    import subprocess

    from accelerando import record as record_module

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("checkpoints/**/resume_state.*\ncheckpoints/*/top3/\n")
    folder = tmp_path / "checkpoints" / "m"
    (folder / "top3" / "1").mkdir(parents=True)
    for name in ("w.safetensors", "config.json", "resume_state.pt", "top3/1/w.safetensors"):
        (folder / name).write_text(name)
    monkeypatch.setattr(record_module, "_INPUTS", set())
    monkeypatch.setattr(record_module, "REPO_ROOT", tmp_path)
    record_module.note_input(folder / "w.safetensors")
    assert record_module._input_files() == ["checkpoints/m/config.json", "checkpoints/m/w.safetensors"]


def test_a_book_run_refuses_a_dirty_tree(scratch_book, monkeypatch):
    monkeypatch.setattr(book, "BOOK", scratch_book / "book")
    monkeypatch.setattr(book, "BOOK_RECORD_DIR", scratch_book / "book" / "records")
    monkeypatch.setattr(book, "dirty_files", lambda root, ignore: ["lib/accelerando/audio.py"])
    with pytest.raises(ChapterError, match=r"(?s)uncommitted changes.*lib/accelerando/audio.py.*--allow-dirty"):
        run_chapter("99_fails")
    assert not (scratch_book / "book" / "chapters" / "99_fails.ipynb").exists()
    # another set (into runs/) may run from a dirty tree: it gets as far as executing
    with pytest.raises(ChapterError, match="ZeroDivisionError"):
        run_chapter("99_fails", overrides={"divisor": 0})


def test_stale_page_gets_a_banner(monkeypatch):
    chapter = chapter_names()[0]
    monkeypatch.setattr(book, "book_status", lambda name: ["library module accelerando/audio.py changed"])
    source = [json.dumps({"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# Title"}]})]
    book._mark_stale_page(None, f"book/chapters/{chapter}", source)
    cells = json.loads(source[0])["cells"]
    assert cells[0]["source"] == "# Title" and book.STALE_BANNER_TITLE in cells[1]["source"]
    assert "accelerando/audio.py changed" in cells[1]["source"] and "executed at commit" in cells[1]["source"]
    monkeypatch.setattr(book, "book_status", lambda name: [])
    untouched = [json.dumps({"cells": []})]
    book._mark_stale_page(None, f"book/chapters/{chapter}", untouched)
    assert untouched == [json.dumps({"cells": []})]


def test_cli_status_lists_every_chapter():
    out = subprocess.run([sys.executable, "-m", "accelerando.book", "status"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for chapter in chapter_names():
        assert f"{chapter}: current" in out.stdout or f"{chapter}: stale" in out.stdout


def test_failing_chapter_fails_loudly_and_keeps_the_previous_result(scratch_book):
    out = scratch_book / "book" / "99_fails.ipynb"
    out.parent.mkdir()
    out.write_text("previous result")
    with pytest.raises(ChapterError) as err:
        run_chapter("99_fails", out=out)
    message = str(err.value)
    assert "ZeroDivisionError" in message and "1 / divisor" in message
    assert out.read_text() == "previous result"
    assert (scratch_book / "runs" / "failed" / "99_fails.ipynb").exists()


def test_cli_reports_unknown_parameter_cleanly():
    out = subprocess.run([sys.executable, "-m", "accelerando.book", "run", chapter_names()[0], "-p", "nope", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown parameter 'nope'" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("chapter", chapter_names())
def test_chapter_smoke_run(chapter, tmp_path):
    """Execute the chapter with its smoke set and check its record and the numbers its prose shows."""
    out = run_chapter(chapter, "smoke", out=tmp_path / f"{chapter}.ipynb", force=True)
    record = json.loads((tmp_path / "records" / f"{chapter}.json").read_text())
    assert record["param_set"] == "smoke" and record["cache_key"]
    assert record["measurements"] and record["figures"]
    assert record["git"]["commit"] is None or len(record["git"]["commit"]) == 40
    assert {"torch", "diffusers", "transformers"} <= set(record["packages"])
    assert record["hardware"]["torch_threads"] == record["params"]["threads"]  # start_chapter fixed them first
    # every figure the record holds is glued, and the value the prose shows is the recorded one (a
    # later glue of the same name with another value would put a number in the text the record lacks)
    glued = book.glued_values(out)
    assert set(record["figures"]) <= set(glued), "figures recorded but never glued"
    for name, figure in record["figures"].items():
        for text in glued[name]:
            assert math.isclose(float(ast.literal_eval(text)), figure["value"], rel_tol=1e-5, abs_tol=1e-6), (name, text, figure)


def test_book_builds_strictly(tmp_path):
    """The committed executed chapters build into HTML with warnings as errors, and each page is
    either current or says that it is stale."""
    vendor = book.BOOK / "vendor"
    assert vendor.exists(), "book/vendor is missing: run `make vendor` (scripts/vendor_js.sh) first"
    res = subprocess.run(book.jupyter_book_command(tmp_path), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert (tmp_path / "_build" / "html" / "index.html").exists()
    executed = [c for c in chapter_names() if (book.BOOK / "chapters" / f"{c}.ipynb").exists()]
    assert len(executed) >= len(chapter_names()) - 1  # at most one new chapter awaits its first execution
    for chapter in executed:
        page = (tmp_path / "_build" / "html" / "book" / "chapters" / f"{chapter}.html").read_text()
        stale = book.book_status(chapter)
        assert (book.STALE_BANNER_TITLE in page) == bool(stale), (chapter, stale)


def test_typed_numbers_lists_prose_numbers_only():
    text = FAILING_CHAPTER + (
        "\nThe run took 47.55 s on 2 cores, {glue:text}`speedup:.1f` times faster, as the paper says: "
        '"about 10 times" {cite}`ref2024`. Chapter 3 and WP1 use W4A4 in fp16.\n'
        "> a quoted 12\n\n```{code-cell} ipython3\nx = 99\n```\n\n$$\ny = 7\n$$\n"
    )
    assert [number for _, number, _ in book.typed_numbers("99_fails", text)] == ["47.55", "2"]


def test_typed_numbers_of_every_chapter_are_counted(capsys):
    """Not yet a failure: prints how many numbers each chapter's prose types instead of gluing."""
    counts = {chapter: len(book.typed_numbers(chapter)) for chapter in chapter_names()}
    with capsys.disabled():
        print(f"\ntyped numbers in chapter prose (glue them, or mark them as quoted): {counts}")


def test_results_at_a_glance_page_is_made_from_the_records_and_committed_current():
    page = book.glance_page()
    for chapter in chapter_names():
        record = book.BOOK_RECORD_DIR / f"{chapter}.json"
        if record.exists():
            for name, figure in json.loads(record.read_text())["figures"].items():
                assert f"| `{name}` | {book._figure_text(figure['value'])} |" in page, (chapter, name)
    assert book.GLANCE.read_text() == page, "book/chapters/glance.md is behind the records: run `python -m accelerando.book glance`"
