"""Figure: the maximal-update limit beside the NTK parametrization's lazy one, from +sweep=regimes.

    python scripts/fig_mup.py outputs/sweep/regimes/results.csv [--out docs/mup]

Per parametrization in the table (one colour each), against width, log-log:

  (a) kernel_change at the end of training, every seed a point, the mean a line, and the fitted
      exponent with its bootstrap interval over seeds (ntk and standard: width^(−1), the kernel
      stops moving; mup: flat, the kernel keeps moving by a width-independent amount)
  (b) the spread of kernel_change over seeds, std/mean: under mup it shrinks as the width grows
      (each width's nets approach the same limit), which unstable runs would not do
  (c) the trained function on the test points: the RMS over test points of the std over seeds of
      f_T(x*) (solid), and of the seed-mean f_T at each width minus that at the widest (dashed).
      Under mup f_0 → 0 and training converges to one width-independent function, so both fall;
      under ntk the trained function keeps f_0's O(1) random part, so its spread over seeds stays.

Runs need kernel_change tracked and their predictions.pt. The numbers are saved with the figure as
STEM.json: {"kernel_change": {p: {"width": [...], "mean": [...], "relative_spread": [...], "fit": fit}},
"function": {p: {"width": [...], "seed_spread": [...], "distance_to_widest": [...] (null at the
widest), "seed_spread_fit": fit or null, "distance_fit": fit or null}}}; fits {exponent, prefactor,
low, high, n_points, n_groups} (a power law in width by least squares in log-log).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from figure_common import (WIDTH_CURVE_FREE, arguments, finished_runs, fit_numbers, require,  # noqa: E402
                           require_one_setting, save_numbers)
from ntklab import results  # noqa: E402
from ntklab.plots import save_figure  # noqa: E402
from ntklab.scaling import can_fit, fit_power_law, fit_with_bootstrap  # noqa: E402


def final_outputs(run_dir) -> np.ndarray:
    """f_T on the test points, (M, k), from the run's predictions.pt."""
    saved = torch.load(Path(run_dir) / results.PREDICTIONS, map_location="cpu", weights_only=True)
    return saved["f_final"].double().numpy()


def _fit(widths, values):
    keep = [(w, v) for w, v in zip(widths, values) if v is not None and v > 0]
    return fit_numbers(fit_power_law(*zip(*keep))) if len({w for w, _ in keep}) >= 2 else None


def main() -> None:
    args = arguments(__doc__, "mup")
    runs = finished_runs(args.table)
    require(runs, ["final.kernel_change"], "track kernel_change")
    numbers = {"kernel_change": {}, "function": {}}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for i, (parametrization, group) in enumerate(sorted(runs.groupby("model.parametrization"))):
        require_one_setting(group, WIDTH_CURVE_FREE, f"the {parametrization} curves")
        color = f"C{i}"
        widths = sorted(group["model.width"].unique())
        by_width = [group[group["model.width"] == w] for w in widths]
        changes = [rows["final.kernel_change"].to_numpy() for rows in by_width]
        means = [float(c.mean()) for c in changes]
        spread = [float(c.std(ddof=1) / c.mean()) if len(c) > 1 else None for c in changes]
        ax = axes[0]
        ax.plot(group["model.width"], group["final.kernel_change"], "o", color=color, alpha=0.5, markersize=4)
        fit = (fit_with_bootstrap(group, "model.width", "final.kernel_change")
               if can_fit(group, "model.width", "final.kernel_change") else None)
        label = parametrization + (f": {fit.label()}" if fit is not None else "")
        ax.plot(widths, means, "-", color=color, label=label)
        numbers["kernel_change"][parametrization] = {"width": [int(w) for w in widths], "mean": means,
                                                     "relative_spread": spread,
                                                     "fit": None if fit is None else fit_numbers(fit)}
        axes[1].plot(widths, spread, "o-", color=color, label=parametrization)
        outputs = [np.stack([final_outputs(d) for d in rows["run_dir"]]) for rows in by_width]   # (seeds, M, k)
        seed_spread = [float(np.sqrt((o.std(axis=0, ddof=1) ** 2).mean())) if len(o) > 1 else None for o in outputs]
        widest = outputs[-1].mean(axis=0)
        distance = [float(np.sqrt(((o.mean(axis=0) - widest) ** 2).mean())) for o in outputs[:-1]] + [None]
        numbers["function"][parametrization] = {"width": [int(w) for w in widths], "seed_spread": seed_spread,
                                                "distance_to_widest": distance,
                                                "seed_spread_fit": _fit(widths, seed_spread),
                                                "distance_fit": _fit(widths[:-1], distance[:-1])}
        axes[2].plot(widths, seed_spread, "o-", color=color, label=f"{parametrization}: spread over seeds")
        axes[2].plot(widths[:-1], distance[:-1], "s--", color=color, label=f"{parametrization}: to the widest")
    axes[0].set(xscale="log", yscale="log", xlabel="width", ylabel="kernel_change at the end",
                title="(a) how far the kernel moves")
    axes[1].set(xscale="log", yscale="log", xlabel="width", ylabel="std / mean over seeds",
                title="(b) kernel_change's spread over seeds")
    axes[2].set(xscale="log", yscale="log", xlabel="width", ylabel="RMS over test points",
                title="(c) the trained function f_T(x*)")
    for ax in axes:
        ax.legend(fontsize=7)
    for path in save_figure(fig, args.out):
        print(path)
    print(save_numbers(args.out, numbers))


if __name__ == "__main__":
    main()
