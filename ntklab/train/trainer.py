"""The training run: gradient descent on the MSE loss with tracking, checkpoints and run files.

:func:`run` takes a validated config and a run directory and leaves in it the files of
:mod:`ntklab.results`. The loop is

    θ_{s+1} = θ_s − η ∇L_B(θ_s),   L_B = 1/(2|B|k) Σ_{i∈B} ‖f(x_i) − y_i‖²   (B the whole train set
                                                                            unless optim.batch_size)

(with heavy-ball momentum when optim.momentum > 0), measuring the tracked quantities at the log
steps (:mod:`ntklab.train.tracking`). The run diverges at the first step s whose L(θ_s) is not
finite or above optim.divergence_factor × L(θ_0); the losses are read back from the device every
optim.divergence_check_every steps only, and that step is recovered exactly (:class:`_StepLoop`). A checkpoint holds θ_s, the optimizer and RNG states and
the metrics file's length after step s's record, so a run stopped anywhere and started again in
the same directory continues exactly where the checkpoint left it: the resumed run's metrics
equal an uninterrupted run's, byte for byte, on the same device.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from ntklab import resources, results
from ntklab.config import TrainConfig, build_arch, validate, wants_images
from ntklab.data import Dataset, load_dataset
from ntklab.dynamics import mse_loss
from ntklab.errors import ConfigError
from ntklab.kernels import limit_problem
from ntklab.layers import Layer
from ntklab.nets import Net, build_mlp, build_net
from ntklab.quantities import SPECTRAL, TRACKED
from ntklab.scaling import fit_power_law
from ntklab.spec import ArchSpec
from ntklab.train.stability import classify
from ntklab.train.tracking import (NetworkOutputs, ReferenceKernels, SpectrumTracker, Tracker, reference_kernels,
                                   test_row)

log = logging.getLogger(__name__)

# Tracked quantities that compare the network with its infinite-width limit: left out (with the
# reason in the summary) for a net whose layers have no analytic kernel rule.
LIMIT_QUANTITIES = ("kernel_to_limit", "pred_gap_analytic")
# The fields of ReferenceKernels that depend on the data and the architecture only (not on θ_0).
ANALYTIC_FIELDS = ("analytic_train", "analytic_test", "analytic_nngp_probe", "test_row_analytic")

# Config fields that do not change what a run computes, so a resumed run may differ in them.
# (``seeds`` is always 1 in a config.yaml: a group of seeds writes one per seed, as separate runs would.)
_NOT_COMPARED = ("stop_after", "track.progress", "track.plots", "track.save_kernels", "track.checkpoint_every",
                 "optim.divergence_check_every", "seeds")


def log_schedule(steps: int, count: int) -> List[int]:
    """Step 0 and ``count`` log-spaced steps in [1, steps] (rounded, duplicates dropped), ascending;
    always includes ``steps``."""
    spaced = np.unique(np.rint(np.geomspace(1, steps, count)).astype(int)) if count > 1 else np.array([steps])
    return sorted({0, steps, *(int(s) for s in spaced)})


def resolve_device(name: str) -> torch.device:
    """"auto" → CUDA when available, else CPU; "cuda" without a GPU is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was asked for but this machine has no CUDA GPU", allowed=("auto", "cpu"))
    return torch.device(name)


def load_data(data_cfg, images: bool = False) -> Dataset:
    """The data set of the data config (its fields are load_dataset's arguments); ``images``: as
    (N, C, H, W) for a convolutional model, else flat (N, d)."""
    arguments = OmegaConf.to_container(data_cfg, resolve=True) if OmegaConf.is_config(data_cfg) else dict(data_cfg)
    arguments["images"] = images
    name = arguments.pop("name")
    try:
        return load_dataset(name, **arguments)
    except ConfigError as err:
        if images and err.field == "data.name":     # say which choice asked for images
            raise ConfigError("data", f"model=cnn takes images, but data={name} has vectors; use an image data set",
                              allowed=err.allowed) from None
        raise


def hidden_width(model: Net) -> Optional[int]:
    """The largest output width (features or channels) of the net's parametrized layers before its
    readout; None for a net with no hidden layer."""
    nodes = model.root.parametrized()[:-1]
    return max(node.out_shape[0] for node in nodes) if nodes else None


def learning_rate(optim_cfg, model: Net, reference: ReferenceKernels) -> float:
    """η = lr × unit × width factor (see :class:`ntklab.config.OptimConfig`)."""
    lr = float(optim_cfg.lr)
    if optim_cfg.lr_unit != "absolute":
        lr *= reference.eta_max(optim_cfg.lr_unit)
    width = hidden_width(model)
    if optim_cfg.lr_width_scaling == "inverse" and width is not None:
        lr *= optim_cfg.base_width / width
    return lr


@dataclass
class _Timing:
    """Seconds spent, accumulated over the invocations of a resumed run."""

    setup: float = 0.0        # reference kernels and predictions
    steps: float = 0.0        # gradient steps
    tracking: float = 0.0     # measurements at log steps
    other: float = 0.0        # checkpoints, files
    # the latest invocation's first gradient step, also counted in steps: warm-up, and with
    # compile set the compilation (seconds, against milliseconds for the steps after it)
    first_step: float = 0.0

    def as_dict(self, steps_done: int) -> Dict[str, float]:
        total = self.setup + self.steps + self.tracking + self.other
        return {"wall_s": total, "setup_s": self.setup, "steps_s": self.steps, "tracking_s": self.tracking,
                "per_step_s": self.steps / max(steps_done, 1), "first_step_s": self.first_step,
                # the share of the loop (steps + tracking) spent measuring, and with setup counted
                "tracking_fraction": self.tracking / max(self.steps + self.tracking, 1e-12),
                "tracking_fraction_with_setup": (self.tracking + self.setup) / max(total, 1e-12)}


