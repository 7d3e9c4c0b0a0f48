"""``python -m ntklab compare``: two kernel regressions scored on the same test images, image by image.

Two accuracies measured on the same M test images are not independent samples: most images are
easy for both kernels, and only the images exactly one of them gets right say which is better.
With b = images only A classifies right and c = images only B does, the exact McNemar test asks
how surprising the split is if both are equally good, each of the b + c discordant images then
A's with probability ½:

    p = P(|S − n/2| ≥ |b − n/2|),     S ~ Binomial(n = b + c, ½)         (two-sided; p = 1 when n = 0)

and the paired standard error of the difference in accuracy, acc_B − acc_A = (c − b)/M, is that of
the mean of d_i = [B right on i] − [A right on i] ∈ {−1, 0, 1}:

    se = √((b + c)/M − ((c − b)/M)²) / √M.

Both are smaller than what two independent binomial errors (√(acc (1 − acc)/M) each) suggest when
the two kernels err on the same images, as kernels of one architecture do.

Usage::

    python -m ntklab compare RUN_A[:KIND] RUN_B[:KIND]     # KIND: ntk (default) or nngp

Each RUN is a ``regress`` run directory; its predictions.pt holds every kernel's test prediction.
The two must have been tested on the same images (same data settings): the SHA-256 of the test
inputs saved with the predictions is compared. Exit code 2, with one line saying why, for a
directory without predictions.pt, a kind that is not there, test sets that differ, or a data set
without classes.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from scipy.stats import binomtest

from ntklab import results
from ntklab.dynamics import correct

DEFAULT_KIND = "ntk"


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


def load_predictions(run_dir: Path) -> dict:
    """A ``regress`` run directory's predictions.pt (see :mod:`ntklab.commands.regress`)."""
    path = Path(run_dir) / results.PREDICTIONS
    if not path.exists():
        if (Path(run_dir) / results.REGRESSION).exists():
            raise CompareError(f"{run_dir} has no {results.PREDICTIONS}: run the same `python -m ntklab regress` "
                               "command in it again to write it (its kernel blocks are reused; only the solve runs)")
        raise CompareError(f"{run_dir} is not a finished regress run directory (no {results.PREDICTIONS})")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CompareError(f"{path} cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(saved, dict) or "test_inputs_sha256" not in saved:
        raise CompareError(f"{path} is not a regress run's predictions (a training run's?)")
    return saved


def compare_runs(run_a: Path, kind_a: str, run_b: Path, kind_b: str) -> PairedComparison:
    """Pair kernel ``kind_a`` of ``run_a`` with ``kind_b`` of ``run_b`` on their shared test images."""
    saved = []
    for run_dir, kind in ((run_a, kind_a), (run_b, kind_b)):
        predictions = load_predictions(run_dir)
        if kind not in predictions or not torch.is_tensor(predictions[kind]):
            kinds = sorted(k for k, v in predictions.items() if torch.is_tensor(v) and k not in ("y_test", "labels_test"))
            raise CompareError(f"{run_dir} has no kernel {kind!r}; it has {', '.join(kinds)}")
        if predictions["labels_test"] is None:
            raise CompareError(f"{run_dir}: its data set has no classes, so there are no accuracies to pair")
        saved.append((predictions, kind))
    (first, kind_first), (second, kind_second) = saved
    if first["test_inputs_sha256"] != second["test_inputs_sha256"] or not torch.equal(first["y_test"],
                                                                                     second["y_test"]):
        raise CompareError(f"{run_a} and {run_b} were tested on different images (their data settings differ: "
                           "data set, data.n_test, data.seed, normalisation); a paired comparison needs the same test set")
    return paired_comparison(correct(first[kind_first], first["y_test"]).numpy(),
                             correct(second[kind_second], second["y_test"]).numpy())


def _run_and_kind(text: str):
    path, separator, kind = text.rpartition(":")
    return (Path(path), kind) if separator else (Path(text), DEFAULT_KIND)


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ntklab compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", help="a regress run directory, optionally :ntk or :nngp (default :ntk)")
    parser.add_argument("run_b", help="the other run directory (the same one with the other kernel is fine)")
    args = parser.parse_args(argv)
    (run_a, kind_a), (run_b, kind_b) = _run_and_kind(args.run_a), _run_and_kind(args.run_b)
    try:
        comparison = compare_runs(run_a, kind_a, run_b, kind_b)
    except CompareError as err:
        print(f"ntklab compare: {err}", file=sys.stderr)
        return 2
    print(report(comparison, f"{run_a} {kind_a}", f"{run_b} {kind_b}"))
    return 0
