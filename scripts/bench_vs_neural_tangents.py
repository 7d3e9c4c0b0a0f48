"""ntklab and neural-tangents side by side: the same cells, inputs and weights, on this machine.

    python scripts/bench_vs_neural_tangents.py --nt-python /tmp/ntvenv/bin/python
    python scripts/bench_vs_neural_tangents.py --quick          # a subset
    python scripts/bench_vs_neural_tangents.py                  # ntklab side only, and how to set up the other

neural-tangents is never a dependency of ntklab or of its tests. It needs its own environment (it pins
jax 0.4.25 and numpy < 2, and imports tensorflow; newer jax breaks it):

    python3 -m venv /tmp/ntvenv && /tmp/ntvenv/bin/pip install "neural-tangents==0.6.5" "jax[cpu]==0.4.25" "jaxlib==0.4.25" "numpy<2"

This script runs its own ntklab side, writes the inputs (and, for the empirical NTK, the torch net's
weights) as .npy files to a temporary directory, and runs itself under ``--nt-python`` as a worker
that builds the same architecture in ``neural_tangents.stax`` (NTK parametrization, the same σ_w, σ_b;
NHWC images for NCHW ones), loads the same weights, computes the same kernels and writes them back
with its times. The table then gives, per cell,

  ntklab s / neural-tangents s   min of 3 calls after a warm-up call (``block_until_ready`` on the JAX
                                 side; jitted functions are compiled by the warm-up, so compilation is
                                 excluded). A call that takes over --long seconds is timed once more
                                 after the warm-up instead of 3 times (neural-tangents' tanh quadrature;
                                 JAX still gets its compiling warm-up).
  ratio                          neural-tangents s / ntklab s (> 1: ntklab is faster),
  max rel. diff.                 max |K_ntklab − K_nt| / max |K_nt| over every kernel the cell computes
                                 (NNGP and NTK for analytic cells): a speed comparison of different
                                 numbers would be meaningless.

Cells (--quick keeps the first of each list):
  empirical   structured / jacobian / ntvp empirical NTK (neural-tangents' STRUCTURED_DERIVATIVES,
              JACOBIAN_CONTRACTION, NTK_VECTOR_PRODUCTS with vmap_axes=0, trace_axes=(-1,) = ntklab's
              outputs="mean") of a depth-3 relu MLP (σ_w = 1.4, σ_b = 0.1, 32 inputs, one output),
              widths 256…4096, N = 128 and 1024, x2 = x1, float32.
  analytic    NNGP + NTK of the same MLP (infinite width), float64, relu and erf, N = 1000 and 4000.
  tanh        the same by quadrature (ntklab's default degree; neural-tangents' ElementwiseNumerical,
              Gauss–Hermite of degree --nt-tanh-deg), float64, N = 200 and 1000.
  cntk        the CNTK (NNGP + NTK) of scripts/bench_cntk.py's ``readme_net`` — 21 × (3×3 "same" conv
              + relu), global average pool or flatten, dense(1) — on 3×32×32 images, between n images
              and n others, float32; seconds per entry are in the cell name's count.
Cells whose estimated time on either side exceeds --max-seconds are skipped and listed as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
NT_PIP = ('python3 -m venv /tmp/ntvenv && /tmp/ntvenv/bin/pip install "neural-tangents==0.6.5" '
          '"jax[cpu]==0.4.25" "jaxlib==0.4.25" "numpy<2"')
DEPTH, IN_DIM, SIGMA_W, SIGMA_B = 3, 32, 1.4, 0.1
CNTK_DEPTH, CNTK_SIZE = 21, 32
NT_METHODS = {"structured": "STRUCTURED_DERIVATIVES", "jacobian": "JACOBIAN_CONTRACTION",
              "ntvp": "NTK_VECTOR_PRODUCTS"}


# ---------------------------------------------------------------------------------------------- cells

def make_cells(args) -> list:
    """Every cell of the run: dicts with a name, a kind and the sizes; ``skip`` set where too long."""
    first = (lambda seq: list(seq)[:1]) if args.quick else list
    cells = []
    for width in first(args.widths):
        for n in first(args.n):
            for method in args.methods:
                cells.append({"kind": "empirical", "method": method, "width": width, "n": n, "dtype": "float32",
                              "name": f"empirical {method}, width {width}, N = {n}"})
    for activation in ("relu", "erf"):
        for n in first(args.analytic_n):
            cells.append({"kind": "analytic", "activation": activation, "n": n, "dtype": "float64",
                          "name": f"analytic {activation}, N = {n}"})
    for n in first(args.tanh_n):
        cells.append({"kind": "analytic", "activation": "tanh", "n": n, "dtype": "float64",
                      "name": f"analytic tanh (quadrature), N = {n}",
                      "variants": [f"deg{d}" for d in args.nt_tanh_deg]})
    for readout, n in (("gap", args.n_gap), ("flatten", args.n_flatten)):
        cells.append({"kind": "cntk", "readout": readout, "n": n, "depth": args.cntk_depth, "size": args.cntk_size,
                      "dtype": "float32",
                      "name": f"CNTK {'global avg pool' if readout == 'gap' else 'flatten'}, {n} × {n} images ({n * n} entries)"})
    for cell in cells:
        cell.setdefault("variants", [""])
        estimate = estimated_seconds(cell)
        if estimate > args.max_seconds:
            cell["skip"] = f"est. {estimate:.0f} s per call > --max-seconds {args.max_seconds:g}"
    return cells


def estimated_seconds(cell: dict) -> float:
    """The slower side's time of one call on 2 CPU cores, from the runs in README.md (rough)."""
    n = cell["n"]
    if cell["kind"] == "empirical":
        w = cell["width"]
        params = IN_DIM * w + (DEPTH - 1) * w * w + w + DEPTH * w + 1
        if cell["method"] == "structured":  # its operation count at ~30 GFLOP/s (the slower side)
            sys.path.insert(0, HERE)
            from bench_ntk import structured_flops

            return structured_flops(n, w) / 3e10
        # jacobian: N·P/4e7 s; ntvp: N²·P/128/4e7 s (bench_ntk's --max-work calibration, 1.2e9 ≈ 30 s)
        return (n * params if cell["method"] == "jacobian" else n * n * params / 128) / 4e7
    if cell["kind"] == "analytic":
        # neural-tangents' tanh (ElementwiseNumerical, the slower side since ntklab's Mehler series): 4.3 s at
        # N = 200 and 93 s at N = 1000 with x2 = x1, N(N+1)/2 pairs; closed forms ~3 s at N = 4000
        per_pair = 2e-4 if cell["activation"] == "tanh" else 4e-7
        return per_pair * n * (n + 1) / 2
    scale = (cell["depth"] / CNTK_DEPTH) * (cell["size"] / CNTK_SIZE) ** (4 if cell["readout"] == "gap" else 2)
    return n * n * scale * (3.4 if cell["readout"] == "gap" else 5e-4)


