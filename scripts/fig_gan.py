"""Figure: the GAN demo's sweep over generator regimes and seeds, with confidence intervals.

    python -m ntklab gan -m seed=0,1,2,3,4 generator=frozen,chaotic,layer_norm,batch_norm hydra.sweep.dir=S
    python scripts/fig_gan.py S [S2 ...] [--out docs/gan_ring]

Reads every finished run (gan.json with status ok, its metrics.jsonl) under the given folders, of
one data set (the first found unless --dataset). One group per generator regime; each number is
the mean over seeds with a 95% Student-t interval (:func:`ntklab.gan.seed_interval`), each seed a
dot. Panels:

    ring     modes covered and high-quality share at the end; the generator's normalised NTK over
             latents (mean off the diagonal) against step, the limit's value at init as a cross
    images   checkerboard share at the end (the data's as a dashed line), diversity (mean pairwise
             distance / the data's), classes covered; the normalised NTK against step

STEM_samples.png shows, for each regime, the final samples of its smallest seed (ring: a scatter
over the modes' 3σ circles; images: 32 of them, the data's beside them).

STEM.json holds the numbers: per regime χ_1, n seeds, steps, and for each metric the seeds' values
and the interval, initial and final, and the NTK curve's mean and interval at each logged step.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from figure_common import save_numbers  # noqa: E402
from ntklab import results  # noqa: E402
from ntklab.gan import seed_interval  # noqa: E402
from ntklab.plots import save_figure  # noqa: E402

METRICS = {"ring": ["modes_covered", "high_quality", "output_std"],
           "images": ["checkerboard", "diversity", "classes_covered", "effective_classes", "output_std"]}
ORDER = ["frozen", "layer_norm", "chaotic", "batch_norm"]


def load_runs(folders, dataset=None):
    """[(summary, records)] of the finished gan runs under ``folders`` of one data set."""
    runs = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("gan.json")):
            if any(part.startswith(".") for part in path.parts):
                continue
            summary = json.loads(path.read_text())
            summary["run_dir"] = str(path.parent)
            if summary.get("status") != results.OK:
                print(f"skipped {path.parent}: status {summary.get('status')}", file=sys.stderr)
                continue
            runs.append((summary, results.read_metrics(path.parent / results.METRICS)))
    if not runs:
        raise SystemExit(f"no finished gan runs under {', '.join(map(str, folders))}")
    dataset = dataset or runs[0][0]["dataset"]
    return dataset, [run for run in runs if run[0]["dataset"] == dataset]


def summarise(runs, kind):
    """{regime: numbers} (module docstring)."""
    groups = {}
    for summary, records in runs:
        groups.setdefault(summary["generator"], []).append((summary, records))
    numbers = {}
    for name in sorted(groups, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        members = groups[name]
        first = members[0][0]
        steps = [r["step"] for r in members[0][1]]
        entry = {"chi_1": first["phase"]["chi_1"], "norm": first["phase"]["norm"],
                 "sigma_w2": first["phase"]["sigma_w2"], "sigma_b2": first["phase"]["sigma_b2"],
                 "seeds": sorted(s["seed"] for s, _ in members), "steps": first["config"]["steps"],
                 "ntk_analytic_init": first["ntk"]["analytic_init"]}
        for metric in METRICS[kind] + ["ntk_offdiag"]:
            entry[metric] = {"initial": seed_interval([s["initial"].get(metric) for s, _ in members]),
                             "final": seed_interval([s["final"].get(metric) for s, _ in members])}
        curves = [[r["ntk_offdiag"] for r in records] for _, records in members
                  if [r["step"] for r in records] == steps]
        entry["ntk_curve"] = {"step": steps, **{key: [seed_interval(column)[key] for column in zip(*curves)]
                                                 for key in ("mean", "low", "high")}}
        if kind == "images":
            entry["pixel_ntk_nyquist_share"] = seed_interval(
                [s["pixel_kernels"]["empirical_ntk"]["nyquist_share"] for s, _ in members])
            entry["pixel_ntk_limit_nyquist_share"] = first["pixel_kernels"]["ntk"]["nyquist_share"]
        numbers[name] = entry
    return numbers


def samples_figure(runs, numbers, kind, out):
    """The final samples of each regime's smallest seed (module docstring); returns the paths."""
    import csv

    import torch

    from ntklab.plots import _grid

    first = {}
    for summary, _ in runs:
        name = summary["generator"]
        if name not in first or summary["seed"] < first[name]["seed"]:
            first[name] = summary
    names = [n for n in numbers if n in first]
    columns = len(names) + (0 if kind == "ring" else 1)
    fig, axes = plt.subplots(1, columns, figsize=(3.2 * columns, 3.5 if kind == "ring" else 2.5))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, names):
        summary = first[name]
        run_dir = Path(summary["run_dir"])
        final = summary["final"]
        if kind == "ring":
            with open(run_dir / "samples.csv") as f:
                points = np.array([[float(r["x"]), float(r["y"])] for r in csv.DictReader(f)])
            ring = summary["config"]["ring"]
            angles = 2 * np.pi * np.arange(ring["n_modes"]) / ring["n_modes"]
            ax.plot(points[:, 0], points[:, 1], ".", markersize=1.5, alpha=0.4)
            for a in angles:
                ax.add_patch(plt.Circle((ring["radius"] * np.cos(a), ring["radius"] * np.sin(a)), 3 * ring["std"],
                                        fill=False, color="C3", linewidth=0.8))
            lim = 1.6 * ring["radius"]
            ax.set(aspect="equal", xlim=(-lim, lim), ylim=(-lim, lim), xticks=[], yticks=[])
            ax.set_title(f"{name}, seed {summary['seed']}\n{final['modes_covered']} modes, "
                         f"{final['high_quality']:.0%} within 3σ", fontsize=8)
        else:
            saved = torch.load(run_dir / "samples.pt")
            ax.imshow(_grid(saved["generated"][:32].numpy()), cmap="gray", vmin=-1, vmax=1)
            ax.set(xticks=[], yticks=[])
            ax.set_title(f"{name}, seed {summary['seed']}\nNyquist share {final['checkerboard']:.2g}, "
                         f"diversity {final['diversity']:.2f}", fontsize=8)
    if kind != "ring":
        saved = torch.load(Path(first[names[0]]["run_dir"]) / "samples.pt")
        axes[-1].imshow(_grid(saved["real"][:32].numpy()), cmap="gray", vmin=-1, vmax=1)
        axes[-1].set(xticks=[], yticks=[])
        axes[-1].set_title(f"data\nNyquist share {first[names[0]]['data']['checkerboard']:.2g}", fontsize=8)
    steps = runs[0][0]["config"]["steps"]
    fig.suptitle(f"final samples after {steps} steps", fontsize=9)
    return save_figure(fig, out.with_name(f"{out.name}_samples"), ("png",), dpi=80)