@dataclass
class _Clock:
    device: torch.device
    timing: _Timing = field(default_factory=_Timing)
    _last: float = field(default_factory=time.perf_counter)

    def lap(self, bucket: str) -> None:
        """Charge the time since the last lap to ``bucket``; waits for queued GPU work first."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        setattr(self.timing, bucket, getattr(self.timing, bucket) + now - self._last)
        self._last = now


def run(cfg, run_dir: Path) -> Dict:
    """Train as ``cfg`` says, writing into ``run_dir``; returns the summary (also in summary.json).

    With ``seeds`` = M > 1 the M nets of seeds seed … seed+M−1 are trained at once, each into
    ``run_dir/seed_<s>`` as a separate run with seed=<s> would be (:func:`ntklab.train.ensemble.run_seeds`).

    A run directory whose summary says ok or diverged is finished: its summary is returned as is.
    The directory is locked for the call: while another process runs in it, this raises
    :class:`ntklab.results.RunDirBusy` (naming that process) before reading or writing anything.
    Raises :class:`ConfigError` for invalid values (a fresh directory then gets a failed
    summary.json saying why, and nothing else); any other exception is recorded as status "failed" in
    summary.json and re-raised.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with results.locked(run_dir):      # one process per run directory (RunDirBusy otherwise)
        for leftover in results.remove_leftovers(run_dir):
            log.warning("removed %s, left by an interrupted write", leftover)
        if cfg.get("seeds", 1) != 1:
            from ntklab.train.ensemble import run_seeds
            return run_seeds(cfg, run_dir)
        return _run_locked(cfg, run_dir)


def _read_summary(run_dir: Path) -> Optional[Dict]:
    """The run directory's summary; one that is cut short or corrupt (never written so by the
    trainer, whose writes are atomic) is removed, and the run treated as unfinished."""
    try:
        return results.read_summary(run_dir)
    except ValueError as err:
        log.warning("%s; removing it and treating the run as unfinished", err)
        (run_dir / results.SUMMARY).unlink()
        return None


def _run_locked(cfg, run_dir: Path) -> Dict:
    try:
        validate(cfg)
        if (run_dir / results.SEEDS).exists():
            raise ConfigError("seeds", f"{run_dir} holds seeds trained at once (its {results.SEEDS}); run it with "
                              "the same seed and seeds, or choose a new run directory")
        config = OmegaConf.to_container(cfg, resolve=True)
        finished = _read_summary(run_dir)
        if finished is not None and finished.get("status") in results.FINISHED:
            results.check_same_config(run_dir, config, _NOT_COMPARED, schema=TrainConfig)
            log.info("%s already holds a finished run (status %s); nothing to do", run_dir, finished["status"])
            return finished
        device, dtype, data, arch, spec, no_limit = _prepare(cfg)
        results.check_same_config(run_dir, config, _NOT_COMPARED, schema=TrainConfig)
    except ConfigError as err:
        _record_refusal(run_dir, cfg, err)
        raise
    if finished is not None:      # a failed attempt's summary: this invocation retries, so it no longer holds
        (run_dir / results.SUMMARY).unlink()
    clock = _Clock(device)
    try:
        state = _set_up(cfg, config, run_dir, device, dtype, data, arch, spec, no_limit, clock)
        _resume(state)
        _loop(state)
        if state.status == results.STOPPED:
            return {"status": results.STOPPED, "step": state.step}
        return _summarize(state)
    except Exception as err:
        _record_failure(run_dir, err, device, cfg, config)
        raise


def _prepare(cfg, members: int = 1):
    """What a validated config trains on: (device, dtype, data set, architecture, ArchSpec or None,
    why the model has no analytic kernels or None). Raises ConfigError for a config that cannot
    run: eta_max without an analytic NTK, or ``members`` such runs (seeds at once) that the device
    cannot hold."""
    device = resolve_device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    data = load_data(cfg.data, images=wants_images(cfg.model))
    arch, spec = build_arch(cfg.model, data.x_train.shape[1:], data.out_dim)
    no_limit = limit_problem(spec or arch, data.x_train.shape[1:])
    if no_limit is not None and cfg.optim.lr_unit == "eta_max":
        raise ConfigError("optim.lr_unit", f"eta_max is 2Nk/λ_max of the analytic NTK, which this model has not "
                          f"({no_limit}); use eta_max_empirical or absolute")
    _check_memory(cfg, device, data, members)
    return device, dtype, data, arch, spec, no_limit


def _record_failure(run_dir: Path, err: Exception, device: torch.device, cfg, config: Dict) -> None:
    """summary.json with status failed, the error and its traceback (called while handling ``err``)."""
    summary = {"status": results.FAILED, "error": f"{type(err).__name__}: {err}",
               "traceback": traceback.format_exc(), **results.environment(device, cfg.dtype), "config": config}
    try:
        results.write_json(run_dir / results.SUMMARY, summary)
    except OSError as write_err:    # no room even for the summary (a full disk): the error says enough
        log.error("the failed run's summary could not be written either: %s", write_err)


