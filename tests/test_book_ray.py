"""`python -m accelerando.book build --ray-address`: stale chapters as Ray tasks, results written back here."""

import json
import subprocess
import sys

import pytest

from accelerando.book import REPO_ROOT

CHAPTER = "07_quantized_tokens"  # the quickest smoke run


def test_build_runs_a_chapter_as_a_ray_task_on_a_local_ray():
    pytest.importorskip("ray")
    out = REPO_ROOT / "runs" / "smoke" / f"{CHAPTER}.ipynb"
    record = REPO_ROOT / "runs" / "smoke" / "records" / f"{CHAPTER}.json"
    before = record.stat().st_mtime if record.exists() else 0.0
    res = subprocess.run([sys.executable, "-m", "accelerando.book", "build", "--ray-address", "local", "--set", "smoke",
                          "--chapters", CHAPTER, "--force"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"{CHAPTER}: executing on Ray" in res.stdout
    assert out.is_file() and record.stat().st_mtime > before
    saved = json.loads(record.read_text())
    assert saved["param_set"] == "smoke" and saved["ran_on"] == "a Ray task (local)" and saved["figures"]


def test_build_names_an_unknown_chapter():
    res = subprocess.run([sys.executable, "-m", "accelerando.book", "build", "--chapters", "99_nothing", "--no-html"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "99_nothing" in res.stderr