def max_rel_diff(pairs) -> float:
    """max |a − b| / max |b| over every (ours, theirs) kernel pair."""
    return max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in pairs)


# ----------------------------------------------------------------------------------------- timing

def time_calls(call, sync, long_seconds: float, repeats: int = 3):
    """(seconds, result): a warm-up call (for JAX, the compiling one), then the min of ``repeats`` calls,
    or one call if the warm-up took longer than ``long_seconds``."""
    start = time.perf_counter()
    result = sync(call())
    if time.perf_counter() - start > long_seconds:
        return _once(lambda: sync(call())), result
    try:  # ntklab's process: scripts/bench_ntk.py's helper (one more warm-up, then the best of `repeats`)
        sys.path.insert(0, HERE)
        from bench_ntk import _best_time

        return _best_time(lambda: sync(call()), "cpu", repeats), result
    except ImportError:  # the neural-tangents worker has no torch: the same loop
        return min(_once(lambda: sync(call())) for _ in range(repeats)), result


def _once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------ ntklab side

def ntklab_cell(cell: dict, workdir: str, long_seconds: float, seed: int) -> dict:
    """Run one cell in ntklab; writes its inputs (and weights) to ``workdir`` for the other side."""
    import torch

    from ntklab import ArchSpec, analytic_kernels, build_mlp, empirical_ntk

    generator = torch.Generator().manual_seed(seed)
    prefix = os.path.join(workdir, cell["id"])
    if cell["kind"] == "empirical":
        spec = ArchSpec(depth=DEPTH, width=cell["width"], activation="relu", sigma_w=SIGMA_W, sigma_b=SIGMA_B)
        net = build_mlp(spec, IN_DIM, seed=seed)
        x = torch.randn(cell["n"], IN_DIM, generator=generator)
        np.save(prefix + "_x.npy", x.numpy())
        weights = {}
        for i, layer in enumerate(net.layers):
            params = dict(layer.named_parameters())
            weights[f"w{i}"] = params["weight"].detach().numpy().T.copy()  # NT's Dense: (in, out)
            weights[f"b{i}"] = params["bias"].detach().numpy()
        np.savez(prefix + "_params.npz", **weights)
        seconds, kernel = time_calls(lambda: empirical_ntk(net, x, method=cell["method"]), lambda r: r, long_seconds)
        kernels = {"ntk": kernel.numpy()}
    elif cell["kind"] == "analytic":
        spec = ArchSpec(depth=DEPTH, width=512, activation=cell["activation"], sigma_w=SIGMA_W, sigma_b=SIGMA_B)
        x = torch.randn(cell["n"], IN_DIM, generator=generator, dtype=torch.float64)
        np.save(prefix + "_x.npy", x.numpy())
        seconds, result = time_calls(lambda: analytic_kernels(spec, x), lambda r: r, long_seconds)
        kernels = {"nngp": result.nngp.numpy(), "ntk": result.ntk.numpy()}
    else:
        sys.path.insert(0, HERE)
        from bench_cntk import readme_net

        arch = readme_net(cell["depth"], cell["readout"])
        shape = (cell["n"], 3, cell["size"], cell["size"])
        x1 = torch.randn(*shape, generator=generator, dtype=torch.float64).float()
        x2 = torch.randn(*shape, generator=generator, dtype=torch.float64).float()
        np.save(prefix + "_x1.npy", x1.numpy().transpose(0, 2, 3, 1).copy())  # NHWC for neural-tangents
        np.save(prefix + "_x2.npy", x2.numpy().transpose(0, 2, 3, 1).copy())
        block = 2 ** 22 if cell["readout"] == "gap" else 2 ** 20  # bench_cntk's defaults
        seconds, result = time_calls(
            lambda: analytic_kernels(arch, x1, x2, dtype=torch.float32, block_elements=block), lambda r: r,
            long_seconds)
        kernels = {"nngp": result.nngp.numpy(), "ntk": result.ntk.numpy()}
    for key, value in kernels.items():
        np.save(f"{prefix}_ours_{key}.npy", np.asarray(value).reshape(value.shape[0], -1))
    return {"seconds": seconds, "kernels": sorted(kernels)}


