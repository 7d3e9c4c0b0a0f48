"""Benchmark the convolutional kernels; prints markdown tables.

    python scripts/bench_cntk.py                      # both tables on the default device (cuda if present)
    python scripts/bench_cntk.py --device cpu --readouts flatten --dtypes float32

CNTK table: the analytic NNGP + NTK of the net neural-tangents uses in its README — ``--depth`` (21)
layers of 3×3 "same" conv + relu on 3×32×32 images, then a global-average-pool or a flatten
readout and a dense layer — between ``--n-gap`` / ``--n-flatten`` random images and as many others
(so n² entries, none of them on a diagonal), in float32 and float64:
  s/entry      best of --repeats calls after one warm-up call, divided by n²,
  block        the ``block_elements`` passed (the working-memory bound, see analytic_kernels;
               default: analytic_kernels' own).
Global average pooling keeps each pair's full (H·W)² = 1M-entry covariance through all 21 layers;
flatten keeps its spatial diagonal, 1024 entries. The self pairs, which give the variances, cost
O(H·W) each in both (analytic_kernels carries only their spatial diagonals when x2 is given), so
s/entry is the cost of one pair of distinct images.

Digits table (``--digits-n``, 0 skips it; ``--skip-cntk`` does not): the same for the net ``python -m
ntklab regress`` uses by default (configs/model/cnn.yaml at depth 2: 2 × (3×3 conv + relu), σ_w = √2,
σ_b = 0, global average pool, dense) on 1×8×8 images, the size of scikit-learn's digits (1×28×28,
MNIST's, with ``--regress-size 28``): n × n entries, as one of its off-diagonal blocks of the kernel
matrix. At sizes from 16 up a second row has the images blank in a border (4 pixels at 28×28, as
MNIST's), whose zeros the relu dual's square roots must handle fast.

Empirical NTK table: ``structured`` against ``jacobian`` for a 4-layer, 64-channel CNN
(3×3 "same" conv + relu, flatten, dense) on 1×28×28 inputs, x2 = x1, float32: seconds (best of
--repeats) and the ratio.

Each table's header gives the 1-minute load average before it (timings on a shared machine move with it).

``--digits-memory`` adds one line: the GAP CNTK of a 2-conv net on N = 2000 8×8 images (the size of
scikit-learn's digits), all N² entries, with its time and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ntk import _best_time  # noqa: E402  (one timing helper for every benchmark)

from ntklab import analytic_kernels, build_net, empirical_ntk  # noqa: E402
from ntklab import layers as nl  # noqa: E402
from ntklab.results import environment  # noqa: E402


def readme_net(depth: int, readout: str, channels: int = 1) -> nl.Serial:
    """neural-tangents' README CNN: depth × (conv 3×3 same + relu), readout, dense(1)."""
    body = []
    for _ in range(depth):
        body += [nl.conv(channels, 3, sigma_w=1.0, sigma_b=0.0), nl.activation("relu")]
    pool = nl.global_avg_pool() if readout == "gap" else nl.flatten()
    return nl.serial(*body, pool, nl.dense(1))


def digits_net() -> nl.Serial:
    """``python -m ntklab regress``'s default model (configs/model/cnn.yaml, depth 2) on 1×8×8 images."""
    sigma_w = 2.0 ** 0.5
    return nl.serial(nl.conv(1, 3, sigma_w=sigma_w), nl.activation("relu"), nl.conv(1, 3, sigma_w=sigma_w),
                     nl.activation("relu"), nl.global_avg_pool(), nl.dense(1, sigma_w=sigma_w))


def _kernel_rows(args, rows, blank_margin: int = 0) -> None:
    """Time analytic_kernels(arch, x1, x2) for each (name, arch, n, shape, block) and dtype: one table row each.

    The images are Gaussian noise, zero in a border ``blank_margin`` pixels wide if one is given."""
    generator = torch.Generator().manual_seed(0)
    for name, arch, n, shape, block in rows:
        x1 = torch.randn(n, *shape, generator=generator, dtype=torch.float64)
        x2 = torch.randn(n, *shape, generator=generator, dtype=torch.float64)
        if blank_margin:
            inside = torch.zeros(shape[-2:], dtype=torch.float64)
            inside[blank_margin:-blank_margin, blank_margin:-blank_margin] = 1.0
            x1, x2 = x1 * inside, x2 * inside
        x1, x2 = x1.to(args.device), x2.to(args.device)
        options = {} if block is None else {"block_elements": block}
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            seconds = _best_time(lambda: analytic_kernels(arch, x1, x2, dtype=dtype, **options), args.device,
                                 args.repeats)
            block_text = "default" if block is None else f"{block:.3g}"
            print(f"| {name} | {dtype_name} | {n * n} | {seconds:.3f} | {seconds / (n * n):.4g} | {block_text} |",
                  flush=True)