def bar_panel(ax, numbers, metric, title, reference=None):
    for i, (name, entry) in enumerate(numbers.items()):
        interval = entry[metric]["final"]
        ax.bar(i, interval["mean"], color=f"C{i}", alpha=0.35)
        ax.errorbar(i, interval["mean"], yerr=[[interval["mean"] - interval["low"]], [interval["high"] - interval["mean"]]],
                    color="k", capsize=4)
        ax.plot(np.full(len(interval["values"]), i) + np.linspace(-0.15, 0.15, len(interval["values"])),
                interval["values"], "o", color=f"C{i}", markersize=4)
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle="--", linewidth=1, label="data")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(numbers)), [f"{n}\nχ_1={e['chi_1']:.2g}" if e["norm"] == "none" else n
                                        for n, e in numbers.items()], fontsize=7)
    ax.set_title(title, fontsize=9)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="sweep directories (or run directories)")
    parser.add_argument("--dataset", default=None, help="ring, digits or mnist (default: the first found)")
    parser.add_argument("--out", type=Path, default=None, help="output path without suffix")
    args = parser.parse_args()
    dataset, runs = load_runs(args.folders, args.dataset)
    kind = "ring" if dataset == "ring" else "images"
    out = args.out or args.folders[0] / "figures" / f"gan_{dataset}"
    numbers = summarise(runs, kind)
    data = runs[0][0]["data"]
    steps = runs[0][0]["config"]["steps"]

    panels = ([("modes_covered", "modes covered (of 8)", None), ("high_quality", "share within 3σ of a mode",
                                                                  data.get("high_quality"))]
              if kind == "ring" else
              [("checkerboard", "checkerboard: Nyquist share of power", data.get("checkerboard")),
               ("diversity", "diversity: pairwise distance / data's", 1.0),
               ("classes_covered", "classes covered (of 10)", data.get("classes_covered"))])
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.6 * (len(panels) + 1), 3.6))
    for ax, (metric, title, reference) in zip(axes, panels):
        bar_panel(ax, numbers, metric, f"{title}\nafter {steps} steps", reference)
        if metric == "checkerboard":    # shares from ~1e-3 (data) to ~1 (a generator at init)
            ax.set_yscale("log")
    ax = axes[-1]
    for i, (name, entry) in enumerate(numbers.items()):
        curve = entry["ntk_curve"]
        ax.plot(curve["step"], curve["mean"], "-", color=f"C{i}", label=name)
        ax.fill_between(curve["step"], curve["low"], curve["high"], color=f"C{i}", alpha=0.2)
        if entry["ntk_analytic_init"] is not None:
            ax.plot([0], [entry["ntk_analytic_init"]], "x", color=f"C{i}", markersize=8)
    ax.set(xlabel="step", ylim=(-0.15, 1.05))
    ax.set_title("generator NTK over latents:\nmean off-diagonal of Θ̂/√(Θ̂_ii Θ̂_jj) (x: limit)", fontsize=9)
    ax.legend(fontsize=7)
    n_seeds = sorted({len(e["seeds"]) for e in numbers.values()})
    fig.suptitle(f"GAN on {dataset}: mean over {'/'.join(map(str, n_seeds))} seeds, 95% t intervals, seeds as dots",
                 fontsize=10)
    paths = save_figure(fig, out, ("png", "pdf"))
    paths += samples_figure(runs, numbers, kind, out)
    save_numbers(out, {"dataset": dataset, "data": data, "regimes": numbers})
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
