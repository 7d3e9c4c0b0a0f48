"""The ``regress`` command: kernel regression with a model's analytic NNGP and NTK, at t = ∞.

For each kernel K (the NNGP Σ, the NTK Θ) of ``model`` on the train inputs X and test inputs X*,

    f(X*) = K(X*, X) (K(X, X) + σ² I)⁻¹ Y,     σ² = ridge × mean diag K(X, X)

(the mean prediction of an infinitely wide net trained to convergence on the MSE loss — Bayesian
for Σ, by gradient descent for Θ — Lee et al. 2019, Arora et al. 2019), with the ridge fixed or
chosen from ``ridges`` on a held-out part of the train set, solved by an eigendecomposition or a
Cholesky factorisation (``solver``, :func:`solve`). Files in the run directory:

    regression.json   test accuracy (classification sets) and MSE for each kernel, the solver, the
                      ridges tried and chosen, (eigh) the condition number of K(X, X) + σ²I and how many
                      of its directions were left unfitted (eigenvalues within the rounding of ``dtype``, the precision
                      the kernels were computed in: a pseudo-inverse), timings (kernel entries per
                      second, solve), the config
    kernel_blocks/    the kernel matrix in blocks of block_size × block_size inputs (train × train on
                      and above the diagonal, test × train), in ``dtype``, each saved as it finishes:
                      a killed job continues with the blocks it lacks, and a finished directory reuses
                      them all (re-running with other ridges only solves again); several processes
                      with the same config may fill it together, each block claimed by a lock on its
                      own .NAME.lock file while it is computed (:func:`compute_blocks`)
    predictions.pt    each kernel's prediction f(X*) (M, k) at the ridge regression.json reports, the
                      test targets (M, k) and labels (M,), and SHA-256s of the test inputs (as
                      float32, :func:`ntklab.results.test_inputs_sha256`): what
                      ``python -m ntklab compare`` pairs image by image (:mod:`ntklab.compare`);
                      written before regression.json, which marks the directory finished
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor
from tqdm.auto import tqdm

from ntklab import resources, results
from ntklab.config import RegressConfig, build_arch, check_known_keys, wants_images
from ntklab.data import Dataset
from ntklab.dynamics import MSEPredictor, accuracy, class_midpoint, mse_loss, mse_predictor
from ntklab.errors import ConfigError, check_choice, check_seed
from ntklab.kernels import analytic_kernels, limit_problem
from ntklab.kernels.analytic import default_block_elements

log = logging.getLogger(__name__)

REGRESSION_JSON = results.REGRESSION
BLOCKS = results.KERNEL_BLOCKS
KINDS = ("nngp", "ntk")
# Without a progress bar (progress=false, or a log that is not a terminal: a batch job) a worker logs
# how many blocks exist at most this often.
PROGRESS_LOG_SECONDS = 60.0
# Fields that change nothing in the results (block_elements: how many pairs one pass of analytic_kernels
# groups, for speed and memory; at most the last bits of a global-average-pool sum move with it).
_NEUTRAL = ("progress", "stop_after_blocks", "block_elements")
# Fields that change only the solve, not the kernels: a run directory's blocks serve any of them.
# The device too: its kernels agree with another's to rounding (as block_elements' groupings do), so
# blocks computed on a GPU may be solved with device=cpu on a machine with more host memory.
_NOT_COMPARED = ("ridge", "ridges", "validation_fraction", "seed", "solver", "device") + _NEUTRAL
SOLVERS = ("auto", "eigh", "cholesky")
# solver=auto: an eigendecomposition up to this many train points, a Cholesky factorisation above. In
# float64, eigh holds about 5n² numbers beside the kernel (resources.SOLVE_ARRAYS, measured) and costs
# ~9n³ flops against the factorisation's n² and n³/3: at n = 60,000 that is ~144 GB, more than any
# GPU holds, and many minutes, where the factorisation takes seconds.
EIGH_MAX_N = 20_000


def validate(cfg) -> None:
    """Check the regress config's own fields (model and data are checked where they are built)."""
    check_known_keys(cfg, RegressConfig)
    check_choice("device", cfg.device, ("auto", "cpu", "cuda"))
    check_choice("dtype", cfg.dtype, ("float32", "float64"))
    check_choice("solver", cfg.solver, SOLVERS)
    for name, value in [("ridge", cfg.ridge)] + [("ridges", r) for r in cfg.ridges]:
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(name, f"must be finite numbers >= 0, got {value!r}")
    if not 0 < cfg.validation_fraction < 1:
        raise ConfigError("validation_fraction", f"must lie in (0, 1), got {cfg.validation_fraction!r}")
    if cfg.block_size < 1:
        raise ConfigError("block_size", f"must be an integer >= 1, got {cfg.block_size!r}")
    check_seed("seed", cfg.seed)
    if cfg.block_elements is not None and cfg.block_elements < 1:
        raise ConfigError("block_elements", f"must be an integer >= 1 or null (the device's default), "
                                            f"got {cfg.block_elements!r}")
    if cfg.stop_after_blocks is not None and cfg.stop_after_blocks < 1:
        raise ConfigError("stop_after_blocks", f"must be an integer >= 1, got {cfg.stop_after_blocks!r}")


