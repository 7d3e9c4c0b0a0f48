"""``python -m ntklab compare``: two runs' test predictions scored on the same images, image by image.

Two accuracies measured on the same M test images are not independent samples: most images are
easy for both, and only the images exactly one of them gets right say which is better.
With b = images only A classifies right and c = images only B does, the exact McNemar test asks
how surprising the split is if both are equally good, each of the b + c discordant images then
A's with probability ½:

    p = P(|S − n/2| ≥ |b − n/2|),     S ~ Binomial(n = b + c, ½)         (two-sided; p = 1 when n = 0)

and the paired standard error of the difference in accuracy, acc_B − acc_A = (c − b)/M, is that of
the mean of d_i = [B right on i] − [A right on i] ∈ {−1, 0, 1}:

    se = √((b + c)/M − ((c − b)/M)²) / √M.

It is smaller than two independent binomial errors (√(acc (1 − acc)/M) each) suggest when the two
err on the same images, as kernels of one architecture do, so the paired test sees differences the
unpaired error bars hide; and it says when a difference of a few images is noise.

Usage::

    python -m ntklab compare RUN_A[:KIND] RUN_B[:KIND]
    python -m ntklab compare RUN_A[:KIND] RUN_B[:KIND] RUN_C[:KIND] ... [--csv FILE]
    python -m ntklab compare :KIND RUN_B[:KIND] ...

Each RUN is a ``regress`` run directory (KIND ntk, the default, or nngp: the kernel's t = ∞
prediction) or a training run directory (KIND net, the default: the trained net's test outputs;
init; analytic: its kernel's prediction for the same step; linear: the linearised net's), read from
its predictions.pt. The two must have been tested on the same images (same data settings): the
SHA-256s of the test inputs rounded to float32 are compared (:func:`ntklab.results.test_inputs_sha256`),
so a float32 training run pairs with a float64 ``regress`` run, and an MLP's flattened images with a
CNN's. Exit code 2, with one line saying why, for a directory without predictions.pt (a run still
running says so), a kind that is not there, test sets that differ, or a data set without classes.

With several B runs (a sweep's run directories, say) each is paired with A and the comparisons are
printed as one table, a row per B (``--csv FILE`` writes the same rows with every digit). A given as
``:KIND`` alone pairs each B with its own output of that kind: ``compare :analytic RUN ...`` puts every
trained net against its kernel's prediction for the same step. A B that cannot be paired is named on
stderr with the reason and left out of the table, and the exit code is then 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest

from ntklab import results
from ntklab.dynamics import class_midpoint, correct


class CompareError(ValueError):
    """The two runs cannot be paired; the message says why."""


@dataclass(frozen=True)
class PairedComparison:
    """Counts over the M shared test images and what they say about acc_B − acc_A."""

    images: int
    both_right: int
    only_a: int
    only_b: int
    neither: int

    @property
    def accuracy_a(self) -> float:
        return (self.both_right + self.only_a) / self.images

    @property
    def accuracy_b(self) -> float:
        return (self.both_right + self.only_b) / self.images

    @property
    def difference(self) -> float:
        """acc_B − acc_A = (c − b)/M."""
        return (self.only_b - self.only_a) / self.images

    @property
    def standard_error(self) -> float:
        """Paired standard error of :attr:`difference`: √((b + c)/M − ((c − b)/M)²) / √M."""
        discordant = (self.only_a + self.only_b) / self.images
        return float(np.sqrt(max(discordant - self.difference ** 2, 0.0) / self.images))

    @property
    def p_value(self) -> float:
        """Exact two-sided McNemar p-value: the binomial test of b successes in b + c at ½."""
        discordant = self.only_a + self.only_b
        return 1.0 if discordant == 0 else float(binomtest(self.only_a, discordant, 0.5).pvalue)


def paired_comparison(right_a, right_b) -> PairedComparison:
    """Count the 2×2 table of two classifiers on the same images: ``right_a``, ``right_b`` are (M,)
    bool (tensors or arrays), which images each classifies right."""
    a = np.asarray(right_a, dtype=bool)
    b = np.asarray(right_b, dtype=bool)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise CompareError(f"need two non-empty (M,) vectors of the same length, got shapes {a.shape} and {b.shape}")
    return PairedComparison(images=int(a.size), both_right=int(np.sum(a & b)), only_a=int(np.sum(a & ~b)),
                            only_b=int(np.sum(~a & b)), neither=int(np.sum(~a & ~b)))


# a training run's predictions.pt: its test outputs by name (the trainer's _save_predictions)
TRAINED_OUTPUTS = {"net": "f_final", "init": "f_init", "analytic": "f_pred_analytic", "linear": "f_pred_linear"}
DEFAULT_KIND = {"regress": "ntk", "train": "net"}


@dataclass(frozen=True)
class TestPredictions:
    """One run's test outputs by kind ((M, k) each), the targets (M, k) in float64, whether they are classes,
    and the SHA-256s of its test inputs rounded to float32 (:func:`ntklab.results.test_inputs_sha256`:
    what pairs runs computed in either dtype and either layout; two runs share one when they were
    tested on the same inputs)."""

    outputs: dict
    y_test: torch.Tensor
    classification: bool
    inputs_sha256: frozenset
    default_kind: str


def load_predictions(run_dir: Path) -> TestPredictions:
    """The test predictions of a ``regress`` run (each kernel's t = ∞ prediction: ntk, nngp) or a
    training run (the net at the end: net; at init: init; its kernel's prediction for the same step:
    analytic; the linearised net's: linear), from its predictions.pt."""
    path = Path(run_dir) / results.PREDICTIONS
    if not path.exists():
        status, error = _recorded_status(Path(run_dir))
        if status not in (None, results.OK):
            raise CompareError(f"{run_dir}: the run's status is {status!r}" + (f" ({error})" if error else "")
                               + f"; it has no {results.PREDICTIONS} to compare")
        holder = results.running_holder(Path(run_dir))
        if holder is not None:
            raise CompareError(f"{run_dir} is still running (process {holder} holds it); it has no "
                               f"{results.PREDICTIONS} until it finishes")
        if (Path(run_dir) / results.REGRESSION).exists():
            raise CompareError(f"{run_dir} has no {results.PREDICTIONS}: run the same `python -m ntklab regress` "
                               "command in it again to write it (its kernel blocks are reused; only the solve runs)")
        raise CompareError(f"{run_dir} is not a finished regress or training run directory (no {results.PREDICTIONS})")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CompareError(f"{path} cannot be read ({type(err).__name__}: {err})") from err
    if isinstance(saved, dict) and "test_inputs_sha256" in saved:
        return TestPredictions(outputs={kind: saved[kind] for kind in ("nngp", "ntk") if kind in saved},
                               y_test=saved["y_test"].double(), classification=saved["labels_test"] is not None,
                               inputs_sha256=_digests(saved["test_inputs_sha256"]),
                               default_kind=DEFAULT_KIND["regress"])
    if isinstance(saved, dict) and "f_final" in saved:
        return TestPredictions(outputs={kind: saved[key] for kind, key in TRAINED_OUTPUTS.items()
                                        if torch.is_tensor(saved.get(key))},
                               y_test=saved["y_test"].double(), classification="classes" in saved.get("extras", {}),
                               inputs_sha256=frozenset(results.test_inputs_sha256(saved["x_test"])),
                               default_kind=DEFAULT_KIND["train"])
    raise CompareError(f"{path} holds neither a regress run's nor a training run's test predictions")


def _recorded_status(run_dir: Path) -> Tuple[Optional[str], Optional[str]]:
    """(status, error) of the run's regression.json or summary.json; (None, None) without a readable one."""
    for name in (results.REGRESSION, results.SUMMARY):
        try:
            summary = results.read_summary(run_dir, name)
        except (OSError, ValueError):
            continue
        if summary is not None:
            return summary.get("status"), summary.get("error")
    return None, None


def compare_runs(run_a: Path, kind_a: Optional[str], run_b: Path,
                 kind_b: Optional[str]) -> Tuple[PairedComparison, str, str]:
    """Pair output ``kind_a`` of ``run_a`` with ``kind_b`` of ``run_b`` (None: the run's default, ntk
    or net) on their shared test images: (the comparison, kind_a, kind_b as resolved)."""
    loaded = []
    for run_dir, kind in ((run_a, kind_a), (run_b, kind_b)):
        predictions = load_predictions(run_dir)
        kind = kind or predictions.default_kind
        if kind not in predictions.outputs:
            raise CompareError(f"{run_dir} has no output {kind!r}; it has {', '.join(predictions.outputs)}")
        if not predictions.classification:
            raise CompareError(f"{run_dir}: its data set has no classes, so there are no accuracies to pair")
        finite = torch.isfinite(predictions.outputs[kind]).all(dim=1)
        if not bool(finite.all()):
            # argmax picks a NaN's index and NaN > midpoint is False: the accuracy would be noise
            raise CompareError(f"{run_dir}: output {kind!r} is not finite on {int((~finite).sum())} of its "
                               f"{len(finite)} test images (a diverged run?); there is no accuracy to pair")
        loaded.append((predictions, kind))
    (first, kind_first), (second, kind_second) = loaded
    # the inputs first, then the targets' shapes, then each image's class: runs on different test sets
    # fail one of them. The target values may differ (data.center_targets, or data.noise, which moves
    # the train mean that centres them): each run is scored against its own.
    same_images = (not first.inputs_sha256.isdisjoint(second.inputs_sha256)
                   and first.y_test.shape == second.y_test.shape)
    if not same_images:
        raise CompareError(f"{run_a} and {run_b} were tested on different images or targets (their data settings "
                           "differ: data set, data.n_test, data.seed, data.classes, data.targets, normalisation); "
                           "a paired comparison needs the same test set")
    try:
        # scalar targets: each run's outputs against its own targets' threshold
        midpoints = [class_midpoint(run.y_test) for run in (first, second)]
    except ValueError:
        raise CompareError(f"{run_a}, {run_b}: the test targets are scalar and all of one class, so compare "
                           "cannot place the threshold between the two classes; test on more images "
                           "(data.n_test)") from None
    classes = [run.y_test.argmax(1) if midpoint is None else (run.y_test > midpoint).reshape(-1)
               for run, midpoint in zip((first, second), midpoints)]
    if not torch.equal(*classes):
        raise CompareError(f"{run_a} and {run_b} were tested on the same images with different classes on "
                           f"{int((classes[0] != classes[1]).sum())} of them (data.classes or data.targets "
                           "differ); a paired comparison needs the same test set")
    comparison = paired_comparison(correct(first.outputs[kind_first], first.y_test, midpoints[0]).numpy(),
                                   correct(second.outputs[kind_second], second.y_test, midpoints[1]).numpy())
    return comparison, kind_first, kind_second


def _digests(stored) -> frozenset:
    """A regress run's stored digests: a list of them, or one string (runs written before there were two)."""
    return frozenset([stored] if isinstance(stored, str) else stored)


def _run_and_kind(text: str):
    """The argument DIR:KIND as (DIR, KIND), and DIR as (DIR, None), also where DIR holds a colon;
    :KIND alone as (None, KIND) (each B run's own output of that kind)."""
    path, separator, kind = text.rpartition(":")
    if not separator or Path(text).is_dir():
        return Path(text), None
    return (Path(path) if path else None), kind


def report(comparison: PairedComparison, name_a: str, name_b: str) -> str:
    """The comparison as the lines ``compare`` prints."""
    c = comparison
    return "\n".join([
        f"A = {name_a}",
        f"B = {name_b}",
        f"test images        {c.images} (the same in both runs)",
        f"accuracy           A {c.accuracy_a:.4f}   B {c.accuracy_b:.4f}",
        f"images right       both {c.both_right}, only A {c.only_a}, only B {c.only_b}, neither {c.neither}",
        f"B − A              {c.difference:+.4f} ± {c.standard_error:.4f} (paired standard error)",
        f"McNemar exact p    {c.p_value:.4g} (two-sided: {c.only_a} against {c.only_b} at ½)",
    ])


@dataclass(frozen=True)
class ComparedPair:
    """One row of a comparison: which output of which run is A, which is B, and their counts."""

    run_a: Path
    kind_a: str
    run_b: Path
    kind_b: str
    comparison: PairedComparison

    def record(self) -> dict:
        """The row as the table and the CSV hold it, in their column order."""
        c = self.comparison
        return {"run_b": str(self.run_b), "kind_b": self.kind_b, "run_a": str(self.run_a), "kind_a": self.kind_a,
                "images": c.images, "accuracy_a": c.accuracy_a, "accuracy_b": c.accuracy_b, "only_a": c.only_a,
                "only_b": c.only_b, "difference": c.difference, "standard_error": c.standard_error,
                "p_value": c.p_value}


def compare_each(run_a: Optional[Path], kind_a: Optional[str],
                 runs_b: Sequence[Tuple[Path, Optional[str]]]) -> Tuple[list, list]:
    """Pair output ``kind_a`` of ``run_a`` (None: each B run itself) with each of ``runs_b`` ((dir, kind)
    pairs): (a ComparedPair per B that pairs, in order; the CompareErrors of those that do not)."""
    pairs, errors = [], []
    for run_b, kind_b in runs_b:
        this_a = run_b if run_a is None else run_a
        try:
            comparison, kind_a_used, kind_b_used = compare_runs(this_a, kind_a, run_b, kind_b)
        except CompareError as err:
            errors.append(err)
            continue
        pairs.append(ComparedPair(this_a, kind_a_used, run_b, kind_b_used, comparison))
    return pairs, errors


def comparison_table(pairs: Sequence[ComparedPair]) -> pd.DataFrame:
    """The pairs (at least one) as a table, a row per pair (ComparedPair.record)."""
    return pd.DataFrame([pair.record() for pair in pairs])


def format_table(table: pd.DataFrame, each_own: bool) -> str:
    """The table as ``compare`` prints it: what A is (one run's output, or with ``each_own`` each B
    run's own output of A's kind), then a row per B."""
    shown = table.copy()
    a = "each B run's own" if each_own else shown["run_a"].iloc[0]
    heading = f"A = {a} {shown['kind_a'].iloc[0]}"
    shown["B − A"] = [f"{d:+.4f} ± {se:.4f}" for d, se in zip(shown["difference"], shown["standard_error"])]
    # run directories read best left-aligned, their heading too (to_string right-aligns both)
    width = max(map(len, shown["run_b"]))
    b = "B".ljust(width)
    shown = shown.rename(columns={"run_b": b, "kind_b": "kind", "accuracy_a": "acc A", "accuracy_b": "acc B",
                                  "only_a": "only A", "only_b": "only B", "p_value": "McNemar p"})
    columns = [b, "kind", "images", "acc A", "acc B", "only A", "only B", "B − A", "McNemar p"]
    body = shown[columns].to_string(index=False, formatters={b: lambda name: name.ljust(width),
                                                             "acc A": "{:.4f}".format, "acc B": "{:.4f}".format,
                                                             "McNemar p": "{:.4g}".format})
    return heading + "\n" + body


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ntklab compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", help="a regress run directory, optionally :ntk (default) or :nngp, or a training "
                                      "run directory, optionally :net (default), :analytic, :linear or :init; "
                                      ":KIND alone for each B run's own output of that kind")
    parser.add_argument("run_b", nargs="+", help="the other run directory (the same one with another kind is "
                                                 "fine), or several: a table with a row for each")
    parser.add_argument("--csv", type=Path, metavar="FILE", help="also write the comparisons to FILE as CSV")
    args = parser.parse_args(argv)
    run_a, kind_a = _run_and_kind(args.run_a)
    runs_b = [_run_and_kind(text) for text in args.run_b]
    if any(run_b is None for run_b, _ in runs_b):
        parser.error("a B run needs its directory (only A may be :KIND alone)")
    if run_a is None and not kind_a:
        parser.error(f"{args.run_a!r} names neither a run directory nor a kind")
    pairs, errors = compare_each(run_a, kind_a, runs_b)
    for err in errors:
        print(f"ntklab compare: {err}", file=sys.stderr)
    if not pairs:
        return 2
    table = comparison_table(pairs)
    if len(runs_b) == 1:
        pair = pairs[0]
        print(report(pair.comparison, f"{pair.run_a} {pair.kind_a}", f"{pair.run_b} {pair.kind_b}"))
    else:
        print(format_table(table, each_own=run_a is None))
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}", file=sys.stderr)
    return 2 if errors else 0
