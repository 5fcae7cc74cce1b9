import numpy as np
import pytest

from accelerando.metrics.score_table import ScoreTable
from accelerando.metrics.stats import bootstrap_ci, paired_comparison


def rows():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 1.0, 12)
    # "worse" is further from the reference on every prompt, listed in another order
    return ([{"method": "better", "prompt": i, "mrstft": float(v)} for i, v in enumerate(base)]
            + [{"method": "worse", "prompt": i, "mrstft": float(v + 0.1)} for i, v in reversed(list(enumerate(base)))])


def test_estimates_and_pairs_match_the_statistics_they_wrap():
    table = ScoreTable(rows(), n_resamples=200, seed=3)
    better = [r["mrstft"] for r in rows() if r["method"] == "better"]
    assert table.systems == ["better", "worse"]
    assert table.estimate("better", "mrstft") == bootstrap_ci(better, n_resamples=200, seed=3)
    cmp = table.paired("better", "worse", "mrstft")
    assert cmp.mean_diff.value == pytest.approx(-0.1)
    assert cmp.mean_diff.value == paired_comparison(better, [v + 0.1 for v in better], n_resamples=200, seed=3).mean_diff.value
    assert table.closer("better", "worse", "mrstft") == "12/12"
    assert table.ratio("worse", "better", "mrstft") > 1
    board = table.board({"mrstft": "MR-STFT"})
    assert list(board.index) == ["better", "worse"] and board.loc["better", "MR-STFT"].count("[") == 1


def test_bad_tables_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="lack the column"):
        ScoreTable([{"system": "a", "prompt": 0, "x": 1.0}])
    table = ScoreTable(rows()[:-1])  # "worse" lost one prompt
    with pytest.raises(ValueError, match="different prompts"):
        table.paired("better", "worse", "mrstft")
    with pytest.raises(KeyError, match="no scores of 'other'"):
        table.values("other", "mrstft")
