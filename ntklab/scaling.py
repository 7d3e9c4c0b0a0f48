"""Power laws fitted to sweep results: y ≈ C · x^p, with a bootstrap interval over seeds.

    log y = log C + p log x   (least squares over every (x, y) pair)

The interval resamples whole seeds with replacement (each seed's runs at every width stay
together, since a seed's data set and initial network are shared across widths only through
the seed) and refits; the percentile interval of the refitted p is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class PowerLaw:
    """y ≈ prefactor · x^exponent; ``low``/``high``: bootstrap interval of the exponent (NaN with fewer than
    two seeds that each span two x values)."""

    exponent: float
    prefactor: float
    low: float = float("nan")
    high: float = float("nan")
    n_points: int = 0
    n_groups: int = 0

    def __call__(self, x):
        return self.prefactor * np.asarray(x, dtype=float) ** self.exponent

    def label(self) -> str:
        interval = "" if np.isnan(self.low) else f" [{self.low:.2f}, {self.high:.2f}]"
        return f"slope {self.exponent:.2f}{interval}"


def fit_power_law(x, y) -> PowerLaw:
    """Least-squares fit of log y on log x; x and y finite and positive, at least two distinct x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {x.shape} and {y.shape}")
    if not (np.all(_usable(x)) and np.all(_usable(y))):
        bad = [f"{name} = {float(value)!r}" for name, values in (("x", x), ("y", y)) for value in values[~_usable(values)]]
        raise ValueError(f"a power law needs finite positive x and y, got {', '.join(bad[:3])}")
    if np.unique(x).size < 2:
        raise ValueError("a power law needs at least two distinct x values")
    exponent, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return PowerLaw(float(exponent), float(np.exp(intercept)), n_points=x.size)


def _usable(values) -> np.ndarray:
    """Which values a log-log fit can take: finite and positive (NaN, ±inf, 0 and below cannot)."""
    values = np.asarray(values, dtype=float)
    return np.isfinite(values) & (values > 0)


def usable_rows(table: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The rows of ``table`` whose ``x`` and ``y`` a power law can be fitted to (finite, positive)."""
    return table[_usable(table[x]) & _usable(table[y])]


def can_fit(table: pd.DataFrame, x: str, y: str) -> bool:
    """Whether :func:`fit_with_bootstrap` has a fit to give: two distinct x among the usable rows."""
    return usable_rows(table, x, y)[x].nunique() >= 2


def fit_with_bootstrap(table: pd.DataFrame, x: str, y: str, group: Optional[str] = "seed", n_boot: int = 2000,
                       level: float = 0.95, seed: int = 0) -> PowerLaw:
    """Fit ``table[y]`` against ``table[x]``; the interval resamples the values of column ``group``.

    Rows with a missing, infinite or non-positive x or y (a diverged run, say) are left out of the fit
    (:func:`can_fit` says whether two distinct x remain; ValueError otherwise). The interval
    needs two groups that each span two or more x values (NaN otherwise): beside one such group, a
    group at a single x only moves that group's slope by its leverage, which says nothing about how
    the exponent varies from seed to seed.
    """
    rows = usable_rows(table[[c for c in (x, y, group) if c]].dropna(), x, y)
    fit = fit_power_law(rows[x].to_numpy(), rows[y].to_numpy())
    groups = np.unique(rows[group]) if group else np.array([])
    spanning = sum(rows.loc[rows[group] == g, x].nunique() >= 2 for g in groups)
    if spanning < 2:
        return PowerLaw(fit.exponent, fit.prefactor, n_points=fit.n_points, n_groups=groups.size)
    log_x = {g: np.log(rows.loc[rows[group] == g, x].to_numpy(dtype=float)) for g in groups}
    log_y = {g: np.log(rows.loc[rows[group] == g, y].to_numpy(dtype=float)) for g in groups}
    rng = np.random.default_rng(seed)
    exponents = []
    for _ in range(n_boot):
        chosen = rng.choice(groups, size=groups.size, replace=True)
        lx = np.concatenate([log_x[g] for g in chosen])
        ly = np.concatenate([log_y[g] for g in chosen])
        dx = lx - lx.mean()
        if np.ptp(lx) > 0:      # the least-squares slope, Σ dx·dy / Σ dx²
            exponents.append(float(dx @ (ly - ly.mean()) / (dx @ dx)))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(exponents, [tail, 100 - tail])
    return PowerLaw(fit.exponent, fit.prefactor, float(low), float(high), fit.n_points, groups.size)
