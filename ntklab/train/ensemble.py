"""Many seeds of one config in one process: ``python -m ntklab train seeds=M``.

The M nets of seeds s = seed, seed+1, …, seed+M−1 (each initialised exactly as ``build_net(...,
seed=s)``) are trained together, and each writes the run directory ``RUN_DIR/seed_<s>/`` that a
separate run with ``seed=<s>`` would (config.yaml with seed=<s> and seeds=1, metrics.jsonl,
summary.json, kernels.pt, predictions.pt, checkpoint.pt, figures), with the same numbers to float
rounding: the batched matrix products of the step group their sums differently from one net's.
``RUN_DIR`` itself holds ``seeds.json`` (the group's index, :data:`ntklab.results.SEEDS`), the lock,
and Hydra's ``.hydra/``; ``python -m ntklab collect`` makes one row per seed.

The gradient step is batched over the seeds (:class:`StackedStepper`): their parameters stacked
along a leading axis by ``torch.func.stack_module_state`` (each tensor (M, *shape)), the outputs
f_m(x) = vmap(functional_call)(θ, x) of shape (M, N, k), the losses L_m = 1/(2Nk) Σ_i ‖f_m(x_i) −
y_i‖² of shape (M,), one backward pass of Σ_m s·L_m (s = 1/α² with the lazy scale, else 1), which
gives each seed its own gradient g_m = s ∇L_m since L_m depends on θ_m alone, then SGD's update
per seed: b_m ← μ b_m + g_m (b_m = g_m at the first step), θ_m ← θ_m − η_m b_m (η_m the seed's own
learning rate, which differs between seeds only with lr_unit=eta_max_empirical). Everything else a
run does happens per seed, with that seed's own objects (:class:`ntklab.train.trainer._RunState`):
its reference kernels (the analytic ones, functions of the data and architecture alone, computed
once for the group), the measurements at the log steps, checkpoints, resume and summary. Each
seed's module holds the stacked parameters' slice whenever it is measured or saved
(:meth:`StackedStepper.publish`).

A seed whose loss diverges ends as its separate run would (the diverged line at that step, the
summary and files of θ at that step); the others go on, re-stacked without it. A stop (stop_after)
checkpoints every seed; running the same command again resumes them together.
"""

from __future__ import annotations

import contextlib
import json
import logging
from itertools import groupby
from pathlib import Path
from typing import Dict, List, Sequence

import torch
from omegaconf import OmegaConf
from torch.func import functional_call, stack_module_state, vmap

from ntklab import resources, results
from ntklab.config import TrainConfig, validate
from ntklab.dynamics import mse_loss
from ntklab.errors import ConfigError
from ntklab.train import trainer
from ntklab.train.trainer import _Clock, _Overflow, _RunState, _StepLoop, _Timing

log = logging.getLogger(__name__)


def seed_dir(run_dir: Path, seed: int) -> Path:
    """The run directory of seed ``seed`` in the group's folder ``run_dir``."""
    return Path(run_dir) / f"seed_{seed}"


def member_config(cfg, seed: int):
    """The config of the separate run the group's seed ``seed`` equals: ``cfg`` with seed=<seed>, seeds=1."""
    member = cfg.copy()
    member.seed, member.seeds = int(seed), 1
    return member