def run(cfg, run_dir: Path) -> Dict:
    """Compute the kernels (or the blocks still missing), solve, write regression.json; returns it.

    With ``stop_after_blocks`` an invocation may end before the kernels are complete: it returns
    {"status": "stopped", ...} and a later one continues.

    Several invocations with the same config may share ``run_dir`` (on the cores of one machine, or
    as the tasks of a job array on a shared filesystem): they hold the directory's lock shared, split
    the kernel blocks between them (:func:`compute_blocks`), and once all blocks exist the first to
    get there solves; the others return its result (:func:`_solved_meanwhile`), or solve themselves,
    one at a time, when their config asks for another solve (other ridges).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # taken before any wait for the directory's locks: a worker that arrives while another solves
    # then sees that solve's result as new, and returns it, instead of taking it for the one a
    # rerun asks to redo
    result_at_start = _file_stamp(run_dir / REGRESSION_JSON)
    with results.locked(run_dir, shared=True):
        try:
            admitted = _admit(cfg, run_dir)
        except Exception as err:
            # refused before the config check let it in: a directory that holds a run (its
            # config.yaml) is that run's, and its regression.json stays as it is
            if not (run_dir / results.CONFIG).exists():
                _record_failure(cfg, run_dir, err)
            raise
        try:
            return _compute_and_solve(cfg, run_dir, *admitted, result_at_start)
        except Exception as err:
            _record_failure(cfg, run_dir, err)
            raise


def _record_failure(cfg, run_dir: Path, err: Exception) -> None:
    """A failed attempt says why in regression.json (collect shows it), unless the directory already
    holds a finished result, which stays as it is. Called from the ``except`` that caught ``err``."""
    with _exclusive(run_dir):
        path = run_dir / REGRESSION_JSON
        try:
            finished = json.loads(path.read_text()).get("status") == results.OK
        except (OSError, ValueError, AttributeError):        # none yet, or not a summary
            finished = False
        if not finished:
            results.write_json(path, {"status": results.FAILED, "error": f"{type(err).__name__}: {err}",
                                      "traceback": traceback.format_exc(),
                                      "config": OmegaConf.to_container(cfg, resolve=False)})


def _exclusive(run_dir: Path):
    """The lock the workers of one run directory take, one at a time, to write its shared files
    (config.yaml, regression.json) and remove what a killed writer left."""
    return results.file_lock(run_dir / ".regress.lock", wait=True)


def _admit(cfg, run_dir: Path):
    """Check the config, load the data and build the net; save config.yaml, or refuse a config that
    differs from the one the directory holds. Returns (config, data, arch, spec, device)."""
    from ntklab.train.trainer import load_data, resolve_device

    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    data = load_data(cfg.data, images=wants_images(cfg.model))
    arch, spec = build_arch(cfg.model, data.in_shape, data.out_dim)
    problem = limit_problem(spec or arch, data.in_shape)
    if problem is not None:
        raise ConfigError("model", f"has no analytic kernels: {problem}")
    device = resolve_device(cfg.device)
    with _exclusive(run_dir):
        for leftover in results.remove_leftovers(run_dir):
            log.warning("removed %s, left by an interrupted write", leftover)
        results.check_same_config(run_dir, config, _NOT_COMPARED, schema=RegressConfig)
        (run_dir / BLOCKS).mkdir(exist_ok=True)         # after the check: a refused command adds nothing
    return config, data, arch, spec, device


def _compute_and_solve(cfg, run_dir: Path, config: Dict, data: Dataset, arch, spec, device, result_at_start) -> Dict:
    grid = BlockGrid(data.n_train, data.n_test, int(cfg.block_size))
    shortfall = _memory_shortfall(cfg, data, device, solver_for(cfg, data.n_train))
    if shortfall is not None:
        # the blocks are worth computing all the same: a machine with more memory solves with them
        log.warning("%s now: the kernel blocks are computed and saved here, but the solve will be refused "
                    "unless that much is free when they are done", shortfall)
    done = compute_blocks(spec or arch, data, grid, run_dir / BLOCKS, device=device, dtype=getattr(torch, cfg.dtype),
                          progress=cfg.progress, stop_after=cfg.stop_after_blocks,
                          block_elements=cfg.block_elements)
    if done < len(grid.blocks):
        log.info("stopped with %d of %d kernel blocks done (stop_after_blocks); run again to continue",
                 done, len(grid.blocks))
        return {"status": results.STOPPED, "blocks_done": done, "blocks": len(grid.blocks)}
    with _exclusive(run_dir):
        solved = _solved_meanwhile(run_dir, config, result_at_start)
        if solved is not None:
            log.info("another worker of this run directory solved with the same config; its regression.json stands")
            return solved
        return _solve_and_write(cfg, run_dir, data, arch, grid, device, config)


def _file_stamp(path: Path) -> Optional[Tuple[int, int, int]]:
    """(inode, size, mtime in ns) of ``path``, or None: an atomic rewrite changes the inode."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _solved_meanwhile(run_dir: Path, config: Dict, stamp_at_start) -> Optional[Dict]:
    """The regression.json another worker wrote while this one computed or waited (finished, with the
    same config but for the fields that change nothing: progress, stop_after_blocks), else None. The
    device counts here, though not for the blocks: the solve ran on it, to its rounding.

    The workers of one directory need one solve, not one each: at n = 10,000 a solve takes minutes.
    A result that was there when this worker started is solved again (a rerun asks for that)."""
    path = run_dir / REGRESSION_JSON
    if _file_stamp(path) == stamp_at_start or not (run_dir / results.PREDICTIONS).exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("status") != results.OK:
        return None

    def relevant(tree) -> Dict:
        return {key: value for key, value in (tree or {}).items() if key not in _NEUTRAL}

    same = relevant(summary.get("config")) == relevant(json.loads(json.dumps(results.json_ready(config))))
    return summary if same else None