# ---------------------------------------------------------------------------- neural-tangents side

def nt_worker(workdir: str, long_seconds: float, x64: bool) -> None:
    """Run under neural-tangents' python: each cell of ``cells.json`` whose id arrives on stdin, one a
    line, answering "nt done ID" on stdout (so the two sides alternate cell by cell, under the same load)."""
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import jax

    jax.config.update("jax_enable_x64", x64)
    import neural_tangents as nt

    versions = {"jax": jax.__version__, "jaxlib": __import__("jaxlib").__version__,
                "neural_tangents": getattr(nt, "__version__", "?"), "numpy": np.__version__}
    with open(os.path.join(workdir, "nt_versions.json"), "w") as f:
        json.dump(versions, f)
    with open(os.path.join(workdir, "cells.json")) as f:
        cells = {cell["id"]: cell for cell in json.load(f)}
    print("nt ready", flush=True)
    for line in sys.stdin:
        cell_id = line.strip()
        if not cell_id:
            break
        cell = cells[cell_id]
        for variant in cell["variants"]:
            prefix = os.path.join(workdir, cell_id)
            seconds, kernels = _nt_cell(cell, prefix, variant, long_seconds)
            for key, value in kernels.items():
                np.save(f"{prefix}_nt{variant}_{key}.npy", value.reshape(value.shape[0], -1))
            with open(f"{prefix}_nt{variant}.json", "w") as f:
                json.dump({"seconds": seconds, "dtype": str(next(iter(kernels.values())).dtype)}, f)
        print(f"nt done {cell_id}", flush=True)


