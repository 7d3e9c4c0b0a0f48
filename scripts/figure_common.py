"""What the figure scripts share: their command line, the selection of runs from a table, and the
numbers file each writes next to its figure.

Every script saves STEM.png and STEM.pdf and, with :func:`save_numbers`, STEM.json: the numbers the
figure shows (fitted exponents with their intervals, the plotted curves or gaps), so they can be
read, compared and tested without reading pixels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ntklab import results
from ntklab.collect import read_table
from ntklab.scaling import PowerLaw, can_fit, fit_with_bootstrap


def arguments(doc: str, name: str, extra=None) -> argparse.Namespace:
    """``TABLE [--out STEM]``: TABLE a results.csv/.parquet or a sweep directory; the figure goes to
    STEM.png and STEM.pdf (default: <table's directory>/figures/<name>)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", type=Path, help="results.csv / results.parquet, or a sweep directory")
    parser.add_argument("--out", type=Path, default=None, help="output path without suffix")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    base = args.table if args.table.is_dir() else args.table.parent
    args.out = args.out or base / "figures" / name
    return args


def finished_runs(path: Path) -> pd.DataFrame:
    """The runs of a table whose status is ok, with a ``parametrization`` column; an error if none."""
    table = read_table(path)
    if table.empty or "status" not in table:
        raise SystemExit(f"no runs in {path}")
    runs = table[table["status"] == results.OK].copy()
    if runs.empty:
        raise SystemExit(f"no finished (status ok) runs in {path}; statuses: {table['status'].value_counts().to_dict()}")
    return runs


def ended_runs(path: Path) -> pd.DataFrame:
    """The runs of a table that ended, ok or diverged (the step-size figures show both); an error if none."""
    table = read_table(path)
    if table.empty or "status" not in table:
        raise SystemExit(f"no runs in {path}")
    runs = table[table["status"].isin([results.OK, results.DIVERGED])].copy()
    if runs.empty:
        raise SystemExit(f"no ok or diverged runs in {path}; statuses: {table['status'].value_counts().to_dict()}")
    return runs


def step_size_ratio(runs: pd.DataFrame) -> pd.Series:
    """η/η_max of each run, η_max = 2Nk/λ_max of its own empirical NTK at init where the run computed
    it (optim.lr_unit=eta_max_empirical, as +sweep=eos), else of the analytic NTK."""
    if "eta_max.empirical" in runs and runs["eta_max.empirical"].notna().all():
        return runs["learning_rate"] / runs["eta_max.empirical"]
    require(runs, ["lr_over_eta_max"], "the runs need an η_max (optim.lr_unit eta_max or eta_max_empirical)")
    return runs["lr_over_eta_max"]


def require(runs: pd.DataFrame, columns, why: str) -> None:
    """Exit with a message naming the columns a figure needs and the table lacks."""
    missing = [c for c in columns if c not in runs or runs[c].isna().all()]
    if missing:
        raise SystemExit(f"the table has no values for {', '.join(missing)}: {why}")


def one_parametrization(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of one parametrization: ntk when present, else the first in the table."""
    names = list(dict.fromkeys(runs["model.parametrization"]))
    return runs[runs["model.parametrization"] == ("ntk" if "ntk" in names else names[0])]


# A run's settings: its config columns under these prefixes and these top-level names, except those
# that change no number a figure shows (where the data lie, how the work was split or reported).
_SETTING_PREFIXES = ("model.", "data.", "optim.")
_TOP_SETTINGS = ("width", "depth", "parametrization", "dtype", "seed", "ridge", "ridges", "validation_fraction",
                 "solver")
_NOT_SETTINGS = ("data.root", "optim.chunk_size", "optim.divergence_check_every")
# top-level names the model config interpolates: one setting under two columns
_ALIASES = {"width": "model.width", "depth": "model.depth", "parametrization": "model.parametrization"}
# what a parametrization's curve against width pools: its widths and seeds
WIDTH_CURVE_FREE = ("model.width", "seed", "model.parametrization")


def setting_text(values: pd.Series) -> pd.Series:
    """A setting's values as comparable text: a missing value is "null" (NaN equals nothing, itself
    included), a whole float is written as the integer a column with gaps turned it into, and a list
    as a CSV table writes it, whether it came back as text (CSV) or as an array (parquet)."""
    def text(value):
        if isinstance(value, (list, tuple, np.ndarray)):
            return str([item.item() if isinstance(item, np.generic) else item for item in value])
        if value is None or value is pd.NA or isinstance(value, float) and np.isnan(value):
            return "null"
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

    return values.map(text)


def setting_columns(runs: pd.DataFrame) -> list:
    """The columns of ``runs`` that are settings (config columns: model.*, data.*, optim.*, seed,
    dtype, ridge, solver, ...), each setting once: a top-level width, depth or parametrization is
    left out where its model.* column is there."""
    return [column for column in runs.columns
            if (column.startswith(_SETTING_PREFIXES) or column in _TOP_SETTINGS) and column not in _NOT_SETTINGS
            and not (column in _ALIASES and _ALIASES[column] in runs)]


def differing_settings(runs: pd.DataFrame, free=()) -> list:
    """The settings (:func:`setting_columns`) whose values differ among ``runs``, apart from those in
    ``free`` (a top-level width, depth or parametrization counts as its model.* column); each as
    "column (value, value, ...)"."""
    free = {_ALIASES.get(c, c) for c in free}
    differing = []
    for column in setting_columns(runs):
        if _ALIASES.get(column, column) in free:
            continue
        values = setting_text(runs[column]).unique()
        if len(values) > 1:
            differing.append(f"{column} ({', '.join(sorted(values)[:4])}{', ...' if len(values) > 4 else ''})")
    return differing


def require_one_setting(runs: pd.DataFrame, free, what: str) -> None:
    """Exit, naming them, when ``runs`` differ in a setting besides ``free``: ``what`` pools or fits
    them as one experiment, and runs of another data set, readout or learning rate are not one."""
    differing = differing_settings(runs, free)
    if differing:
        raise SystemExit(f"{what} would pool runs that differ in {'; '.join(differing)}: pass a table of one "
                         "experiment (collect one sweep, or filter the table)")


def one_seed(runs: pd.DataFrame, seed=None) -> pd.DataFrame:
    """The runs of one parametrization and one seed (the smallest unless given), sorted by width;
    exits if a width still has several runs (the table varies something else: depth, α, data ...)."""
    runs = one_parametrization(runs)
    seed = runs["seed"].min() if seed is None else seed
    runs = runs[runs["seed"] == seed].sort_values("model.width")
    if runs["model.width"].duplicated().any():
        varying = differing_settings(runs, free=("model.width",))
        raise SystemExit(f"several runs per width for seed {seed}; they differ in {'; '.join(varying) or 'unknown columns'}"
                         " — pass a table of one sweep over width")
    return runs


def plot_width_fits(ax, runs: pd.DataFrame, quantity: str) -> list:
    """Every run's ``quantity`` against width as a point, one colour per parametrization, and each
    parametrization's fitted power law (with its bootstrap interval in the legend) where it has at
    least two widths. Returns [(parametrization, PowerLaw), ...] for the fits drawn. Exits when one
    parametrization's runs differ in a setting besides width and seed (:func:`require_one_setting`)."""
    fits = []
    for i, (parametrization, group) in enumerate(sorted(runs.groupby("model.parametrization"))):
        require_one_setting(group, WIDTH_CURVE_FREE, f"the {parametrization} fit of {quantity} against width")
        ax.plot(group["model.width"], group[quantity], "o", color=f"C{i}", alpha=0.5, markersize=4)
        if not can_fit(group, "model.width", quantity):
            print(f"{quantity}, {parametrization}: no fit (fewer than two widths with a finite positive value)")
            continue
        fit = fit_with_bootstrap(group, "model.width", quantity)
        widths = np.geomspace(group["model.width"].min(), group["model.width"].max(), 50)
        ax.plot(widths, fit(widths), "-", color=f"C{i}", label=f"{parametrization}: {fit.label()}")
        fits.append((parametrization, fit))
    return fits


def plot_half_power_reference(ax, runs: pd.DataFrame, quantity: str) -> None:
    """The width^(-1/2) line through the median of ``quantity`` at the smallest width."""
    widths = np.geomspace(runs["model.width"].min(), runs["model.width"].max(), 50)
    anchor = runs.loc[runs["model.width"] == runs["model.width"].min(), quantity].median()
    ax.plot(widths, anchor * (widths / widths[0]) ** -0.5, "k--", linewidth=1, label="width$^{-1/2}$")


def fit_numbers(fit: PowerLaw) -> dict:
    """A fitted power law as plain numbers: y ≈ prefactor · x^exponent, the exponent's bootstrap
    interval [low, high] (null with one seed) and how many runs and seeds it rests on."""
    return {"exponent": fit.exponent, "prefactor": fit.prefactor, "low": fit.low, "high": fit.high,
            "n_points": fit.n_points, "n_groups": fit.n_groups}


def save_numbers(stem: Path, numbers: dict) -> Path:
    """Write ``numbers`` as STEM.json (strict JSON: NaN becomes null) and return its path."""
    stem = Path(stem)
    path = stem.with_name(f"{stem.name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    results.write_json(path, numbers)
    return path