def _memory_shortfall(cfg, data: Dataset, device: torch.device, solver: str) -> Optional[str]:
    """What memory the ``solver`` solve lacks, in words, where the host or the GPU has less available than
    :func:`ntklab.resources.regression_bytes` says it needs at least; else None."""
    itemsize = torch.empty((), dtype=getattr(torch, cfg.dtype)).element_size()
    if device.type == "cuda":
        torch.cuda.empty_cache()        # the blocks' cached arrays are free for the solve, not in use
    host, gpu = resources.regression_bytes(data.n_train, data.n_test, itemsize, solver, device.type == "cuda")
    for need, where, name in ((host, torch.device("cpu"), "the host"), (gpu, device, str(device))):
        if need and need > (have := resources.available_bytes(where)):
            return (f"kernel regression on {data.n_train} train points ({cfg.dtype} kernels, the {solver} solve "
                    f"in float64) needs at least {resources.gigabytes(need)} of memory on {name}, which has "
                    f"{resources.gigabytes(have)} available")
    return None


def _solve_and_write(cfg, run_dir: Path, data: Dataset, arch, grid: "BlockGrid", device, config: Dict) -> Dict:
    solver = solver_for(cfg, data.n_train)
    shortfall = _memory_shortfall(cfg, data, device, solver)
    if shortfall is not None:
        cheaper = ("" if solver == "cholesky"
                   else "solver=cholesky (one n × n array beside K, not five) or ")
        raise ConfigError("data.n_train", f"{shortfall}; the kernel blocks stay in {run_dir / BLOCKS}: run again "
                          f"on a machine with more memory to solve with them, or use {cheaper}fewer train points")
    train, test, kernel_seconds = assemble(grid, run_dir / BLOCKS, getattr(torch, cfg.dtype))
    started = time.perf_counter()
    solved, predicted = {}, {}
    for kind in KINDS:
        # where the kernels were computed: on a GPU run the O(n³) solve is the GPU's too;
        # widened to float64 there, one kernel at a time, so the host holds only the kernels' own dtype
        solved[kind], predicted[kind] = solve(train[kind].to(device).double(), test[kind].to(device).double(),
                                              data, cfg)
        predicted[kind] = predicted[kind].cpu()
    solve_seconds = time.perf_counter() - started
    results.save_torch(run_dir / results.PREDICTIONS, {
        **predicted, "y_test": data.y_test, "labels_test": data.labels_test,
        "test_inputs_sha256": results.test_inputs_sha256(data.x_test)})
    entries = grid.entries
    summary = {
        "status": results.OK, "n_train": data.n_train, "n_test": data.n_test, "in_shape": list(data.in_shape),
        "out_dim": data.out_dim, "arch": arch.describe(), "kernels": solved,
        "timings": {"kernel_s": kernel_seconds, "kernel_entries": entries,
                    "entries_per_s": entries / max(kernel_seconds, 1e-12), "solve_s": solve_seconds},
        **results.environment(device, cfg.dtype), "config": config}
    results.write_json(run_dir / REGRESSION_JSON, summary)
    log.info("kernel regression on %d train / %d test points: %s", data.n_train, data.n_test,
             ", ".join(f"{kind} test accuracy {r['test_accuracy']:.4f}" if r.get("test_accuracy") is not None
                       else f"{kind} test mse {r['test_mse']:.4g}" for kind, r in solved.items()))
    return summary