def _check_memory(cfg, device: torch.device, data: Dataset, members: int = 1) -> None:
    """Refuse a run (``members`` runs of it at once) its device cannot hold, before allocating
    anything (:mod:`ntklab.resources`)."""
    from ntklab import resources

    need = members * resources.run_bytes(cfg, data.x_train.shape[1:], data.out_dim)
    have = resources.available_bytes(device)
    if need > have:
        many = f"{members} seeds at once need" if members > 1 else "this run needs"
        raise ConfigError("model.width", f"{many} at least {resources.gigabytes(need)} of memory but {device} "
                          f"has {resources.gigabytes(have)} available; use a smaller width, depth"
                          f"{', kernel size' if cfg.model.get('name') == 'cnn' else ''} or data set, or a device with "
                          "more memory")


def _record_refusal(run_dir: Path, cfg, err: ConfigError) -> None:
    """A refused config leaves a failed summary.json saying why (a sweep's job directory is then
    never empty), unless the directory holds another run's files (config.yaml) or seeds trained at
    once (seeds.json), which stay as they are."""
    if (run_dir / results.CONFIG).exists() or (run_dir / results.SEEDS).exists():
        return
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:       # an interpolation that cannot be resolved: keep the config as written
        config = OmegaConf.to_container(cfg, resolve=False)
    results.write_json(run_dir / results.SUMMARY, {
        "status": results.FAILED, "error": f"ConfigError: {err}", "config": config, **results.environment("cpu")})


@dataclass
class _RunState:
    """One invocation of a run: what :func:`_set_up` builds at θ_0, and how far :func:`_resume` and
    :func:`_loop` have brought it. :func:`_summarize` reads it at the end."""

    cfg: DictConfig
    config: Dict                         # the resolved config (config.yaml, the summary's "config")
    run_dir: Path
    device: torch.device
    data: Dataset                        # on the run's device, in its dtype
    model: Net                           # an MLP for model=mlp
    outputs: NetworkOutputs              # what is trained: f, or the lazy-scaled α(f − f_0)
    reference: ReferenceKernels
    tracker: Tracker
    optimizer: torch.optim.Optimizer
    batches: torch.Generator             # mini-batch order; part of the checkpoint
    clock: _Clock
    lr: float
    eta_max: Dict[str, float]            # "analytic" / "empirical": η_max of each kernel computed
    n_params: int
    loss_0: float                        # initial train loss: divergence is measured against it
    log_steps: FrozenSet[int]
    no_limit: Optional[str] = None       # why the net has no analytic kernels (limit quantities left out)
    step: int = 0                        # gradient steps done
    metrics_bytes: int = 0               # metrics.jsonl's length at the checkpoint resumed from
    metrics_sha256: Optional[str] = None  # and the SHA-256 of those bytes, as the checkpoint vouches
    writer: Optional[results.MetricsWriter] = None
    progress: Optional[tqdm] = None
    status: str = results.OK             # ok | diverged | stopped (stop_after)
    diverged_at: Optional[int] = None
    last_record: Optional[Dict] = None   # the last line written to metrics.jsonl
    # the largest full-batch train loss seen at any step (the loss each step computes anyway): a
    # catapult's spike can fall between log steps. None for mini-batch runs, and after resuming
    # from a checkpoint that did not record it.
    loss_peak: Optional[float] = None

    @property
    def steps(self) -> int:
        return int(self.cfg.optim.steps)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / results.CHECKPOINT

    def record(self, at: int) -> Dict:
        """Measure the tracked quantities at step ``at`` and append them to metrics.jsonl."""
        self.clock.lap("steps")
        measured = self.tracker.measure(self.model, at)
        self.clock.lap("tracking")
        self.writer.write(measured)
        shown = {k: f"{measured[k]:.3g}" for k in ("train_loss", "test_loss", "kernel_change") if k in measured}
        self.progress.set_postfix(shown, refresh=False)
        if self.progress.disable and self.cfg.track.progress:
            log.info("step %d/%d: %s", at, self.steps, ", ".join(f"{k} {v}" for k, v in shown.items()))
        self.last_record = measured
        return measured

    def diverge(self, loss: float, why: str) -> None:
        """End the run as diverged at this step: metrics.jsonl gets a short
        {"step", "train_loss", "diverged"} line (the summary keeps the last full record as final)."""
        self.status, self.diverged_at = results.DIVERGED, self.step
        self.last_record = {"step": self.step, "train_loss": loss, "diverged": True}
        self.writer.write(self.last_record)
        log.warning("diverged at step %d: %s", self.step, why)

    def checkpoint(self) -> None:
        """Write checkpoint.pt: θ, optimizer and RNG states, the step, metrics.jsonl's length, timing."""
        self.clock.lap("steps")
        saved = {
            "step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "batch_generator": self.batches.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "metrics_bytes": self.writer.position, "metrics_sha256": self.writer.digest,
            "timing": dict(vars(self.clock.timing))}
        if self.loss_peak is not None:
            saved["loss_peak"] = self.loss_peak
        results.save_torch(self.checkpoint_path, results.with_checksum(saved))     # verified by _resume
        self.clock.lap("other")