def _nt_cell(cell: dict, prefix: str, variant: str, long_seconds: float):
    """(seconds, kernels) of one cell in neural-tangents; ``variant`` "deg<d>" is tanh's quadrature degree."""
    import jax
    import jax.numpy as jnp
    import neural_tangents as nt
    from neural_tangents import stax

    def ready(out):
        return jax.tree_util.tree_map(lambda a: a.block_until_ready(), out)

    if cell["kind"] in ("empirical", "analytic"):
        activation = cell.get("activation", "relu")
        if activation == "tanh":
            act = stax.ElementwiseNumerical(jnp.tanh, deg=int(variant[3:]))
        else:
            act = {"relu": stax.Relu(), "erf": stax.Erf()}[activation]
        layers = []
        for _ in range(DEPTH):
            layers += [stax.Dense(cell.get("width", 512), W_std=SIGMA_W, b_std=SIGMA_B, parameterization="ntk"), act]
        init_fn, apply_fn, kernel_fn = stax.serial(*layers, stax.Dense(1, W_std=SIGMA_W, b_std=SIGMA_B,
                                                                       parameterization="ntk"))
        dtype = jnp.float32 if cell["dtype"] == "float32" else jnp.float64
        x = jnp.asarray(np.load(prefix + "_x.npy"), dtype=dtype)
    if cell["kind"] == "empirical":
        _, shapes = init_fn(jax.random.PRNGKey(0), x.shape)
        weights = np.load(prefix + "_params.npz")
        params, i = [], 0
        for shape in shapes:  # ntklab's weights (its seed), in neural-tangents' layout
            if shape == ():
                params.append(())
                continue
            params.append((jnp.asarray(weights[f"w{i}"], dtype=dtype).reshape(shape[0].shape),
                           jnp.asarray(weights[f"b{i}"], dtype=dtype).reshape(shape[1].shape)))
            i += 1
        implementation = getattr(nt.NtkImplementation, NT_METHODS[cell["method"]])
        ntk_fn = nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0, implementation=implementation)
        fn = jax.jit(lambda x, p: ntk_fn(x, None, p))
        seconds, out = time_calls(lambda: fn(x, params), ready, long_seconds)
        return seconds, {"ntk": np.asarray(out)}
    if cell["kind"] == "analytic":
        fn = jax.jit(lambda x: kernel_fn(x, None, ("nngp", "ntk")))
        seconds, out = time_calls(lambda: fn(x), ready, long_seconds)
        return seconds, {"nngp": np.asarray(out[0]), "ntk": np.asarray(out[1])}
    layers = []
    for _ in range(cell["depth"]):  # scripts/bench_cntk.py's readme_net, NHWC
        layers += [stax.Conv(1, (3, 3), padding="SAME", W_std=1.0, b_std=0.0, parameterization="ntk"), stax.Relu()]
    readout = stax.GlobalAvgPool() if cell["readout"] == "gap" else stax.Flatten()
    _, _, kernel_fn = stax.serial(*layers, readout, stax.Dense(1, W_std=1.0, b_std=0.0))
    x1 = jnp.asarray(np.load(prefix + "_x1.npy"), dtype=jnp.float32)
    x2 = jnp.asarray(np.load(prefix + "_x2.npy"), dtype=jnp.float32)
    fn = jax.jit(lambda a, b: kernel_fn(a, b, ("nngp", "ntk")))
    seconds, out = time_calls(lambda: fn(x1, x2), ready, long_seconds)
    return seconds, {"nngp": np.asarray(out[0]), "ntk": np.asarray(out[1])}


class NTWorkers:
    """The neural-tangents workers in their own python, started on first use: one for float32 cells and
    one for float64 cells (jax_enable_x64 is global to a process)."""

    def __init__(self, args, workdir: str):
        self.args, self.workdir, self.procs = args, workdir, {}

    def run(self, cell: dict) -> None:
        x64 = cell["dtype"] == "float64"
        if x64 not in self.procs:
            command = [self.args.nt_python, os.path.abspath(__file__), "--nt-worker", self.workdir,
                       "--long", str(self.args.long)]
            log = open(os.path.join(self.workdir, f"nt_stderr_{int(x64)}.txt"), "w")
            self.procs[x64] = (subprocess.Popen(command + (["--x64"] if x64 else []), stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, stderr=log, text=True), log)
            self._expect(x64, "nt ready")
        proc = self.procs[x64][0]
        proc.stdin.write(cell["id"] + "\n")
        proc.stdin.flush()
        self._expect(x64, f"nt done {cell['id']}")

    def _expect(self, x64: bool, answer: str) -> None:
        proc, log = self.procs[x64]
        for line in proc.stdout:
            if line.strip() == answer:
                return
        proc.wait()
        log.flush()
        with open(log.name) as f:
            sys.stderr.write(f.read()[-4000:])
        raise SystemExit(f"the neural-tangents worker failed (exit {proc.returncode}); see above")

    def close(self) -> None:
        for proc, log in self.procs.values():
            proc.stdin.close()
            proc.wait()
            log.close()