# ----------------------------------------------------------------------------- the kernel in blocks

@dataclass(frozen=True)
class BlockGrid:
    """The blocks of the (N + M) × N kernel [K(X, X); K(X*, X)]: ("train", r, c) for train row block
    r ≤ column block c (the lower triangle mirrors them), ("test", r, c) for every test row block."""

    n_train: int
    n_test: int
    size: int

    def chunks(self, n: int) -> List[slice]:
        return [slice(start, min(start + self.size, n)) for start in range(0, n, self.size)]

    @property
    def blocks(self) -> List[Tuple[str, int, int]]:
        columns = range(len(self.chunks(self.n_train)))
        return ([("train", r, c) for r in columns for c in columns if c >= r]
                + [("test", r, c) for r in range(len(self.chunks(self.n_test))) for c in columns])

    @property
    def entries(self) -> int:
        """Kernel entries (pairs of inputs) computed: the train triangle and the test block."""
        return self.n_train * (self.n_train + 1) // 2 + self.n_test * self.n_train

    def block_entries(self, block: Tuple[str, int, int]) -> int:
        """The pairs one block computes: b(b + 1)/2 for a diagonal train block of b images, else rows × columns."""
        split, r, c = block
        rows = self.chunks(self.n_train if split == "train" else self.n_test)[r]
        columns = self.chunks(self.n_train)[c]
        height, width = rows.stop - rows.start, columns.stop - columns.start
        return height * (height + 1) // 2 if split == "train" and r == c else height * width

    @staticmethod
    def file_name(block: Tuple[str, int, int]) -> str:
        split, r, c = block
        return f"{split}_{r:05d}_{c:05d}.pt"