class StackedStepper:
    """The gradient step of M runs at once, each with its own θ_m; see the module docstring.

    Implements the stepper interface of :class:`ntklab.train.trainer._StepLoop` (``states``,
    ``loss``, ``update``, ``save``, ``restore``, ``publish``, ``drop``, as
    :class:`ntklab.train.trainer._ModuleStepper` does for one run). All members are at the same step,
    on the same device and dtype, with the same config but the seed.
    """

    def __init__(self, states: Sequence[_RunState]):
        self.states: List[_RunState] = list(states)
        self._stack()

    def _stack(self) -> None:
        """Stack the members' parameters (and momentum buffers) from their own modules and optimizers."""
        if not self.states:
            return
        first = self.states[0]
        self.base = first.model            # functional_call runs its forward with the stacked tensors
        self.params, self.buffers = stack_module_state([state.model for state in self.states])
        self.member_params = [dict(state.model.named_parameters()) for state in self.states]
        self.momentum = float(first.cfg.optim.momentum)
        self.batch_size = first.cfg.optim.batch_size
        self.lrs = [state.lr for state in self.states]
        self.scale, self.alpha = first.outputs.loss_scale, first.outputs.alpha
        self.compile = first.cfg.get("compile")
        batch = min(self.batch_size or first.data.n_train, first.data.n_train)
        self.chunk = resources.chunk_rows(first.model.root, batch, first.device,
                                          next(iter(self.params.values())).dtype.itemsize,
                                          first.cfg.optim.get("chunk_size"), members=len(self.states))
        self.chunked = self.chunk < batch       # every step's batch has the same rows
        self._losses: Dict = {}
        dtype_max = torch.finfo(next(iter(self.params.values())).dtype).max
        # what torch.optim.SGD refuses as an overflow: a step size the dtype cannot hold
        self.overflow = [i for i, lr in enumerate(self.lrs) if lr > dtype_max]
        self.momentum_buffers: Dict[str, torch.Tensor] = {}
        if self.momentum:
            for name in self.params:
                buffers = [state.optimizer.state.get(params[name], {}).get("momentum_buffer")
                           for state, params in zip(self.states, self.member_params)]
                if all(b is not None for b in buffers):     # resumed (or published): else made at the first step
                    self.momentum_buffers[name] = torch.stack([b.detach() for b in buffers])

    def loss(self) -> torch.Tensor:
        """(M,): each member's L_B(θ_m) on its own batch (each draws its mini-batch, as its run would).
        In chunks of rows (``self.chunk``, :func:`ntklab.resources.chunk_rows` for all M nets at
        once), the gradients are accumulated here and the losses come back detached."""
        data = self.states[0].data          # the members' data sets are equal
        rows = [trainer._batch_rows(state.data, self.batch_size, state.batches) for state in self.states]
        full = rows[0] is None
        x = data.x_train if full else torch.stack([data.x_train[r] for r in rows])
        y = data.y_train if full else torch.stack([data.y_train[r] for r in rows])
        f0 = None
        if self.alpha is not None:      # f_α = α(f − f_0) with each member's own f_0
            f0 = torch.stack([state.outputs.initial("train") if full else state.outputs.initial("train")[r]
                              for state, r in zip(self.states, rows)])
        batched = None if full else 0

        key = (batched, f0 is None)
        if key not in self._losses:         # one function per batching pattern, compiled once if asked
            self._losses[key] = trainer.compiled(
                vmap(self._member_loss, in_dims=(0, 0, batched, batched, None if f0 is None else 0)), self.compile)
        member_losses = self._losses[key]
        if not self.chunked:
            return member_losses(self.params, self.buffers, x, y, f0)
        for p in self.params.values():
            p.grad = None

        def chunk_losses(rows):
            x_part, y_part = (x[rows], y[rows]) if full else (x[:, rows], y[:, rows])
            return member_losses(self.params, self.buffers, x_part, y_part, None if f0 is None else f0[:, rows])
        return trainer.backward_in_chunks(y.shape[-2], self.chunk, self.scale, chunk_losses)

    def _member_loss(self, params, buffers, x, y, f0):
        """One member's L(θ) on (x, y); f0: its initial outputs there when training α(f − f_0)."""
        f = functional_call(self.base, (params, buffers), (x,))
        if f0 is not None:
            f = self.alpha * (f - f0)
        return mse_loss(f, y)

    def update(self, losses: torch.Tensor) -> None:
        """One SGD step of every member from the graph of ``losses`` (M,), or from the gradients
        :meth:`loss` accumulated when it ran in chunks; see the module docstring.
        Raises :class:`_Overflow` naming the members whose η the dtype cannot hold, changing nothing."""
        if self.overflow:
            raise _Overflow(self.overflow)
        if not self.chunked:
            for p in self.params.values():
                p.grad = None
            (losses * self.scale).sum().backward()
        same_lr = all(lr == self.lrs[0] for lr in self.lrs)
        with torch.no_grad():
            for name, p in self.params.items():
                step = p.grad
                if self.momentum:       # torch.optim.SGD's: b = g at the first step, then b ← μb + g
                    buffer = self.momentum_buffers.get(name)
                    if buffer is None:
                        buffer = self.momentum_buffers[name] = torch.clone(step).detach()
                    else:
                        buffer.mul_(self.momentum).add_(step)
                    step = buffer
                if same_lr:
                    p.add_(step, alpha=-self.lrs[0])
                else:
                    for m, lr in enumerate(self.lrs):
                        p[m].add_(step[m], alpha=-lr)

    def save(self) -> Dict:
        """A copy of what a step changes: the stacked θ and momentum buffers, the batch generators."""
        return {"params": {n: p.detach().clone() for n, p in self.params.items()},
                "momentum": {n: b.clone() for n, b in self.momentum_buffers.items()},
                "batches": [state.batches.get_state() for state in self.states]}

    def restore(self, saved: Dict) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(saved["params"][name])
        self.momentum_buffers = {n: b.clone() for n, b in saved["momentum"].items()}
        for state, batches in zip(self.states, saved["batches"]):
            state.batches.set_state(batches)

    def publish(self) -> None:
        """Copy each member's slice of θ (and of the momentum buffers, into its optimizer's state, as
        torch.optim.SGD keeps them) into the member's own module and optimizer."""
        with torch.no_grad():
            for m, (state, params) in enumerate(zip(self.states, self.member_params)):
                for name, stacked in self.params.items():
                    params[name].copy_(stacked[m])
                    if name in self.momentum_buffers:
                        state.optimizer.state[params[name]]["momentum_buffer"] = self.momentum_buffers[name][m].clone()

    def drop(self, indices: Sequence[int]) -> None:
        """Stop training the members ``indices`` (published first); the others are stacked again."""
        self.publish()
        drop = set(indices)
        self.states = [state for m, state in enumerate(self.states) if m not in drop]
        self._stack()