def _set_up(cfg, config: Dict, run_dir: Path, device: torch.device, dtype: torch.dtype, data: Dataset,
            arch: Layer, spec: Optional[ArchSpec], no_limit: Optional[str], clock: _Clock,
            analytic_from: Optional[ReferenceKernels] = None) -> _RunState:
    """The network at θ_0, its reference kernels and predictions, the learning rate and the optimizer
    (the time spent is charged to setup). ``spec`` is the MLP's (None for other nets); ``no_limit``
    says why the net has no analytic kernels (None when it has them). ``analytic_from``: another
    run's reference kernels on the same data and architecture, whose analytic kernels (functions of
    those alone) are taken rather than computed again."""
    optim, track = cfg.optim, cfg.track
    schedule = log_schedule(int(optim.steps), track.log_steps)
    data = data.to(device, dtype)
    in_shape = tuple(data.x_train.shape[1:])
    if spec is not None:
        model = build_mlp(spec, in_dim=in_shape[0], seed=cfg.seed, device=device, dtype=dtype)
    else:
        model = build_net(arch, in_shape, seed=cfg.seed, device=device, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("run directory %s | %s | %d parameters | device %s (%s), %s", run_dir, spec or arch.describe(),
             n_params, device, results.device_name(device), cfg.dtype)

    if track.probe_size > data.n_train:
        log.warning("track.probe_size=%d is more than the %d train points: the probe set is all of them",
                    track.probe_size, data.n_train)
    quantities = list(track.quantities)
    if no_limit is not None:
        left_out = [name for name in quantities if name in LIMIT_QUANTITIES]
        quantities = [name for name in quantities if name not in LIMIT_QUANTITIES]
        log.warning("no analytic kernels for this model (%s): %s left out", no_limit, ", ".join(left_out) or "nothing")
    if cfg.model.alpha is not None and cfg.model.alpha > 10 and dtype == torch.float32:
        log.warning("model.alpha=%g in float32: parameter steps shrink like 1/alpha and fall below float32's "
                    "rounding of the weights at large alpha; use dtype=float64 for lazy-scale sweeps", cfg.model.alpha)
    # the measurements' forward passes in the step's chunks (their no-grad passes have no graph to
    # keep, but the same fresh-page cost per large tensor)
    chunk = resources.chunk_rows(model.root, max(data.n_train, data.n_test), device, dtype.itemsize,
                                 optim.get("chunk_size"))
    outputs = NetworkOutputs(model, data, cfg.model.alpha, chunk=chunk)
    reference = _saved_reference(run_dir, device)
    if reference is None:
        analytic = optim.lr_unit == "eta_max" or bool(set(LIMIT_QUANTITIES) & set(quantities))
        shared = analytic and analytic_from is not None and analytic_from.analytic_train is not None
        reference = reference_kernels(
            model, data, probe_size=track.probe_size, full_kernel_limit=track.full_kernel_limit, outputs=outputs,
            analytic=analytic and not shared,
            empirical=optim.lr_unit == "eta_max_empirical" or "pred_gap_linear" in quantities)
        if shared:
            for name in ANALYTIC_FIELDS:
                setattr(reference, name, getattr(analytic_from, name))
        if track.checkpoint_every:
            _save_reference(run_dir, reference)
    lr = learning_rate(optim, model, reference)
    eta_max = {}
    for kind, unit, kernel in (("analytic", "eta_max", reference.analytic_train),
                               ("empirical", "eta_max_empirical", reference.empirical_train)):
        if kernel is None:
            continue
        try:
            eta_max[kind] = reference.eta_max(unit)
        except ConfigError:      # only for the log line here: an absolute learning rate does without
            pass
    log.info("learning rate %.6g (eta_max: %s)", lr, ", ".join(f"{k} {v:.6g}" for k, v in eta_max.items()) or "-")
    spectral = [name for name in quantities if name in SPECTRAL]
    spectrum = SpectrumTracker(data, outputs, lr, spectral, points=track.spectrum_points, top=track.top_eigenvalues,
                               lanczos_steps=track.lanczos_steps, lanczos_tol=track.lanczos_tol,
                               full_kernel_limit=track.full_kernel_limit) if spectral else None
    tracker = Tracker(model, data, reference, lr, schedule, quantities, outputs, spectrum=spectrum)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=optim.momentum)
    batches = torch.Generator().manual_seed(cfg.seed)
    loss_0 = mse_loss(reference.f0_train, tracker.y_train).item()
    full_batch = optim.batch_size is None or optim.batch_size >= data.n_train
    clock.lap("setup")
    return _RunState(cfg=cfg, config=config, run_dir=run_dir, device=device, data=data, model=model, outputs=outputs,
                     reference=reference, tracker=tracker, optimizer=optimizer, batches=batches, clock=clock, lr=lr,
                     eta_max=eta_max, n_params=n_params, loss_0=loss_0, log_steps=frozenset(schedule),
                     no_limit=no_limit, loss_peak=loss_0 if full_batch else None)


def _save_reference(run_dir: Path, reference: ReferenceKernels) -> None:
    """reference.pt: the fields of ``reference`` (tensors on the CPU, in their dtypes) and the SHA-256
    of them, so that a resumed run skips computing them (:func:`_saved_reference`)."""
    saved = {item.name: getattr(reference, item.name) for item in fields(ReferenceKernels)
             if not item.name.startswith("_")}          # not the η_max cache: recomputed from the kernels
    saved = {name: value.cpu() if torch.is_tensor(value) else value for name, value in saved.items()}
    results.save_torch(run_dir / results.REFERENCE, results.with_checksum(saved))