def compute_blocks(arch, data: Dataset, grid: BlockGrid, blocks_dir: Path, *, device, dtype: torch.dtype,
                   progress: bool = True, stop_after: Optional[int] = None,
                   block_elements: Optional[int] = None) -> int:
    """Compute and save every block of ``grid`` that ``blocks_dir`` lacks; returns how many exist.

    Each block file holds the NNGP and NTK of its pairs on the CPU, in ``dtype`` (the precision they
    were computed in: float32 blocks take half the disk and memory of float64 ones and lose nothing),
    and the seconds it took. A diagonal train block is the symmetric kernel of its inputs (exact
    ρ = 1 on its diagonal).

    Several processes may fill one ``blocks_dir`` at once (the workers of one kernel matrix): a block
    is computed under an exclusive lock on its own lock file, a worker passes over the blocks others
    hold, and then waits for them, computing any whose holder died (the OS releases a dead process's
    lock, so no claim is ever stale). ``stop_after`` counts the blocks this call computes; it ends
    without waiting for the others.

    ``block_elements`` goes to :func:`~ntklab.kernels.analytic_kernels` (None: the device's,
    :func:`~ntklab.kernels.analytic.default_block_elements`).

    ``progress`` shows a tqdm bar; where there is none (``progress=False``, or a log that is not a
    terminal, as a batch job's), a line "kernel blocks: k of N done (m by this worker), e of E entries
    (p%)" is logged after a block at most once every ``PROGRESS_LOG_SECONDS``, with the time left at
    the rate entries were saved (by every worker) since this call started.
    """
    if block_elements is None:
        block_elements = default_block_elements(device, dtype)
    rows = {"train": grid.chunks(grid.n_train), "test": grid.chunks(grid.n_test)}
    inputs = {"train": data.x_train, "test": data.x_test}
    path = lambda block: blocks_dir / grid.file_name(block)
    blocks_saved = lambda: sum(path(b).exists() for b in grid.blocks)      # by any worker, so far
    missing = [b for b in grid.blocks if not path(b).exists()]
    bar = tqdm(total=len(grid.blocks), initial=len(grid.blocks) - len(missing), desc="kernel blocks",
               unit="block", disable=None if progress else True, dynamic_ncols=True)
    computed, started, last_report = 0, time.monotonic(), time.monotonic()
    entries_at_start = grid.entries - sum(grid.block_entries(b) for b in missing)

    def report() -> None:
        nonlocal last_report
        if bar.disable and time.monotonic() - last_report >= PROGRESS_LOG_SECONDS:
            last_report = time.monotonic()
            saved = [b for b in grid.blocks if path(b).exists()]
            entries = sum(grid.block_entries(b) for b in saved)
            line = (f"kernel blocks: {len(saved)} of {len(grid.blocks)} done ({computed} by this worker), "
                    f"{entries} of {grid.entries} entries ({100 * entries / grid.entries:.1f}%)")
            if grid.entries > entries > entries_at_start:
                # the rate of every worker's saves since this call began, which its setup slows a little
                seconds_left = (grid.entries - entries) * (last_report - started) / (entries - entries_at_start)
                line += f", about {tqdm.format_interval(seconds_left)} left"      # [h:]mm:ss, as the bar
            log.info(line)

    def compute(block) -> None:
        split, r, c = block
        x_rows = inputs[split][rows[split][r]].to(device, torch.float64)
        x_cols = data.x_train[rows["train"][c]].to(device, torch.float64)
        started = time.perf_counter()
        kernels = (analytic_kernels(arch, x_rows, dtype=dtype, block_elements=block_elements)
                   if split == "train" and r == c
                   else analytic_kernels(arch, x_rows, x_cols, dtype=dtype, block_elements=block_elements))
        nngp, ntk = kernels.nngp.cpu(), kernels.ntk.cpu()       # waits for the device
        results.save_torch(path(block), {"nngp": nngp, "ntk": ntk, "seconds": time.perf_counter() - started})

    def attempt(block, wait: bool) -> bool:
        """Compute ``block`` unless it exists once its lock is held; False if another worker holds it."""
        nonlocal computed
        lock = blocks_dir / f".{grid.file_name(block)}.lock"
        with results.file_lock(lock, wait=wait) as held:
            if not held:
                return False
            # the existence check comes after the lock: a worker that listed the block as missing may
            # get the lock only after its holder saved it
            if not path(block).exists():
                if results.remove_leftover(path(block)) is not None:      # its holder died mid-save
                    log.warning("removed the partial save of %s, left by a killed worker", grid.file_name(block))
                compute(block)
                computed += 1
            lock.unlink(missing_ok=True)    # safe: whoever locks this file next checks the block first
        bar.update(1)
        report()
        return True

    try:
        held_by_others = []
        for block in missing:
            if stop_after is not None and computed >= stop_after:
                break
            if not attempt(block, wait=False):
                held_by_others.append(block)
        for block in held_by_others:
            if stop_after is not None and computed >= stop_after:
                break
            attempt(block, wait=True)
    finally:
        bar.close()
    return blocks_saved()