def run_seeds(cfg, run_dir: Path) -> Dict:
    """Train the ``cfg.seeds`` seeds of ``cfg`` at once into ``run_dir/seed_<s>/`` (called by
    :func:`ntklab.train.run` under ``run_dir``'s lock); see the module docstring.

    Finished seeds (ok or diverged) are left as they are; the others resume from their checkpoints.
    Returns {"status", "runs": {"seed_<s>": status}}: status "stopped" when this invocation ended at
    stop_after, else "diverged" when a seed diverged, else "ok". A ConfigError (a bad value, a
    folder holding a single run or seeds of another config) leaves a failed summary.json in
    ``run_dir`` (unless it holds runs: :func:`ntklab.train.trainer._record_refusal`) and is raised; any other error leaves one in each
    unfinished seed's directory, and is raised.
    """
    run_dir = Path(run_dir)
    try:
        validate(cfg)
        if (run_dir / results.CONFIG).exists():
            raise ConfigError("seeds", f"{run_dir} holds a single run (its {results.CONFIG}); run it with seeds=1, "
                              "or choose a new run directory")
        seeds = list(range(int(cfg.seed), int(cfg.seed) + int(cfg.seeds)))
        device, dtype, data, arch, spec, no_limit = trainer._prepare(cfg, members=len(seeds))
    except ConfigError as err:
        trainer._record_refusal(run_dir, cfg, err)
        raise
    with contextlib.ExitStack() as locks:
        try:
            members, summaries = _members(cfg, run_dir, seeds, locks)
        except ConfigError as err:      # a seed's folder holds a run of another config
            trainer._record_refusal(run_dir, cfg, err)
            raise
        _write_index(run_dir, seeds)
        if summaries:
            log.info("%s: %s already finished", run_dir, ", ".join(sorted(summaries)))
        states: List[_RunState] = []
        try:
            clock = _Clock(device)          # one clock for the group: its steps are the group's
            reference = None
            for member, config, directory in members:
                state = trainer._set_up(member, config, directory, device, dtype, data, arch, spec, no_limit, clock,
                                        analytic_from=reference)
                reference = reference or state.reference
                states.append(state)
            _resume_all(states, clock)
            # members resumed at different steps (checkpoints written apart) train in groups of one step
            for _, group in groupby(sorted(states, key=lambda s: s.step), key=lambda s: s.step):
                _StepLoop(StackedStepper(list(group))).run()
            for state in states:
                if state.status != results.STOPPED:
                    summaries[state.run_dir.name] = trainer._summarize(state)
        except Exception as err:
            for member, config, directory in members:
                if trainer._read_summary(directory) is None:
                    trainer._record_failure(directory, err, device, member, config)
            raise
    stopped = any(state.status == results.STOPPED for state in states)
    runs = {**{name: s["status"] for name, s in summaries.items()},
            **{state.run_dir.name: results.STOPPED for state in states if state.status == results.STOPPED}}
    status = results.STOPPED if stopped else results.DIVERGED if results.DIVERGED in runs.values() else results.OK
    return {"status": status, "runs": dict(sorted(runs.items(), key=lambda item: int(item[0].split("_")[1])))}


