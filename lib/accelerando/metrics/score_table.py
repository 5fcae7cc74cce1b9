"""`ScoreTable`: per-item scores of several systems, read as intervals and paired comparisons.

The tables a chapter prints about "which configuration is closer to full precision" all take the
same steps: group per-prompt scores by system, bootstrap each mean, pair two systems on the same
prompts. They live here once, on top of `metrics.stats`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .stats import N_RESAMPLES, Estimate, PairedComparison, bootstrap_ci, paired_comparison


class ScoreTable:
    """Per-item scores of several systems (one row per system and item), read as intervals and
    paired comparisons: the tables a chapter prints about "which configuration is closer".

    `rows` is a DataFrame (or a list of dicts) with a `system` column (e.g. "method"), an `item`
    column (e.g. "prompt": the pairing key, the same items for every system) and one column per
    score. Every estimate is a bootstrap over items with `n_resamples` and `seed`, cached.
    """

    def __init__(self, rows, *, system: str = "method", item: str = "prompt", n_resamples: int = N_RESAMPLES,
                 seed: int = 0):
        self.frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
        missing = [c for c in (system, item) if c not in self.frame]
        if missing:
            raise ValueError(f"score rows lack the column(s) {missing}; they have {list(self.frame.columns)}")
        self.system, self.item, self.n_resamples, self.seed = system, item, n_resamples, seed
        self._estimates: dict[tuple[str, str], Estimate] = {}

    @property
    def systems(self) -> list[str]:
        """System names in the order they first appear."""
        return list(dict.fromkeys(self.frame[self.system]))

    def __contains__(self, name: str) -> bool:
        return name in set(self.frame[self.system])

    def values(self, name: str, col: str) -> np.ndarray:
        """[items] scores of system `name` in column `col`, sorted by item."""
        if name not in self:
            raise KeyError(f"no scores of {name!r}: the table holds {self.systems}")
        rows = self.frame[self.frame[self.system] == name].sort_values(self.item)
        return rows[col].to_numpy(dtype=float)

    def estimate(self, name: str, col: str) -> Estimate:
        """Mean of `col` over the items of `name`, with its bootstrap interval."""
        key = (name, col)
        if key not in self._estimates:
            self._estimates[key] = bootstrap_ci(list(self.values(name, col)), n_resamples=self.n_resamples,
                                                seed=self.seed)
        return self._estimates[key]

    def paired(self, a: str, b: str, col: str) -> PairedComparison:
        """a - b on the same items (their item keys must match)."""
        items_a = sorted(self.frame[self.frame[self.system] == a][self.item])
        items_b = sorted(self.frame[self.frame[self.system] == b][self.item])
        if items_a != items_b:
            raise ValueError(f"{a!r} and {b!r} were scored on different {self.item}s: a paired test needs the same ones")
        return paired_comparison(list(self.values(a, col)), list(self.values(b, col)), n_resamples=self.n_resamples,
                                 seed=self.seed)

    def ratio(self, a: str, b: str, col: str) -> float:
        """Mean of `col` for a over the mean for b."""
        return self.estimate(a, col).value / self.estimate(b, col).value

    def closer(self, a: str, b: str, col: str) -> str:
        """'k/n' items on which a scores below b (a distance: a is the closer), with ties counted apart."""
        x, y = self.values(a, col), self.values(b, col)
        ties = int((x == y).sum())
        return f"{int((x < y).sum())}/{len(x)}" + (f" ({ties} tied)" if ties else "")

    def board(self, columns: dict[str, str], digits: dict[str, int] | None = None):
        """DataFrame, a row per system: 'value [low, high]' per column, headed by `columns`
        ({column: label}); `digits` per column (3 by default)."""
        digits = digits or {}
        return pd.DataFrame({name: {label: self.estimate(name, col).text(digits.get(col, 3))
                                    for col, label in columns.items()} for name in self.systems}).T