def cntk_table(args) -> None:
    print(f"\n### CNTK (NNGP + NTK), {args.depth} × (3×3 conv + relu) on 3×{args.size}×{args.size}, "
          f"{args.device}, load {os.getloadavg()[0]:.1f}\n")
    print("| readout | dtype | entries | seconds | s/entry | block |")
    print("|---|---|---:|---:|---:|---:|")
    _kernel_rows(args, [(readout, readme_net(args.depth, readout), args.n_gap if readout == "gap" else args.n_flatten,
                         (3, args.size, args.size), args.block_gap if readout == "gap" else args.block_flatten)
                        for readout in args.readouts])


def digits_table(args) -> None:
    size = args.regress_size
    print(f"\n### CNTK of the regress default net, 2 × (3×3 conv + relu), global average pool, on 1×{size}×{size}, "
          f"{args.device}, load {os.getloadavg()[0]:.1f}\n")
    print("| net | dtype | entries | seconds | s/entry | block |")
    print("|---|---|---:|---:|---:|---:|")
    name = "digits gap" if size == 8 else f"regress gap {size}×{size}"
    _kernel_rows(args, [(name, digits_net(), args.digits_n, (1, size, size), None)])
    if size >= 16:
        # MNIST's digits fill the central 20×20 of 28×28: a 4-pixel blank border (scaled to the size),
        # where the relu dual takes square roots of 0
        margin = round(4 * size / 28)
        _kernel_rows(args, [(f"{name}, blank {margin}-pixel border", digits_net(), args.digits_n, (1, size, size),
                             None)], blank_margin=margin)


def empirical_table(args) -> None:
    print(f"\n### Empirical NTK, 4 × (3×3 conv, 64 channels, relu), flatten, dense(1) on 1×28×28, float32, "
          f"{args.device}, load {os.getloadavg()[0]:.1f}\n")
    print("| N | structured s | jacobian s | jacobian / structured |")
    print("|---:|---:|---:|---:|")
    body = []
    for _ in range(4):
        body += [nl.conv(64, 3), nl.activation("relu")]
    net = build_net(nl.serial(*body, nl.flatten(), nl.dense(1)), in_shape=(1, 28, 28), seed=0, device=args.device)
    for n in args.empirical_n:
        x = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1)).to(args.device)
        structured = _best_time(lambda: empirical_ntk(net, x, method="structured"), args.device, args.repeats)
        jacobian = _best_time(lambda: empirical_ntk(net, x, method="jacobian"), args.device, args.repeats)
        print(f"| {n} | {structured:.4f} | {jacobian:.4f} | {jacobian / structured:.1f}× |", flush=True)


def digits_memory(args) -> None:
    arch = nl.serial(nl.conv(64, 3), nl.activation("relu"), nl.conv(64, 3), nl.activation("relu"),
                     nl.global_avg_pool(), nl.dense(1))
    x = torch.randn(2000, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(args.device)
    start = time.perf_counter()
    analytic_kernels(arch, x, block_elements=args.block_digits)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nGAP CNTK, 2 × (conv 3×3 + relu) on N = 2000 1×8×8 images, all N² entries, float64, block_elements "
          f"{args.block_digits:.3g}: {seconds:.1f} s, peak resident memory {peak:.0f} MiB (the two outputs: "
          f"{2 * 2000 ** 2 * 8 / 2 ** 20:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--depth", type=int, default=21)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--readouts", nargs="+", default=["gap", "flatten"], choices=["gap", "flatten"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--n-gap", type=int, default=4, help="images per side for the GAP readout (n² entries)")
    parser.add_argument("--n-flatten", type=int, default=64, help="images per side for the flatten readout")
    parser.add_argument("--block-gap", type=int, default=None, help="block_elements (default: analytic_kernels')")
    parser.add_argument("--block-flatten", type=int, default=None, help="block_elements (default: analytic_kernels')")
    parser.add_argument("--digits-n", type=int, default=256, help="images per side for the digits table; 0 skips it")
    parser.add_argument("--block-digits", type=int, default=2 ** 22)
    parser.add_argument("--regress-size", type=int, default=8,
                        help="side of the digits table's images: 8 as digits, 28 as MNIST and Fashion-MNIST")
    parser.add_argument("--empirical-n", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, one per core); 1 is steadier on a shared machine")
    parser.add_argument("--skip-cntk", action="store_true")
    parser.add_argument("--skip-empirical", action="store_true")
    parser.add_argument("--digits-memory", action="store_true")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    env = environment(args.device)
    print(f"torch {env['versions']['torch']}, device {env['device']} ({env['device_name']}), "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores")
    if not args.skip_cntk:
        cntk_table(args)
    if args.digits_n:
        digits_table(args)
    if not args.skip_empirical:
        empirical_table(args)
    if args.digits_memory:
        digits_memory(args)


if __name__ == "__main__":
    main()