def assemble(grid: BlockGrid, blocks_dir: Path, dtype: torch.dtype = torch.float64):
    """({kind: K(X, X) (N, N)}, {kind: K(X*, X) (M, N)}, seconds the blocks took in all), in ``dtype``
    (the kernels' precision; the float64 blocks earlier versions saved for float32 runs hold float32
    values, which narrow back exactly), on the CPU."""
    rows = {"train": grid.chunks(grid.n_train), "test": grid.chunks(grid.n_test)}
    columns = rows["train"]
    train = {kind: torch.empty(grid.n_train, grid.n_train, dtype=dtype) for kind in KINDS}
    test = {kind: torch.empty(grid.n_test, grid.n_train, dtype=dtype) for kind in KINDS}
    seconds = 0.0
    for block in grid.blocks:
        split, r, c = block
        path = blocks_dir / grid.file_name(block)
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise results.RunDirCorrupt(path, f"cannot be read ({type(err).__name__})",
                                        "delete it and run again to recompute that block") from err
        expected = tuple(part.stop - part.start for part in (rows[split][r], columns[c]))
        shapes = ({kind: tuple(saved[kind].shape) for kind in KINDS if kind in saved}
                  if isinstance(saved, dict) else {})
        if set(shapes) != set(KINDS) or set(shapes.values()) != {expected}:
            raise results.RunDirCorrupt(path, f"holds kernels of shapes {shapes}, not {expected} for each of "
                                        f"{', '.join(KINDS)}", "delete it and run again to recompute that block")
        seconds += float(saved["seconds"])
        target = train if split == "train" else test
        for kind in KINDS:
            target[kind][rows[split][r], columns[c]] = saved[kind]
            if split == "train" and c != r:
                target[kind][columns[c], rows[split][r]] = saved[kind].T
    return train, test, seconds


# ----------------------------------------------------------------------------- the solve

def solver_for(cfg, n_train: int) -> str:
    """The solver ``cfg.solver`` names, "auto" resolved by the number of train points (EIGH_MAX_N)."""
    if cfg.solver != "auto":
        return cfg.solver
    return "eigh" if n_train <= EIGH_MAX_N else "cholesky"


