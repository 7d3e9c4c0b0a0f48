"""Benchmark the empirical NTK methods and the analytic kernels; prints markdown tables.

    python scripts/bench_ntk.py                 # every table on the default device (cuda if present)
    python scripts/bench_ntk.py --device cpu --widths 256 1024 --n 128

Empirical NTK table: method × width × N for a depth-3 relu MLP (scalar output, x2 = x1), with
  seconds      best of --repeats calls after one warm-up call,
  peak MiB     extra memory of one cold call: on CUDA the allocator's peak; on CPU the rise of
               the process's resident-set high-water mark, each case in a fresh subprocess,
  GFLOP/s      *effective* rate: the structured method's operation count (forward, backward and
               Gram products — the least work that yields the kernel) divided by the time, so
               every method is measured against the same work,
  % matmul     that rate as a fraction of this machine's measured square-matmul rate.
Reference-method cases whose estimated work would exceed --max-work are skipped and marked:
N·P for ``jacobian`` (per-sample Jacobians) and N²·P/128 for ``ntvp`` (N·k NTK-vector products,
each a pass over the batch), calibrated so that 1.2e9 is about 30 s on 2 CPU cores.
Width 4096 with N = 4096 shows the structured method inside its default memory budget
(ntklab.ntk.DEFAULT_MEMORY_BUDGET, 1 GiB of features per chunk, the kernel itself aside).

CNN table: the structured empirical NTK of the trainer's ``model=cnn depth=1 model.readout=flatten``
(3×3 relu conv of C channels, flatten, dense to 10 outputs, per-output mean kernel) on N random
1×28×28 images, once with x2 = x1 and once M others (--cnn-test-n, default N) against them (what a
training run's setup computes on its train and test sets), one call each (they take seconds to
minutes; --cnn-cases picks either).

Analytic kernel table: NNGP + NTK in float64 for depth 3 on N inputs (x2 = x1), closed forms
(relu, erf, gelu).

Quadrature table: the same for activations without a closed form (tanh, sigmoid, softplus, silu and
mish given only as a callable), by ``ntklab.kernels.quadrature_dual``, best of --repeats calls (one
call from N = 4000), and the largest relative difference max|K − K_ref| / max|K_ref| (NNGP and NTK)
from every pair through the polar rule alone at 16 nodes per panel (``polar_dual(act, degree=32)``)
on the first --check-n inputs. Then the same at large pre-activation variance (depth 6, σ_w = 4).
neural-tangents' figures in its column were measured earlier on this machine, not side by side
(scripts/bench_vs_neural_tangents.py measures side by side).

Dynamics table: ``mse_predictor`` on N = 4000 train points (one float64 eigendecomposition),
then outputs on 1000 test points and losses at 100 times from it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from ntklab import ArchSpec, analytic_kernels, build_mlp, empirical_ntk
from ntklab.activations import Activation, from_callable, get_activation
from ntklab.dynamics import max_learning_rate, mse_predictor
from ntklab.kernels.quadrature import polar_dual
from ntklab.results import environment

DEPTH = 3
IN_DIM = 32

NEURAL_TANGENTS_TANH_SECONDS = {200: 4.3, 1000: 93.0}
"""neural-tangents 0.6.5 ``stax.ElementwiseNumerical(jnp.tanh, deg=25)`` (its default Gauss–Hermite degree),
the same depth-3 NNGP + NTK in float64 (jax 0.4.25, CPU), measured earlier on this 2-core AMD EPYC machine."""


def structured_flops(n: int, width: int, depth: int = DEPTH, in_dim: int = IN_DIM) -> float:
    """Multiply-adds ×2 of the structured NTK for x2 = x1, scalar output.

    forward 2N(d·n + (L−1)n² + n), backward 2N(L−1)n², Grams 2N²(d + L·n) for the layer inputs
    plus 2N²·L·n for the δ's.
    """
    forward = 2 * n * (in_dim * width + (depth - 1) * width ** 2 + width)
    backward = 2 * n * (depth - 1) * width ** 2
    grams = 2 * n ** 2 * (in_dim + depth * width) + 2 * n ** 2 * depth * width
    return float(forward + backward + grams)


def matmul_gflops(device: str, dtype: torch.dtype) -> float:
    size = 4096 if device == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = _best_time(lambda: a @ b, device, repeats=5)
    return 2 * size ** 3 / seconds / 1e9


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _best_time(fn, device: str, repeats: int) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _timed_once(fn, device: str) -> float:
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def run_case(method: str, width: int, n: int, device: str, dtype: torch.dtype, repeats: int) -> dict:
    """One empirical-NTK case: cold call for memory, then the best of ``repeats`` for time."""
    spec = ArchSpec(depth=DEPTH, width=width, activation="relu", sigma_w=1.4, sigma_b=0.1)
    net = build_mlp(spec, IN_DIM, seed=0, device=device, dtype=dtype)
    x = torch.randn(n, IN_DIM, device=device, dtype=dtype, generator=None)
    call = lambda: empirical_ntk(net, x, method=method)
    # Initialise the libraries' lazy state (thread pools, allocator) on a tiny call first, so the
    # cold call's memory is the method's own.
    empirical_ntk(net, x[:2], method=method)
    start = time.perf_counter()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    else:
        before = _rss_mib()
        call()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    cold_seconds = time.perf_counter() - start
    # Calls over a second are timed once more (warm) rather than `repeats` times.
    seconds = _best_time(call, device, repeats) if cold_seconds < 1.0 else _timed_once(call, device)
    return {"seconds": seconds, "peak_mib": max(peak, 0.0)}


def empirical_table(args, matmul_rate: float) -> None:
    print(f"\n### Empirical NTK, depth-{DEPTH} relu MLP, {args.dtype}, {args.device}\n")
    print("| method | width | N | seconds | peak MiB | eff. GFLOP/s | % matmul | vs structured |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for width in args.widths:
        n_params = IN_DIM * width + (DEPTH - 1) * width ** 2 + width + DEPTH * width + 1
        for n in args.n:
            reference = None
            for method in args.methods:
                work = {"structured": 0, "jacobian": n * n_params, "ntvp": n * n * n_params / 128}[method]
                if work > args.max_work:
                    print(f"| {method} | {width} | {n} | skipped: est. work {work:.1e} > {args.max_work:.1e} "
                          "| | | | |")
                    continue
                result = _case_in_subprocess(method, width, n, args)
                gflops = structured_flops(n, width) / result["seconds"] / 1e9
                if method == "structured":
                    reference = result["seconds"]
                ratio = "" if reference is None else f"{result['seconds'] / reference:.0f}×"
                print(f"| {method} | {width} | {n} | {result['seconds']:.4f} | {result['peak_mib']:.0f} | "
                      f"{gflops:.1f} | {100 * gflops / matmul_rate:.0f}% | {ratio} |", flush=True)


def cnn_table(args) -> None:
    from ntklab.nets import build_net, cnn_layers

    print(f"\n### Structured empirical NTK of a depth-1 flatten CNN (10 outputs, mean), {args.dtype}, {args.device}\n")
    print("| channels | N | M | x2 = x1 s | x2 × x1 s |")
    print("|---:|---:|---:|---:|---:|")
    dtype = getattr(torch, args.dtype)
    for channels in args.cnn_channels:
        net = build_net(cnn_layers(1, channels, 10, readout="flatten", sigma_w=2 ** 0.5, bias=False), (1, 28, 28),
                        seed=0, device=args.device, dtype=dtype)
        for n in args.cnn_n:
            m = n if args.cnn_test_n is None else args.cnn_test_n
            x1 = torch.randn(n, 1, 28, 28, device=args.device, dtype=dtype)
            x2 = torch.randn(m, 1, 28, 28, device=args.device, dtype=dtype)
            empirical_ntk(net, x1[:2])       # the libraries' lazy state, outside the timing
            same = _timed_once(lambda: empirical_ntk(net, x1), args.device) if "same" in args.cnn_cases else None
            cross = _timed_once(lambda: empirical_ntk(net, x2, x1), args.device) if "cross" in args.cnn_cases else None
            cells = " | ".join("" if t is None else f"{t:.1f}" for t in (same, cross))
            print(f"| {channels} | {n} | {m} | {cells} |", flush=True)


def _case_in_subprocess(method: str, width: int, n: int, args) -> dict:
    # A fresh process per case, so the CPU high-water mark belongs to this case alone.
    command = [sys.executable, __file__, "--case", method, str(width), str(n), "--device", args.device,
               "--dtype", args.dtype, "--repeats", str(args.repeats)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def analytic_table(args) -> None:
    print("\n### Analytic NNGP + NTK, float64, depth 3, x2 = x1\n")
    print("| activation | N | seconds | path |")
    print("|---|---:|---:|---|")
    for activation in ("relu", "erf", "gelu"):
        for n in args.analytic_n:
            spec = ArchSpec(depth=3, width=512, activation=activation, sigma_w=1.4, sigma_b=0.1)
            x = torch.randn(n, IN_DIM, dtype=torch.float64, device=args.device)
            seconds = _best_time(lambda: analytic_kernels(spec, x), args.device, args.repeats)
            print(f"| {activation} | {n} | {seconds:.3f} | closed form |", flush=True)


def mish() -> Activation:
    """x·tanh(softplus(x)), known to ntklab only as a callable (φ' by autograd)."""
    return from_callable(lambda x: x * torch.tanh(torch.nn.functional.softplus(x)), name="mish (callable)")


QUADRATURE_ACTIVATIONS = {"tanh": lambda: get_activation("tanh"), "sigmoid": lambda: get_activation("sigmoid"),
                          "softplus": lambda: get_activation("softplus"), "silu": lambda: get_activation("silu"),
                          "mish (callable)": mish}


def polar_difference(spec: ArchSpec, x: torch.Tensor) -> float:
    """max |K − K_ref| / max |K_ref| over NNGP and NTK, K_ref with every pair through the polar rule (16 nodes per panel)."""
    from dataclasses import replace

    act = spec.act
    reference = replace(spec, activation=Activation(act.name, act.fn, act.derivative, dual=polar_dual(act, degree=32)))
    fast, slow = analytic_kernels(spec, x), analytic_kernels(reference, x)
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in [(fast.nngp, slow.nngp), (fast.ntk, slow.ntk)])


