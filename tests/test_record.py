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