def _members(cfg, run_dir: Path, seeds: Sequence[int], locks: contextlib.ExitStack):
    """Lock and prepare each seed's run directory (its config.yaml, as a separate run's): returns the
    unfinished seeds' (config, resolved config, directory) and the finished seeds' summaries by
    directory name. Raises ConfigError when a seed's directory holds a run of another config."""
    members, summaries = [], {}
    for seed in seeds:
        directory = seed_dir(run_dir, seed)
        directory.mkdir(parents=True, exist_ok=True)
        locks.enter_context(results.locked(directory))
        for leftover in results.remove_leftovers(directory):
            log.warning("removed %s, left by an interrupted write", leftover)
        member = member_config(cfg, seed)
        config = OmegaConf.to_container(member, resolve=True)
        results.check_same_config(directory, config, trainer._NOT_COMPARED, schema=TrainConfig)
        finished = trainer._read_summary(directory)
        if finished is not None and finished.get("status") in results.FINISHED:
            summaries[directory.name] = finished
            continue
        if finished is not None:        # a failed attempt's summary: retried now
            (directory / results.SUMMARY).unlink()
        members.append((member, config, directory))
    return members, summaries


def _resume_all(states: Sequence[_RunState], clock: _Clock) -> None:
    """Resume every member from its checkpoint (:func:`ntklab.train.trainer._resume`); the group's
    clock continues from the timing they saved (the same in each: they are checkpointed together)."""
    saved = None
    for state in states:
        state.clock = _Clock(clock.device)
        trainer._resume(state)
        saved = saved or state.clock.timing
        state.clock = clock
    if saved is not None:
        clock.timing = _Timing(setup=saved.setup + clock.timing.setup, steps=saved.steps, tracking=saved.tracking,
                               other=saved.other)


def _write_index(run_dir: Path, seeds: Sequence[int]) -> None:
    """seeds.json: the group's seed directories (with those of earlier invocations with more seeds)."""
    path = run_dir / results.SEEDS
    known = set()
    if path.exists():
        try:
            known = set(json.loads(path.read_text()).get("seeds", []))
        except (ValueError, AttributeError):
            log.warning("%s cannot be read; writing it again", path)
    every = sorted(known | set(seeds))
    results.write_json(path, {"seeds": every, "run_dirs": [seed_dir(run_dir, s).name for s in every]})