# ------------------------------------------------------------------------------------------ table

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nt-python", help="a python with neural-tangents 0.6.5 (see the set-up line above)")
    parser.add_argument("--quick", action="store_true", help="the first size of each list only")
    parser.add_argument("--quick-test-sizes", action="store_true",
                        help="tiny sizes (for the test suite): width 16, N = 8, analytic N = 12, tanh N = 3, "
                             "CNTK depth 2 on 3×4×4")
    parser.add_argument("--max-seconds", type=float, default=45.0,
                        help="skip cells whose estimated time per call (slower side) is above this")
    parser.add_argument("--long", type=float, default=2.0,
                        help="calls slower than this are timed once after the warm-up, not 3 times")
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 2048, 4096])
    parser.add_argument("--n", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--methods", nargs="+", default=["structured", "jacobian", "ntvp"],
                        choices=["structured", "jacobian", "ntvp"])
    parser.add_argument("--analytic-n", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--tanh-n", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--nt-tanh-deg", type=int, nargs="+", default=[25, 100],
                        help="neural-tangents' Gauss–Hermite degrees for tanh (one row each; 25 is its default)")
    parser.add_argument("--n-gap", type=int, default=2, help="images per side for the GAP CNTK (n² entries)")
    parser.add_argument("--n-flatten", type=int, default=32, help="images per side for the flatten CNTK")
    parser.add_argument("--cntk-depth", type=int, default=CNTK_DEPTH)
    parser.add_argument("--cntk-size", type=int, default=CNTK_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--nt-worker", help=argparse.SUPPRESS)
    parser.add_argument("--x64", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.nt_worker:
        nt_worker(args.nt_worker, args.long, args.x64)
        return
    if args.quick_test_sizes:
        args.widths, args.n, args.analytic_n, args.tanh_n = [16], [8], [12], [3]
        args.n_gap, args.n_flatten, args.cntk_depth, args.cntk_size = 1, 2, 2, 4

    sys.path.insert(0, HERE)
    from ntklab.results import environment

    env = environment("cpu")
    cells = make_cells(args)
    for i, cell in enumerate(cells):
        cell["id"] = f"c{i:02d}"
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ntklab_vs_nt_") as workdir:
        with open(os.path.join(workdir, "cells.json"), "w") as f:
            json.dump(cells, f)
        workers = NTWorkers(args, workdir) if args.nt_python else None
        try:
            for cell in cells:  # the two sides alternate cell by cell
                if "skip" in cell:
                    continue
                cell.update(ntklab_cell(cell, workdir, args.long, args.seed))
                if workers is not None:
                    workers.run(cell)
                print(f"done: {cell['name']}", file=sys.stderr, flush=True)
        finally:
            if workers is not None:
                workers.close()
        nt_versions = None
        if workers is not None:
            with open(os.path.join(workdir, "nt_versions.json")) as f:
                nt_versions = json.load(f)
        for cell in cells:
            for variant in cell["variants"]:
                compared = nt_versions is not None and "skip" not in cell
                name = cell["name"] + (f", neural-tangents deg = {variant[3:]}" if variant and compared else "")
                row = {"cell": name, "ntklab_s": cell.get("seconds"), "nt_s": None, "ratio": None,
                       "max_rel_diff": None, "skip": cell.get("skip")}
                if compared:
                    prefix = os.path.join(workdir, cell["id"])
                    with open(f"{prefix}_nt{variant}.json") as f:
                        row["nt_s"] = json.load(f)["seconds"]
                    row["ratio"] = row["nt_s"] / row["ntklab_s"]
                    row["max_rel_diff"] = max_rel_diff(
                        (np.load(f"{prefix}_ours_{k}.npy").astype(np.float64),
                         np.load(f"{prefix}_nt{variant}_{k}.npy").astype(np.float64)) for k in cell["kernels"])
                rows.append(row)
                if not compared:
                    break  # one row for a cell not compared

    versions = f"torch {env['versions']['torch']}, ntklab {env['versions']['ntklab']}"
    if nt_versions:
        versions += (f"; neural-tangents {nt_versions['neural_tangents']}, jax {nt_versions['jax']}, "
                     f"jaxlib {nt_versions['jaxlib']}, numpy {nt_versions['numpy']} (its own environment)")
    print(f"{env['device_name']}, {os.cpu_count()} cores; {versions}; 1-min load average {load_before:.1f} "
          f"before, {os.getloadavg()[0]:.1f} after\n")
    print("| cell | ntklab s | neural-tangents s | ratio (nt / ntklab) | max rel. difference |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        if row["skip"]:
            print(f"| {row['cell']} | skipped: {row['skip']} | | | |")
        elif row["nt_s"] is None:
            print(f"| {row['cell']} | {row['ntklab_s']:.4g} | not run | | |")
        else:
            print(f"| {row['cell']} | {row['ntklab_s']:.4g} | {row['nt_s']:.4g} | {row['ratio']:.3g}× | "
                  f"{row['max_rel_diff']:.1e} |")
    if not args.nt_python:
        print("\nneural-tangents was not run. To run its side, give it its own environment (it needs jax "
              "0.4.25 and numpy < 2):\n\n    " + NT_PIP + "\n\nthen pass --nt-python /tmp/ntvenv/bin/python")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "nt_versions": nt_versions, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
