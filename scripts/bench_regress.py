"""Benchmark kernel regression at scale: kernel-matrix throughput and solve time against n; prints
markdown tables.

    python scripts/bench_regress.py                    # default device (cuda if present)
    python scripts/bench_regress.py --device cpu --quick

Kernel table: the analytic NNGP + NTK that ``python -m ntklab regress`` computes for its default
model (``model=cnn``: ``--depth`` blocks of 3×3 "same" conv + relu, σ_w = √2, then a global-average-
pool or flatten readout and dense(10)) on scikit-learn's digits (1×8×8, ‖x‖ = 8), the symmetric
n × n train kernel as regress computes it (``--block`` inputs per side of a block, ``--block-elements``
kernel entries per pass of the recursion: by default the device's, as regress, 2^20 on a CPU and up
to 2^26 on a GPU):
  entries/s   n(n+1)/2 distinct entries over the best of --repeats calls' seconds.
Solve table: ``ntklab.commands.regress.predict`` (one float64 eigendecomposition of the n × n train
kernel, then K(X*, X) V …; regress's solver=eigh) and ``predict_cholesky`` (solver=cholesky, ridge
1e-6 of the mean diagonal) for a relu NTK of n random points on the sphere and 10 outputs, against
``torch.linalg.solve`` of the same system (LU) for scale.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ntk import _best_time  # noqa: E402  (one timing helper for every benchmark)

from ntklab import ArchSpec, analytic_kernels  # noqa: E402
from ntklab.commands.regress import BlockGrid, predict, predict_cholesky  # noqa: E402
from ntklab.kernels.analytic import default_block_elements  # noqa: E402
from ntklab.data import load_dataset  # noqa: E402
from ntklab.nets import cnn_layers  # noqa: E402
from ntklab.results import environment  # noqa: E402


def kernel_table(args) -> None:
    block_elements = default_block_elements(args.device) if args.block_elements is None else args.block_elements
    print(f"\n### Kernel matrix: CNTK of {args.depth} × (3×3 conv + relu) on digits 1×8×8, {args.device}, "
          f"float64, block_elements {block_elements}\n")
    print("| readout | n | blocks | seconds | entries/s |")
    print("|---|---:|---:|---:|---:|")
    data = load_dataset("digits", n_train=max(max(args.n_gap), max(args.n_flatten)), n_test=10, images=True,
                        targets="onehot", center_targets=True)
    for readout, sizes in (("gap", args.n_gap), ("flatten", args.n_flatten)):
        arch = cnn_layers(args.depth, 1, 10, readout=readout, sigma_w=2 ** 0.5)
        for n in sizes:
            x = data.x_train[:n].to(args.device)
            grid = BlockGrid(n, 0, args.block)
            chunks = grid.chunks(n)

            def blocks():      # the train blocks of regress: diagonal ones symmetric, the others cross
                for _, r, c in grid.blocks:
                    if r == c:
                        analytic_kernels(arch, x[chunks[r]], block_elements=block_elements)
                    else:
                        analytic_kernels(arch, x[chunks[r]], x[chunks[c]], block_elements=block_elements)

            seconds = _best_time(blocks, args.device, args.repeats)
            print(f"| {readout} | {n} | {len(grid.blocks)} | {seconds:.3f} | {grid.entries / seconds:,.0f} |")


def solve_table(args) -> None:
    print(f"\n### Solve: kernel regression on n points, 10 outputs, float64, {args.device}\n")
    print("| n | predict (eigh) s | predict_cholesky s | linalg.solve s |")
    print("|---:|---:|---:|---:|")
    generator = torch.Generator().manual_seed(0)
    spec = ArchSpec(depth=2, width=1, activation="relu")
    for n in args.n_solve:
        x = torch.randn(n + 100, 20, generator=generator, dtype=torch.float64)
        x = x / x.norm(dim=1, keepdim=True) * 20 ** 0.5
        kernel = analytic_kernels(spec, x[:n]).ntk.to(args.device)
        test = analytic_kernels(spec, x[n:], x[:n]).ntk.to(args.device)
        y = torch.randn(n, 10, generator=generator, dtype=torch.float64).to(args.device)
        eigh = _best_time(lambda: predict(kernel, test, y, 0.0), args.device, args.repeats)
        cholesky = _best_time(lambda: predict_cholesky(kernel, test, y, 1e-6), args.device, args.repeats)
        lu = _best_time(lambda: test @ torch.linalg.solve(kernel, y), args.device, args.repeats)
        print(f"| {n} | {eigh:.3f} | {cholesky:.3f} | {lu:.3f} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--block-elements", type=int, default=None,
                        help="kernel entries per pass of the recursion (default: the device's, as regress)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n-gap", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--n-flatten", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--n-solve", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_gap, args.n_flatten, args.n_solve, args.repeats, args.block = [16], [32], [50], 1, 8
    env = environment(args.device, "float64")
    print(f"machine: {env['device_name']}, torch {env['versions']['torch']}")
    kernel_table(args)
    solve_table(args)


if __name__ == "__main__":
    main()