def quadrature_table(args) -> None:
    cases = [(3, 1.4, n) for n in args.quadrature_n] + [(6, 4.0, n) for n in args.large_variance_n]
    print("\n### Analytic NNGP + NTK without a closed form (Mehler series, collinear and polar rules), float64, "
          "σ_b = 0.1, x2 = x1\n")
    print(f"| activation | depth | σ_w | N | seconds | max rel. diff. vs polar rule (first {args.check_n} inputs) | "
          "neural-tangents s (deg 25, measured earlier) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    load_before = os.getloadavg()[0]
    for name, make in QUADRATURE_ACTIVATIONS.items():
        checked = set()
        for depth, sigma_w, n in cases:
            spec = ArchSpec(depth=depth, width=512, activation=make(), sigma_w=sigma_w, sigma_b=0.1)
            x = torch.randn(n, IN_DIM, dtype=torch.float64, device=args.device)
            repeats = args.repeats if n < 4000 else 1
            seconds = _best_time(lambda: analytic_kernels(spec, x), args.device, repeats)
            difference = ""
            if (depth, sigma_w) not in checked:
                difference = f"{polar_difference(spec, x[: args.check_n]):.1e}"
                checked.add((depth, sigma_w))
            nt = NEURAL_TANGENTS_TANH_SECONDS.get(n, "") if name == "tanh" and depth == 3 else ""
            print(f"| {name} | {depth} | {sigma_w:g} | {n} | {seconds:.3f} | {difference} | {nt} |", flush=True)
    # other processes on the cores slow torch's threads far more than the work itself: say how busy it was
    print(f"\n1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")


def dynamics_table(args) -> None:
    print("\n### Kernel-regression dynamics, float64, 100 times\n")
    print("| N train | N test | build (eigh) s | outputs at 100 times s | losses at 100 times s |")
    print("|---:|---:|---:|---:|---:|")
    n, n_test = args.dynamics_n, 1000
    spec = ArchSpec(depth=3, width=512, activation="relu", sigma_w=1.4, sigma_b=0.1)
    x = torch.randn(n + n_test, IN_DIM, dtype=torch.float64, device=args.device)
    kernel = analytic_kernels(spec, x).ntk
    k_train, k_test = kernel[:n, :n], kernel[n:, :n]
    y = torch.randn(n, 1, dtype=torch.float64, device=args.device)
    lr = max_learning_rate(k_train, fraction=0.5)
    times = torch.logspace(0, 5, 100, dtype=torch.float64)
    build = _best_time(lambda: mse_predictor(k_train, y, learning_rate=lr), args.device, 1)
    predict = mse_predictor(k_train, y, learning_rate=lr)
    outputs = _best_time(lambda: predict(times, 0.0, 0.0, k_test), args.device, args.repeats)
    losses = _best_time(lambda: predict.losses(times), args.device, args.repeats)
    print(f"| {n} | {n_test} | {build:.3f} | {outputs:.3f} | {losses:.4f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 2048, 4096])
    parser.add_argument("--n", type=int, nargs="+", default=[128, 1024, 4096])
    parser.add_argument("--methods", nargs="+", default=["structured", "jacobian", "ntvp"])
    parser.add_argument("--cnn-channels", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--cnn-n", type=int, nargs="+", default=[400])
    parser.add_argument("--cnn-test-n", type=int, help="M, the rows of the x2 × x1 case (default: N)")
    parser.add_argument("--cnn-cases", nargs="+", choices=["same", "cross"], default=["same", "cross"])
    parser.add_argument("--analytic-n", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--quadrature-n", type=int, nargs="+", default=[200, 1000, 4000])
    parser.add_argument("--large-variance-n", type=int, nargs="+", default=[200, 1000],
                        help="N for the depth-6, σ_w = 4 rows of the quadrature table")
    parser.add_argument("--check-n", type=int, default=16,
                        help="inputs on which the quadrature table checks against the polar rule")
    parser.add_argument("--dynamics-n", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's choice)")
    parser.add_argument("--max-work", type=float, default=1.2e9,
                        help="skip jacobian/ntvp cases whose estimated work is above this (~30 s on 2 CPU cores)")
    parser.add_argument("--skip-empirical", action="store_true")
    parser.add_argument("--skip-cnn", action="store_true")
    parser.add_argument("--skip-analytic", action="store_true")
    parser.add_argument("--skip-quadrature", action="store_true")
    parser.add_argument("--skip-dynamics", action="store_true")
    parser.add_argument("--case", nargs=3, metavar=("METHOD", "WIDTH", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.case:
        method, width, n = args.case[0], int(args.case[1]), int(args.case[2])
        print(json.dumps(run_case(method, width, n, args.device, dtype, args.repeats)))
        return
    env = environment(args.device, args.dtype)
    print(f"torch {env['versions']['torch']}, device {env['device']} ({env['device_name']}), "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores")
    if not args.skip_empirical:
        rate = matmul_gflops(args.device, dtype)
        print(f"measured {args.dtype} matmul rate: {rate:.1f} GFLOP/s")
        empirical_table(args, rate)
    if not args.skip_cnn:
        cnn_table(args)
    if not args.skip_analytic:
        analytic_table(args)
    if not args.skip_quadrature:
        quadrature_table(args)
    if not args.skip_dynamics:
        dynamics_table(args)


if __name__ == "__main__":
    main()