def _saved_reference(run_dir: Path, device: torch.device) -> Optional[ReferenceKernels]:
    """The reference kernels an earlier invocation of this run saved at its setup, on ``device``, or
    None: none saved, or a file that cannot be read or does not match its checksum (computed again
    then, with a warning; they are a function of the config, which the caller has checked is the
    run directory's)."""
    path = run_dir / results.REFERENCE
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        if not results.pop_checksum(saved):      # absent or not matching
            raise ValueError("its contents do not match the checksum stored with them")
        reference = ReferenceKernels(**saved)
    except Exception as err:
        log.warning("%s cannot be used (%s: %s); computing the reference kernels again", path, type(err).__name__, err)
        return None
    log.info("reference kernels at θ_0 read from %s, saved by an earlier invocation of this run", path.name)
    return reference


def _resume(state: _RunState) -> None:
    """Continue from checkpoint.pt if there is one (θ, optimizer and RNG states, step, timing so far),
    then open metrics.jsonl cut back to the length it had at that checkpoint (0: a fresh file).
    The checkpoint's checksum and that of the metrics prefix it vouches for are verified first:
    :class:`ntklab.results.RunDirCorrupt` when either does not match."""
    path = state.checkpoint_path
    if path.exists():
        try:
            saved = torch.load(path, map_location=state.device, weights_only=True)
        except Exception as err:
            raise results.RunDirCorrupt(path, f"cannot be read ({type(err).__name__})") from err
        verified = results.pop_checksum(saved)
        if verified is None:        # written before checkpoints carried checksums: nothing to verify
            log.warning("%s has no checksum (an older checkpoint); resuming without verifying it", path)
        elif not verified:
            raise results.RunDirCorrupt(path, "its contents do not match the checksum stored with them")
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        state.batches.set_state(saved["batch_generator"].cpu())
        # nothing in the loop draws from the global generators today; restored so nothing added later can diverge
        torch.set_rng_state(saved["torch_rng"].cpu())
        if saved["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in saved["cuda_rng"]])
        state.step, state.metrics_bytes = saved["step"], saved["metrics_bytes"]
        state.loss_peak = saved.get("loss_peak") if state.loss_peak is not None else None
        state.metrics_sha256 = saved.get("metrics_sha256")
        clock = state.clock
        setup_now = clock.timing.setup      # this invocation's setup adds to the earlier ones
        clock.timing = _Timing(**saved["timing"])
        clock.timing.setup += setup_now
        log.info("resuming from the checkpoint at step %d", state.step)
    state.writer = results.MetricsWriter(state.run_dir / results.METRICS, keep_bytes=state.metrics_bytes,
                                         expected_digest=state.metrics_sha256)


def _loop(state: _RunState) -> None:
    """Gradient steps until optim.steps (:class:`_StepLoop` with this run's own module and optimizer)."""
    _StepLoop(_ModuleStepper(state)).run()


def compiled(fn, mode: Optional[str]):
    """``fn`` compiled by ``torch.compile`` in ``mode`` (config ``compile``), or ``fn`` itself for None.

    The compile happens at the first call, which then takes seconds to a minute (charged to the
    steps); the shapes of a run's steps do not change, so it compiles once. Compiled code fuses
    elementwise operations and may reorder reductions: the losses agree with eager ones to rounding,
    not bit for bit (tests/test_compile.py)."""
    if mode is None:
        return fn
    step = torch.compile(fn, mode=mode, dynamic=False)
    if mode != "reduce-overhead":
        return step

    def graphed_step(*args):
        # Each call is a new step for the CUDA graphs, whose outputs of the previous one may be
        # overwritten: torch infers that only once a backward has run, and a loss that ends a run
        # (diverged, or read before a stop) never gets its backward.
        torch.compiler.cudagraph_mark_step_begin()
        return step(*args)
    return graphed_step


def backward_in_chunks(n: int, chunk: int, scale: float, chunk_loss) -> torch.Tensor:
    """The backward pass of s·L over n rows taken ``chunk`` at a time, the gradients accumulating
    in the parameters' ``.grad`` (zero them first): L = Σ_c (n_c/n) L_c, with ``chunk_loss(rows)``
    the loss L_c of the rows ``rows`` (a slice), a scalar or one per member (M,). No chunk's graph
    outlives its pass. Returns L, detached."""
    total = None
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        loss = chunk_loss(rows) * ((rows.stop - rows.start) / n)
        (loss * scale).sum().backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total


class _Overflow(Exception):
    """The learning rate of the members ``indices`` does not fit the network's dtype (optim.lr=1e308
    in float32): their step would be infinite."""

    def __init__(self, indices: Sequence[int]):
        super().__init__(f"learning rate overflow of members {list(indices)}")
        self.indices = list(indices)


class _ModuleStepper:
    """The gradient step of one run: its module, its ``torch.optim.SGD`` (what :class:`_StepLoop` drives).

    The interface :class:`_StepLoop` needs, shared with :class:`ntklab.train.ensemble.StackedStepper`
    (M members at once; here M = 1): ``states`` (the members still training), :meth:`loss`,
    :meth:`update`, :meth:`save`/:meth:`restore` (everything a step changes), :meth:`publish` (bring
    the members' own modules and optimizers up to date, before they are measured or checkpointed) and
    :meth:`drop` (members that diverged stop training).
    """

    def __init__(self, state: _RunState):
        self.states = [state]
        self.batch_size = state.cfg.optim.batch_size     # read once: a config lookup costs ~20 µs a step
        batch = min(self.batch_size or state.data.n_train, state.data.n_train)
        self.chunk = resources.chunk_rows(state.model.root, batch, state.device,
                                          next(state.model.parameters()).dtype.itemsize, state.cfg.optim.get("chunk_size"))
        self.chunked = self.chunk < batch       # every step's batch has the same rows
        # the step's forward (and through it the backward) compiled or not; the module itself stays
        # eager for the measurements, whose torch.func transforms want the plain forward
        self.forward = compiled(state.model, state.cfg.get("compile"))

    def loss(self) -> torch.Tensor:
        """L_B(θ_s) on this step's batch (drawing the mini-batch): a scalar on the run's device.

        Chunked (``self.chunk`` < the batch), the gradient of s·L_B is accumulated here, chunk by
        chunk (L_B = Σ_c (n_c/n) L_c), so that no chunk's graph outlives its pass; the loss returned
        is then detached, and :meth:`update` only steps."""
        state = self.states[0]
        data = state.data
        rows = _batch_rows(data, self.batch_size, state.batches)
        x, y = (data.x_train, data.y_train) if rows is None else (data.x_train[rows], data.y_train[rows])
        if not self.chunked:
            return mse_loss(state.outputs(self.forward, x, "train", rows), y)
        state.optimizer.zero_grad(set_to_none=True)
        return backward_in_chunks(
            x.shape[0], self.chunk, state.outputs.loss_scale,
            lambda part: mse_loss(state.outputs(self.forward, x[part], "train", part if rows is None else rows[part]),
                                  y[part]))

    def update(self, loss: torch.Tensor) -> None:
        """θ ← θ − η ∇(s·L) (with momentum when configured; s = outputs.loss_scale), the gradient from
        ``loss``'s graph or the one :meth:`loss` accumulated in chunks; raises
        :class:`_Overflow` when η does not fit the dtype (nothing is then changed but the gradients)."""
        state = self.states[0]
        if not self.chunked:
            state.optimizer.zero_grad(set_to_none=True)
            (loss * state.outputs.loss_scale).backward()
        try:
            state.optimizer.step()
        except RuntimeError as err:
            if "overflow" not in str(err):
                raise
            raise _Overflow([0]) from None

    def save(self) -> Dict:
        """A copy of what a step changes: θ, the optimizer's state, the mini-batch generator."""
        state = self.states[0]
        return {"model": {k: v.detach().clone() for k, v in state.model.state_dict().items()},
                "optimizer": copy.deepcopy(state.optimizer.state_dict()), "batches": state.batches.get_state()}

    def restore(self, saved: Dict) -> None:
        state = self.states[0]
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(copy.deepcopy(saved["optimizer"]))   # loaded tensors become the state
        state.batches.set_state(saved["batches"])

    def publish(self) -> None:
        """Nothing to do: the run's module is what is trained."""

    def drop(self, indices: Sequence[int]) -> None:
        drop = set(indices)
        self.states = [s for i, s in enumerate(self.states) if i not in drop]


class _LossWindow:
    """The losses of the steps since the last check, kept on the device: row j holds the M members'
    L(θ_{start+j}) in the network's dtype (the numbers ``loss.item()`` would give, exactly).
    ``saved`` is :meth:`save` of the stepper at step ``start`` (None when checking every step)."""

    def __init__(self, start: int, saved: Optional[Dict], size: int):
        self.start, self.saved, self.size, self.n = start, saved, size, 0
        self._losses: Optional[torch.Tensor] = None

    def push(self, loss: torch.Tensor) -> None:
        """Append this step's losses (a scalar or (M,)): one copy on the device, no host sync."""
        loss = loss.detach().reshape(-1)
        if self._losses is None:
            self._losses = torch.empty(self.size, loss.shape[0], dtype=loss.dtype, device=loss.device)
        self._losses[self.n].copy_(loss)
        self.n += 1

    def read(self) -> List[List[float]]:
        """The losses so far as Python floats, (n, M): the one read back to the host."""
        return [] if self._losses is None else self._losses[: self.n].tolist()


class _StepLoop:
    """Gradient steps until optim.steps for the members of a stepper (one run, or seeds at once),
    recording at the log steps and checkpointing every track.checkpoint_every steps. A member ends
    early with status diverged (its loss is not finite or above divergence_factor × its initial
    value; the others go on); all end with status stopped after stop_after steps in this invocation
    (after a checkpoint). Closes every metrics.jsonl whatever happens.

    The divergence check reads the losses back to the host every k = optim.divergence_check_every
    steps only (each read a GPU sync), and at every log step, checkpoint, stop and the end. In
    between they stay on the device (:class:`_LossWindow`) together with a copy of the state at the
    window's first step. When a read finds member i's loss of step s = start + j diverged (the first
    such j), the state is restored to the window's start and its j good steps redone (the same
    operations, so the same bits), which leaves every member at θ_s exactly as a check at every step
    would: member i gets the diverged line of step s, and the others continue from step s. The
    largest loss (``loss_peak``) is taken over the same steps as with a check every step. k = 1
    checks each loss before its update, as the loop always did, and keeps no copy.
    """

    def __init__(self, stepper):
        self.stepper = stepper
        self.members = list(stepper.states)            # every member, diverged or not
        first = self.members[0]
        self.cfg, self.clock = first.cfg, first.clock
        self.steps, self.log_steps, self.step = first.steps, first.log_steps, first.step
        # the config's values the loop reads every step, as plain numbers (an omegaconf lookup costs
        # ~20 µs, which adds up to a visible share of a GPU step)
        self.every = int(self.cfg.optim.get("divergence_check_every", 1))
        self.factor = float(self.cfg.optim.divergence_factor)
        self.stop_after = None if self.cfg.stop_after is None else int(self.cfg.stop_after)
        self.checkpoint_every = int(self.cfg.track.checkpoint_every)
        self.window: Optional[_LossWindow] = None
        # disable=None: a bar on a terminal; in a batch job's log the log steps are logged instead.
        self.progress = tqdm(total=self.steps, initial=self.step, desc="train", unit="step",
                             disable=None if self.cfg.track.progress else True, dynamic_ncols=True, mininterval=0.5)
        for state in self.members:
            state.progress = self.progress

    @property
    def states(self) -> List[_RunState]:
        return self.stepper.states

    def run(self) -> None:
        stop_after, checkpoint_every = self.stop_after, self.checkpoint_every
        try:
            for state in self.states:
                if state.step == 0 and state.metrics_bytes == 0:
                    state.record(0)
            started, first = self.step, True
            while self.states and self.step < self.steps:
                if stop_after is not None and self.step - started >= stop_after:
                    if self._settle(updated=True):
                        continue
                    self.stepper.publish()
                    for state in self.states:
                        state.checkpoint()
                        state.status = results.STOPPED
                    self.progress.close()
                    log.info("stopped after %d steps at step %d (stop_after); run again to resume", stop_after,
                             self.step)
                    return
                if self.window is None:
                    self.window = _LossWindow(self.step, self.stepper.save() if self.every > 1 else None, self.every)
                loss = self.stepper.loss()
                self.window.push(loss)
                if self.every == 1 and self._settle(updated=False):
                    continue
                try:
                    self.stepper.update(loss)
                except _Overflow as err:
                    if self._settle(updated=False):      # a loss of the window (this step's too) came first
                        continue
                    # η itself does not fit the network's dtype (optim.lr=1e308): the step is infinite
                    self._diverge(err.indices, [math.inf] * len(err.indices),
                                  lambda state, _: f"the learning rate {state.lr:.3g} overflows {state.cfg.dtype}")
                    continue
                if first:
                    first = False
                    before = self.clock.timing.steps
                    self.clock.lap("steps")
                    self.clock.timing.first_step = self.clock.timing.steps - before
                self._advance(self.step + 1)
                log_now = self.step in self.log_steps
                checkpoint_now = bool(checkpoint_every) and self.step % checkpoint_every == 0 and self.step < self.steps
                stop_next = stop_after is not None and self.step - started >= stop_after
                if self.every == 1:
                    self.window = None
                elif (self.window.n >= self.every or log_now or checkpoint_now or stop_next
                      or self.step == self.steps) and self._settle(updated=True):
                    continue
                if log_now or checkpoint_now:
                    self.stepper.publish()
                for state in self.states:
                    if log_now:
                        state.record(self.step)
                    if checkpoint_now:
                        state.checkpoint()
            self.stepper.publish()
            self.clock.lap("steps")
        finally:
            self.progress.close()
            for state in self.members:
                state.writer.close()

    def _advance(self, step: int) -> None:
        self.progress.update(step - self.step)
        self.step = step
        for state in self.states:
            state.step = step

    def _settle(self, updated: bool) -> bool:
        """Read the window's losses and check them in step order; True when a member diverged (it is
        then ended, and the others are at its step). ``updated``: whether the window's last step has
        been taken (False: the members are still at the step of its last loss)."""
        window, self.window = self.window, None
        if window is None:
            return False
        rows = window.read()
        factor = self.factor
        for j, row in enumerate(rows):
            bad = []
            for i, (state, value) in enumerate(zip(self.states, row)):
                if state.loss_peak is not None and value > state.loss_peak:
                    state.loss_peak = value
                if not math.isfinite(value) or value > factor * state.loss_0:
                    bad.append(i)
            if bad:
                break
        else:
            return False
        if updated or j < window.n - 1:         # back to θ at the window's start, then j good steps again
            self.stepper.restore(window.saved)
            for _ in range(j):
                self.stepper.update(self.stepper.loss())
        self._advance(window.start + j)
        self._diverge(bad, [row[i] for i in bad],
                      lambda state, loss: f"loss {loss:.3g} (initial {state.loss_0:.3g})")
        return True

    def _diverge(self, indices: Sequence[int], losses: Sequence[float], why) -> None:
        """End the members ``indices`` (of :attr:`states`) as diverged at the current step."""
        self.stepper.publish()
        for i, loss in zip(indices, losses):
            state = self.states[i]
            state.diverge(loss, why(state, loss))
        self.stepper.drop(indices)


def _summarize(state: _RunState) -> Dict:
    """The end of a run (ok or diverged): kernels.pt, predictions.pt, the figures and summary.json;
    the checkpoint and the saved reference kernels are removed. Returns the summary."""
    run_dir, track, data, reference = state.run_dir, state.cfg.track, state.data, state.reference
    records = results.read_metrics(run_dir / results.METRICS)
    # a divergence ends the file with a short {"step", "train_loss", "diverged"} line; the summary's
    # final record is the last complete measurement before it
    measured = [r for r in records if not r.get("diverged")]
    diverged_loss = state.last_record["train_loss"] if state.status == results.DIVERGED else None
    final = measured[-1] if measured else state.last_record
    if track.save_kernels:
        _save_kernels(run_dir, state.model, state.tracker, reference)
    _save_predictions(run_dir, state.model, state.tracker, reference, data, state.step)
    eta_max = state.eta_max
    summary = {
        "status": state.status, "steps": state.steps, "steps_done": state.step, "diverged_at_step": state.diverged_at,
        "diverged_loss": diverged_loss,
        "initial": records[0] if records else None, "final": final, "max": _maxima(measured),
        "fitted": _fitted(measured),
        "learning_rate": state.lr, "eta_max": eta_max,
        "lr_over_eta_max": state.lr / eta_max["analytic"] if "analytic" in eta_max else None,
        "peak_train_loss": state.loss_peak,
        "regime": classify(measured, status=state.status, momentum=float(state.cfg.optim.momentum),
                           loss_peak=state.loss_peak),
        "n_params": state.n_params, "n_train": data.n_train, "n_test": data.n_test, "in_dim": data.in_dim,
        "in_shape": list(data.x_train.shape[1:]), "out_dim": data.out_dim,
        "analytic_limit": ({"available": True} if state.no_limit is None
                           else {"available": False, "reason": state.no_limit, "left_out": list(LIMIT_QUANTITIES)}),
        "probe_size": reference.probe_size, "linear_kernel": reference.linear_kernel,
        **results.environment(state.device, state.cfg.dtype)}
    if track.plots:
        from ntklab.plots import plot_run
        try:
            summary["plots"] = [p.name for p in plot_run(run_dir, records)]
        except Exception as err:   # a figure must never cost the run its summary
            log.warning("plots failed: %s", err)
            summary["plots_error"] = f"{type(err).__name__}: {err}"
    state.clock.lap("other")
    spectrum = state.tracker.spectrum
    if spectrum is not None:
        summary["spectrum"] = {"points": spectrum.points, "kernel": spectrum.kernel, "entries": spectrum.entries}
    summary["timing"] = state.clock.timing.as_dict(state.step)
    summary["config"] = state.config
    results.write_json(run_dir / results.SUMMARY, summary)
    state.checkpoint_path.unlink(missing_ok=True)
    (run_dir / results.REFERENCE).unlink(missing_ok=True)
    train_loss = final.get("train_loss")
    log.info("%s after %d steps: train loss %.4g, %s", state.status, state.step,
             math.nan if train_loss is None else train_loss,
             # a quantity that left float range is null in the record (the kernel predictions past η_max)
             ", ".join(f"{k} {final[k]:.3g}" for k in ("kernel_change", "pred_gap_analytic") if final.get(k) is not None))
    return summary


def _batch_rows(data: Dataset, batch_size: Optional[int], generator: torch.Generator) -> Optional[torch.Tensor]:
    """The train rows of this step's mini-batch, or None for the full batch."""
    if batch_size is None or batch_size >= data.n_train:
        return None
    return torch.randperm(data.n_train, generator=generator)[:batch_size].to(data.x_train.device)


def _cpu(tensor):
    return None if tensor is None else tensor.detach().double().cpu()


def _save_kernels(run_dir: Path, model: Net, tracker: Tracker, reference: ReferenceKernels) -> None:
    results.save_torch(run_dir / results.KERNELS, {
        "probe_x": _cpu(tracker.probe), "ntk_empirical_init": _cpu(reference.probe_ntk_init),
        "ntk_empirical_final": _cpu(tracker.probe_ntk(model)), "ntk_analytic": _cpu(reference.analytic_probe),
        "nngp_analytic": _cpu(reference.analytic_nngp_probe),
        "ntk_test_row_empirical_init": _cpu(reference.test_row_init),
        "ntk_test_row_empirical_final": _cpu(test_row(model, tracker.data.x_test)),
        "ntk_test_row_analytic": _cpu(reference.test_row_analytic)})


def _save_predictions(run_dir: Path, model: Net, tracker: Tracker, reference: ReferenceKernels, data: Dataset,
                      step: int) -> None:
    outputs = tracker.test_outputs(model, step)
    results.save_torch(run_dir / results.PREDICTIONS, {
        "step": step, "x_test": _cpu(data.x_test), "y_test": _cpu(data.y_test), "f_init": _cpu(reference.f0_test),
        "f_final": _cpu(outputs["network"]), "f_pred_analytic": _cpu(outputs["analytic"]),
        "f_pred_linear": _cpu(outputs["linear"]),
        "extras": {k: _cpu(v) if torch.is_tensor(v) else v for k, v in data.extras.items()}})


def _maxima(records: List[Dict]) -> Dict[str, float]:
    """The largest value over the run of each tracked quantity (non-finite values skipped)."""
    out = {}
    for name in TRACKED:
        values = [r[name] for r in records if isinstance(r.get(name), (int, float))]
        if values:
            out[name] = max(values)
    return out


def _fitted(records: List[Dict]) -> Dict[str, Optional[float]]:
    """Per-run fits: the log-log slope of kernel_change and param_drift against the step over the
    log steps ≥ 1 (kernel_change ∝ step^slope), and the final train loss over its analytic prediction."""
    out: Dict[str, Optional[float]] = {}
    for name in ("kernel_change", "param_drift"):
        pairs = [(r["step"], r[name]) for r in records
                 if r.get("step", 0) >= 1 and isinstance(r.get(name), (int, float)) and 0 < r[name] < math.inf]
        out[f"{name}_step_exponent"] = (fit_power_law([p[0] for p in pairs], [p[1] for p in pairs]).exponent
                                        if len(pairs) >= 3 else None)
    last = records[-1] if records else {}
    predicted = last.get("pred_train_loss_analytic")
    out["train_loss_over_prediction"] = (last["train_loss"] / predicted
                                         if predicted and isinstance(last.get("train_loss"), (int, float)) else None)
    return out