def solve(k_train: Tensor, k_test: Tensor, data: Dataset, cfg) -> Tuple[Dict, Tensor]:
    """Kernel regression with one kernel: (the ridge (chosen on a held-out split when ``cfg.ridges``
    is given), test accuracy and MSE; the test prediction (M, k)), on the kernels' device.

    With the eigh solver the summary has the train kernel's condition number and how many directions
    were left unfitted as rounding; the Cholesky solver has neither (None), and a ridge candidate whose
    K + σ²I is not positive definite in float64 is recorded as such and passed over: on the fit part
    in ``held_out``, on all train points (where the chosen ridge gives way to the next larger one
    that scored) in ``refused_on_all_points``."""
    y_train = data.y_train.to(k_train.device, torch.float64)
    y_test = data.y_test.to(k_train.device, torch.float64)
    classification = data.labels_test is not None
    # scalar ±1 targets: one threshold for the held-out and test scores, from targets of both classes
    # (a small held-out part may hold one class only; the test set's alone where the train targets
    # carry label noise)
    midpoint = class_midpoint(y_train, y_test) if classification else None
    precision = getattr(torch, cfg.dtype)       # the kernels' entries carry this dtype's rounding
    solver = solver_for(cfg, data.n_train)
    tried = []
    ridge = float(cfg.ridge)
    if cfg.ridges:
        fit, held_out = _held_out_split(data.n_train, cfg.validation_fraction, cfg.seed)
        fit, held_out = fit.to(k_train.device), held_out.to(k_train.device)
        for candidate in sorted({float(r) for r in cfg.ridges}):      # a ridge given twice is solved once
            try:
                # one gather per block (k_train[fit][:, fit] would hold a fit × n copy on the way), and the
                # fit block is this loop's own: the factorisation may overwrite it
                predicted = _predict(solver, k_train[fit[:, None], fit], k_train[held_out[:, None], fit],
                                     y_train[fit], candidate, precision, overwrite=True)[0]
            except NotPositiveDefinite as err:
                tried.append({"ridge": candidate, "error": str(err)})
                continue
            tried.append({"ridge": candidate, **_scores(predicted, y_train[held_out], classification, midpoint)})
        scored = [t for t in tried if "error" not in t]
        if not scored:
            raise ConfigError("ridges", f"no candidate gave a positive definite K + σ²I on the fit part with "
                                        f"solver={solver}: try larger ridges, or solver=eigh")
        # best held-out accuracy (classification) or MSE; ties go to the smallest ridge
        key = (lambda t: -t["accuracy"]) if classification else (lambda t: t["mse"])
        ridge = min(scored, key=key)["ridge"]
    # a ridge chosen on the fit part may not factorise the whole K, whose rounding grows with n: then the
    # next larger candidate that scored, and so on
    fallbacks = sorted(t["ridge"] for t in tried if "error" not in t and t["ridge"] > ridge)
    refused = []
    for attempt in [ridge] + fallbacks:
        try:
            predicted, predictor = _predict(solver, k_train, k_test, y_train, attempt, precision)
            ridge = attempt
            break
        except NotPositiveDefinite as err:
            refused.append(attempt)
            problem = err
    else:
        # the kernel's entries are exact only to eps·‖K‖_F of their dtype: a ridge below it fits rounding
        rounding = (torch.finfo(precision).eps * torch.linalg.matrix_norm(k_train) / k_train.diagonal().mean()).item()
        raise ConfigError("ridges" if cfg.ridges else "ridge",
                          f"{problem}: give a ridge above the rounding of the {cfg.dtype} entries "
                          f"(eps·‖K‖_F / mean diag K = {rounding:.1e} here), or solver=eigh, "
                          f"which leaves rounding-level directions unfitted")
    scores = _scores(predicted, y_test, classification, midpoint)
    spectrum = None if predictor is None else predictor.spectrum
    return {"ridge": ridge, "test_accuracy": scores.get("accuracy"), "test_mse": scores["mse"], "solver": solver,
            "condition_number": None if spectrum is None else spectrum.condition_number,
            "unfitted_directions": None if spectrum is None else int(spectrum.null.sum()),
            "held_out": tried or None, "refused_on_all_points": refused or None}, predicted


def _predict(solver: str, k_train: Tensor, k_test: Tensor, y_train: Tensor, ridge: float,
             precision: torch.dtype, overwrite: bool = False) -> Tuple[Tensor, Optional[MSEPredictor]]:
    if solver == "cholesky":
        return predict_cholesky(k_train, k_test, y_train, ridge, overwrite=overwrite), None
    return predict(k_train, k_test, y_train, ridge, precision)


class NotPositiveDefinite(ValueError):
    """K + σ²I has no Cholesky factorisation in float64."""


