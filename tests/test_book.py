"""The chapter runner: parameter validation, caching, loud failures, and the strict HTML build."""

import json
import os
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
    saved = {"cache_key": cache_key(chapter, params), "library": record_module.library_hashes(["accelerando/used.py"])}
    (tmp_path / f"{chapter}.json").write_text(json.dumps(saved))
    assert book.is_current(chapter, params, notebook, tmp_path)
    assert not book.is_current(chapter, {**params, "seed": 7}, notebook, tmp_path)
    module.write_text("x = 2\n")
    assert not book.is_current(chapter, params, notebook, tmp_path)


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
def test_chapter_smoke_run_then_nbval(chapter, tmp_path):
    """Execute the chapter with its smoke set, check its record, then re-run it under nbval-lax."""
    out = run_chapter(chapter, "smoke", out=tmp_path / f"{chapter}.ipynb", force=True)
    record = json.loads((tmp_path / "records" / f"{chapter}.json").read_text())
    assert record["param_set"] == "smoke" and record["cache_key"]
    assert record["measurements"] and record["figures"]
    assert record["git"]["commit"] is None or len(record["git"]["commit"]) == 40
    assert {"torch", "diffusers", "transformers"} <= set(record["packages"])
    # nbval re-executes the executed notebook (smoke parameters injected) and compares marked cells
    env = {**os.environ, "ACCELERANDO_RECORD_DIR": str(tmp_path / "nbval-records"), "WANDB_MODE": "disabled"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "--nbval-lax", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def test_book_builds_strictly(tmp_path):
    """The committed executed chapters build into HTML with warnings as errors."""
    vendor = book.BOOK / "vendor"
    assert vendor.exists(), "book/vendor is missing: run `make vendor` (scripts/vendor_js.sh) first"
    res = subprocess.run(book.jupyter_book_command(tmp_path), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert (tmp_path / "_build" / "html" / "index.html").exists()
