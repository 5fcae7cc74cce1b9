"""Run records: the promised fields, strict JSON, and refusal of non-finite figures."""

import json
import math

import pytest

from accelerando.record import RunRecord, load_record


def test_record_round_trip(tmp_path):
    run = RunRecord("00_test", params={"preset": "tiny", "seconds": [1.0]}, seed=3, record_dir=tmp_path)
    run.log({"component": "x", "latency_s_min": 0.5}, threads=1)
    run.log(component="y", value=float("nan"))
    assert run.figure("answer", 42, unit="s") == 42
    import numpy as np

    assert type(run.figure("ratio", np.float64(1.5))) is float  # glued as 1.5, not np.float64(1.5)
    with pytest.raises(TypeError, match="real number"):
        run.figure("label", "fast")
    path = run.save()
    data = json.loads(path.read_text())  # strict JSON: no NaN tokens
    assert data["params"] == {"preset": "tiny", "seconds": [1.0]} and data["seed"] == 3
    assert {"git", "packages", "hardware", "started", "finished"} <= set(data)
    # the library modules this process imported, hashed, for the chapter runner's cache
    assert len(data["library"]["accelerando/record.py"]) == 16
    assert data["hardware"]["cpu_count"] >= 1
    assert data["measurements"][0] == {"component": "x", "latency_s_min": 0.5, "threads": 1}
    assert data["measurements"][1]["value"] is None
    assert data["figures"]["answer"] == {"value": 42, "unit": "s", "note": None}
    assert data["figures"]["ratio"]["value"] == 1.5
    assert load_record("00_test", tmp_path) == data


def test_non_finite_figure_is_refused(tmp_path):
    run = RunRecord("00_test", params={}, record_dir=tmp_path)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            run.figure("bad", bad)


def test_missing_record_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="make book"):
        load_record("07_nothing", tmp_path)


def test_code_hash_ignores_comments_and_docstrings_only(tmp_path):
    from accelerando.record import code_hash

    path = tmp_path / "m.py"
    path.write_text('"""Module."""\n\ndef f(x):\n    """Doubles."""\n    return 2 * x\n')
    base = code_hash(path)
    path.write_text('"""Module, reworded."""\n\n\ndef f(x):  # why: a comment\n    """Twice x."""\n    return 2 * x\n')
    assert code_hash(path) == base
    path.write_text('"""Module."""\n\ndef f(x):\n    """Doubles."""\n    return 3 * x\n')
    assert code_hash(path) != base
    path.write_text('"""Module."""\n\ndef f(x):\n    """Doubles."""\n    return 2 * x\nMESSAGE = "a string constant is code"\n')
    assert code_hash(path) != base


CHAPTER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A chapter

```{code-cell} ipython3
:tags: [parameters]

seed = 0      # a seed
threads = 1   # torch threads
sizes = [1, 2]
```
"""


def test_start_chapter_records_every_parameter_and_shows_provenance(tmp_path, monkeypatch, capsys):
    import torch

    from accelerando.record import start_chapter

    source = tmp_path / "98_chapter.md"
    source.write_text(CHAPTER)
    monkeypatch.setenv("ACCELERANDO_RECORD_DIR", str(tmp_path))
    before = torch.get_num_threads()
    try:
        namespace = {"seed": 3, "threads": 1, "sizes": [4], "unrelated": "not a parameter"}
        run = start_chapter("98_chapter", namespace, source=source)
    finally:
        torch.set_num_threads(before)
    assert run.data["params"] == {"seed": 3, "threads": 1, "sizes": [4]} and run.data["seed"] == 3
    assert run.data["hardware"]["torch_threads"] == 1
    shown = capsys.readouterr().out
    assert run.data["hardware"]["cpu"] in shown and "threads" in shown and "torch" in shown
    assert (run.data["git"]["commit"] or "no git commit")[:10] in shown
    with pytest.raises(NameError, match="threads"):
        start_chapter("98_chapter", {"seed": 0, "sizes": []}, source=source)


def test_book_outputs_do_not_make_the_tree_dirty_but_code_and_new_files_do(tmp_path):
    import subprocess

    from accelerando.machine import git_commit, git_diff

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "lib.py").write_text("x = 1\n")
    (tmp_path / "book" / "records").mkdir(parents=True)
    (tmp_path / "book" / "records" / "01.json").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    assert git_commit(tmp_path)["dirty"] is False

    # another chapter's fresh record, as when the book is re-executed chapter by chapter
    (tmp_path / "book" / "records" / "01.json").write_text('{"new": 1}\n')
    state = git_commit(tmp_path)
    assert state["dirty"] is False and "book/records/" in state["ignored"]
    assert git_diff(tmp_path) == ""

    (tmp_path / "lib.py").write_text("x = 2\n")
    assert git_commit(tmp_path)["dirty"] is True
    assert "lib.py" in git_diff(tmp_path) and "01.json" not in git_diff(tmp_path)
    git("checkout", "lib.py")
    (tmp_path / "new_module.py").write_text("y = 1\n")
    assert git_commit(tmp_path)["dirty"] is True