def predict_cholesky(k_train: Tensor, k_test: Tensor, y_train: Tensor, ridge: float,
                     overwrite: bool = False) -> Tensor:
    """K(X*, X) (K + σ²I)⁻¹ Y with σ² = ridge · mean diag K, by a Cholesky factorisation K + σ²I = LLᵀ:
    the same prediction as :func:`predict` where K + σ²I is well conditioned, in n² numbers beside K
    (none with ``overwrite``, where L takes K's place) and ~n³/3 flops, then z = L⁻¹Y and L⁻ᵀz by
    triangular solves. Without ``overwrite`` K's diagonal is shifted in place and put back exactly
    afterwards, so K is not copied. Raises NotPositiveDefinite where the factorisation fails (a
    rank-deficient K at ridge 0, or eigenvalues that rounding made negative)."""
    diagonal = k_train.diagonal()
    original = None if overwrite else diagonal.clone()
    diagonal.add_(ridge * diagonal.mean())
    try:
        if overwrite:
            # LAPACK and cuSOLVER write column-major: K's transposed view is that layout over the same
            # storage (K is symmetric), so the factor takes K's place; out=K itself would be computed in a
            # hidden copy of K and copied back
            in_place = k_train.mT
            factor, info = torch.linalg.cholesky_ex(in_place, out=(in_place, torch.empty(
                (), dtype=torch.int32, device=k_train.device)))
        else:
            factor, info = torch.linalg.cholesky_ex(k_train)
    finally:
        if original is not None:
            diagonal.copy_(original)
    if int(info):
        raise NotPositiveDefinite(f"K + σ²I (ridge {ridge:g}) is not positive definite in float64 "
                                  f"(the factorisation failed at column {int(info)} of {len(k_train)})")
    # two triangular solves with the factor where it lies (column-major, the layout LAPACK and cuSOLVER
    # read in place): torch.cholesky_solve copies it first, n² more numbers at the solve's peak
    # (3n² float64 in all instead of 2n²: 86 GB instead of 58 GB at n = 60,000, over an 80 GB GPU)
    half = torch.linalg.solve_triangular(factor, y_train, upper=False)
    return k_test @ torch.linalg.solve_triangular(factor.mT, half, upper=True)


def predict(k_train: Tensor, k_test: Tensor, y_train: Tensor, ridge: float,
            precision: torch.dtype = torch.float64) -> Tuple[Tensor, MSEPredictor]:
    """K(X*, X) (K(X, X) + ridge·mean diag·I)⁻¹ Y: the t = ∞ prediction of :func:`ntklab.mse_predictor`
    from f_0 = 0, and the predictor. One eigendecomposition; eigenvalues within rounding of 0 for
    ``precision``, the dtype the kernels were computed in, are left unfitted (a pseudo-inverse):
    a float32 kernel's smallest eigenvalues are its rounding, and inverting them fits noise."""
    predictor = mse_predictor(k_train, y_train, ridge=ridge, precision=precision)
    return predictor(math.inf, 0.0, 0.0, k_test).test, predictor


def _scores(predicted: Tensor, y: Tensor, classification: bool,
            midpoint: Optional[float] = None) -> Dict[str, float]:
    """MSE as 1/(Mk) Σ‖f − y‖² (twice :func:`mse_loss`) and, for classification, the accuracy
    (scalar targets: on either side of ``midpoint``, :func:`ntklab.dynamics.correct`)."""
    scores = {"mse": 2 * mse_loss(predicted, y).item()}
    if classification:
        scores["accuracy"] = accuracy(predicted, y, midpoint)
    return scores


def _held_out_split(n: int, fraction: float, seed: int):
    """(fit rows, held-out rows) of a seeded permutation of the n train points; both non-empty."""
    if n < 2:
        raise ConfigError("ridges", f"choosing a ridge needs at least 2 train points, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    held = min(max(1, round(fraction * n)), n - 1)
    return torch.from_numpy(np.sort(order[held:])), torch.from_numpy(np.sort(order[:held]))
