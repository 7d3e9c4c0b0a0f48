"""The ``chaos`` command: freeze and chaos measured on finite nets beside the limit, with depth,
bias variance and normalisation (Jacot, Gabriel & Hongler 2019, "Freeze and chaos for DNNs").

For every architecture (``mlp``: dense layers; ``cnn``: 3×3 convolutions with a global-average-pool
readout), normalisation (``none`` | ``layer_norm`` | ``batch_norm``, in every block, before the activation
with ``norm_position=pre``, after it with ``post``), bias variance σ_b² (σ_w² fixed; :mod:`ntklab.phases`
gives each its phase, :func:`layer_norm_chi_1` the layer-normed net's) and depth L, :func:`chaos_layers` builds

    serial([dense(n) | conv(n, 3)], [norm], φ) × L, [global_avg_pool], dense(1)      (pre)

and on the probe inputs X of :func:`probe_inputs` (N = 1 + C + R rows: an anchor x_0, C partners with
x_0·x_c/D = c, R random points, all with x·x/D = 1) it measures

    normalised NTK   ρ_c = Θ(x_0, x_c)/√(Θ(x_0, x_0) Θ(x_c, x_c))   of the finite nets (several seeds)
                     and of the limit (:func:`ntklab.analytic_kernels`; :func:`ntklab.phases.kernels_by_depth`
                     for plain MLPs) where :func:`ntklab.kernels.limit_problem` finds none: batch_norm has
                     no limit (its NTK is that of one batch, the probe set), nor layer_norm after relu
    condition number λ_max/λ_min of Θ on all N inputs (finite and limit; inf once λ_min is rounding)
    steps to loss    full-batch gradient descent on L = 1/(2N) Σ (f(x_i) − y_i)², y ~ N(0, 1) (seeded),
                     η = lr_fraction · η_max, η_max = 2N/λ_max(Θ̂) of the net's own NTK at init
                     (:func:`ntklab.dynamics.max_learning_rate`, the trainer's eta_max_empirical): the first
                     step t with L_t ≤ loss_fraction · L_0, or "not reached" within max_steps; beside it
                     the kernel regime's prediction from the same Θ̂ and f_0 (:func:`ntklab.dynamics.mse_predictor`,
                     discrete: L_t = 1/(2N) Σ_j (1 − ηλ_j/N)^{2t} (v_jᵀ(f_0 − y))²), for every net.

Files (the run directory):

    chaos.json           settings (χ_1, q*, c*, phase of the plain net; χ_1 with layer_norm), per-curve
                         means/spreads over seeds, the limits (or why none), timing, environment
    normalised_ntk.csv   arch, norm, sigma_b2, phase, depth, source (finite | limit), seed, correlation, value
    nets.csv             arch, norm, sigma_b2, phase, depth, source, seed, condition_number, lambda_max,
                         learning_rate, loss_0, steps_to_loss, steps_predicted, final_loss_ratio, note
                         (steps: a number, "not reached", or empty where nothing was trained)

``phase`` in the tables is that of the plain net at (σ_w², σ_b²). Cost: nets of depth L and width n cost
O(L n²) to build and measure; a batch_norm net's NTK needs its whole-batch Jacobian, 2·N·P numbers at once,
and is skipped (noted in nets.csv) above ``memory_budget_gb``.
    chaos_*.png          :func:`ntklab.plots.plot_chaos` (plot_formats adds pdf, svg)
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from omegaconf import OmegaConf
from torch import Tensor

from ntklab import layers as nl, results
from ntklab.activations import ACTIVATION_NAMES
from ntklab.config import check_plot_formats
from ntklab.dynamics import max_learning_rate, mse_loss, mse_predictor
from ntklab.errors import ConfigError, check_choice, check_seed
from ntklab.kernels import analytic_kernels, limit_problem
from ntklab.layers.net import Net, build_net
from ntklab.ntk import empirical_ntk
from ntklab.phases import (condition_number, correlation_fixed_point, critical_sigma_b2, kernels_by_depth,
                           layer_norm_chi_1, mean_field, normalised_kernel, spec_from_variances)

log = logging.getLogger(__name__)

ARCHS = ("mlp", "cnn")
NORMS = ("none", "layer_norm", "batch_norm")
POSITIONS = ("pre", "post")       # the norm before or after the activation
DTYPES = {"float32": torch.float32, "float64": torch.float64}
CHAOS_JSON, NORMALISED_CSV, NETS_CSV = "chaos.json", "normalised_ntk.csv", "nets.csv"


# ----------------------------------------------------------------------------- config

def validate(cfg) -> None:
    """Check the chaos config's values (raises :class:`ConfigError` naming the field)."""
    check_choice("activation", cfg.activation, ACTIVATION_NAMES)
    if not (math.isfinite(cfg.sigma_w2) and cfg.sigma_w2 > 0):
        raise ConfigError("sigma_w2", f"must be a finite number > 0, got {cfg.sigma_w2!r}")
    if not cfg.sigma_b2 or not all(math.isfinite(v) and v >= 0 for v in cfg.sigma_b2):
        raise ConfigError("sigma_b2", f"must list one or more finite numbers >= 0, got {list(cfg.sigma_b2)!r}")
    check_choice("norm_position", cfg.norm_position, POSITIONS)
    for name, allowed in (("archs", ARCHS), ("norms", NORMS), ("train.archs", ARCHS)):
        values = list(OmegaConf.select(cfg, name))
        if not values and name != "train.archs":
            raise ConfigError(name, "must name at least one", allowed=allowed)
        for value in values:
            check_choice(name, value, allowed)
        if len(set(values)) != len(values):
            raise ConfigError(name, f"lists a value twice: {values!r}")
    depths = list(cfg.depths)
    if not depths or any(d < 1 for d in depths) or depths != sorted(set(depths)):
        raise ConfigError("depths", f"must be increasing integers >= 1, got {depths!r}")
    for name in ("width", "cnn_channels", "seeds"):
        if getattr(cfg, name) < 1:
            raise ConfigError(name, f"must be an integer >= 1, got {getattr(cfg, name)!r}")
    if cfg.image_size < 2:
        raise ConfigError("image_size", f"must be an integer >= 2, got {cfg.image_size!r}")
    if cfg.kernel_size < 1 or cfg.kernel_size % 2 == 0:
        raise ConfigError("kernel_size", f"must be an odd integer >= 1, got {cfg.kernel_size!r}")
    correlations = list(cfg.correlations)
    if not correlations or not all(-1.0 < c < 1.0 for c in correlations):
        raise ConfigError("correlations", f"must list one or more numbers in (-1, 1), got {correlations!r}")
    if cfg.dim < 2 or cfg.dim < 1 + len(correlations) + cfg.n_random:
        raise ConfigError("dim", f"must be at least 1 + len(correlations) + n_random = "
                                 f"{1 + len(correlations) + cfg.n_random} (inputs linearly independent), "
                                 f"got {cfg.dim!r}")
    if cfg.n_random < 0:
        raise ConfigError("n_random", f"must be an integer >= 0, got {cfg.n_random!r}")
    if cfg.plot_correlation not in correlations:
        raise ConfigError("plot_correlation", f"must be one of correlations {correlations!r}, "
                                              f"got {cfg.plot_correlation!r}")
    check_seed("seed", cfg.seed)
    check_seed("data_seed", cfg.data_seed)
    check_choice("dtype", cfg.dtype, tuple(DTYPES))
    if not cfg.memory_budget_gb > 0:
        raise ConfigError("memory_budget_gb", f"must be > 0, got {cfg.memory_budget_gb!r}")
    train = cfg.train
    if not 1 <= train.seeds <= cfg.seeds:
        raise ConfigError("train.seeds", f"must be an integer in [1, seeds={cfg.seeds}], got {train.seeds!r}")
    if train.max_steps < 1:
        raise ConfigError("train.max_steps", f"must be an integer >= 1, got {train.max_steps!r}")
    if not 0.0 < train.loss_fraction < 1.0:
        raise ConfigError("train.loss_fraction", f"must lie in (0, 1), got {train.loss_fraction!r}")
    if not 0.0 < train.lr_fraction < 1.0:
        raise ConfigError("train.lr_fraction", f"must lie in (0, 1) (a fraction of η_max = 2N/λ_max), "
                                               f"got {train.lr_fraction!r}")
    check_plot_formats(cfg.plot_formats)


# ----------------------------------------------------------------------------- nets and inputs

def chaos_layers(arch: str, depth: int, width: int, activation: str, sigma_w2: float, sigma_b2: float,
                 norm: str = "none", position: str = "pre", *, kernel_size: int = 3) -> nl.Serial:
    """L = ``depth`` blocks, then (cnn) a global average pool and the readout dense(1):

        position "pre":   [dense(width) | conv(width, k×k, same)], [layer_norm | batch_norm], φ
        position "post":  [dense(width) | conv(width, k×k, same)], φ, [layer_norm | batch_norm]

    σ_w = √sigma_w2, σ_b = √sigma_b2 on every dense/conv layer, NTK parametrization. With norm "none" an
    mlp is :func:`ntklab.nets.mlp_layers` of the ArchSpec and a cnn :func:`ntklab.nets.cnn_layers` (gap
    readout); those have no slot for a norm, hence this builder."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
    affine = dict(sigma_w=math.sqrt(sigma_w2), sigma_b=math.sqrt(sigma_b2))
    layers = []
    for _ in range(depth):
        layers.append(nl.dense(width, **affine) if arch == "mlp" else nl.conv(width, kernel_size, **affine))
        block = [nl.activation(activation)]
        if norm != "none":
            block.insert(0 if position == "pre" else 1, nl.layer_norm() if norm == "layer_norm" else nl.batch_norm())
        layers += block
    if arch == "cnn":
        layers.append(nl.global_avg_pool())
    layers.append(nl.dense(1, **affine))
    return nl.serial(*layers)


def probe_inputs(shape: Sequence[int], correlations: Sequence[float], n_random: int, seed: int = 0) -> Tensor:
    """(1 + C + R, *shape) float64 inputs with x·x/D = 1 (D = ∏ shape; the sphere of :mod:`ntklab.phases`):

        row 0       the anchor x_0 = √D a, a a uniform unit vector
        row i ≤ C   x_i = √D (c_i a + √(1 − c_i²) u_i), u_i ⊥ a a fresh uniform unit vector:
                    x_0·x_i/D = c_i exactly
        the rest    R uniform points

    Random directions rather than :func:`ntklab.phases.sphere_pair_and_points`' coordinate axes (which
    give one pair), so that images (shape (C, H, W)) are not single-pixel spikes; the kernels of an MLP
    depend only on the inner products, which both constructions fix.
    """
    generator = torch.Generator().manual_seed(seed)
    dim = math.prod(shape)
    anchor = torch.randn(dim, generator=generator, dtype=torch.float64)
    anchor /= anchor.norm()
    rows = [anchor]
    for c in correlations:
        u = torch.randn(dim, generator=generator, dtype=torch.float64)
        u -= (u @ anchor) * anchor
        rows.append(c * anchor + math.sqrt(1.0 - c * c) * u / u.norm())
    for _ in range(n_random):
        u = torch.randn(dim, generator=generator, dtype=torch.float64)
        rows.append(u / u.norm())
    return (torch.stack(rows) * math.sqrt(dim)).reshape(len(rows), *shape)


def normalised_pairs(kernel: Tensor, n_pairs: int) -> List[float]:
    """Θ(x_0, x_i)/√(Θ(x_0, x_0) Θ(x_i, x_i)) for i = 1..n_pairs, from an (N, N) kernel."""
    return normalised_kernel(kernel)[0, 1:n_pairs + 1].tolist()


def regression_targets(n: int, seed: int) -> Tensor:
    """y ~ N(0, 1)^n (float64, shape (n, 1)), seeded: a task that needs every eigendirection of Θ."""
    return torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def steps_to_loss(net: Net, x: Tensor, y: Tensor, learning_rate: float, loss_fraction: float,
                  max_steps: int) -> Tuple[Optional[int], float]:
    """Full-batch gradient descent θ ← θ − η ∇L, L = 1/(2N) Σ (f(x_i) − y_i)²
    (:func:`ntklab.dynamics.mse_loss`) on the whole batch x (so batch-norm nets see the batch they are normalised over).

    Returns (the first t with L_t ≤ loss_fraction · L_0, or None if none within max_steps; L_last/L_0).
    Changes the net's parameters."""
    params = [p for p in net.parameters() if p.requires_grad]
    y = y.to(dtype=params[0].dtype)
    x = x.to(dtype=params[0].dtype)
    loss_0 = None
    for step in range(max_steps + 1):
        loss = mse_loss(net(x), y)
        value = loss.item()
        if loss_0 is None:
            loss_0 = value
        if not math.isfinite(value):
            return None, math.inf
        if value <= loss_fraction * loss_0:
            return step, value / loss_0
        if step == max_steps:
            break
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(learning_rate * g)
    return None, value / loss_0


def predicted_steps(ntk: Tensor, f0: Tensor, y: Tensor, learning_rate: float, loss_fraction: float,
                    max_steps: int) -> Optional[int]:
    """The kernel regime's steps to loss: the first t ≤ max_steps at which the linearised net's loss
    L_t = 1/(2N) Σ_j (1 − ηλ_j/N)^{2t} (v_jᵀ(f_0 − y))² (:func:`ntklab.dynamics.mse_predictor`, discrete) is
    ≤ loss_fraction · L_0; None if none. ntk (N, N), f0 and y (N, 1)."""
    with warnings.catch_warnings():      # a frozen kernel's condition number is a result here (nets.csv), not a fault
        warnings.filterwarnings("ignore", message="the train kernel is ill-conditioned")
        predictor = mse_predictor(ntk.to(torch.float64), y, learning_rate, discrete=True)
    losses, _ = predictor.losses(torch.arange(max_steps + 1, dtype=torch.float64), fx_train_0=f0.to(torch.float64))
    reached = (losses <= loss_fraction * losses[0]).nonzero()
    return int(reached[0].item()) if reached.numel() else None


# ----------------------------------------------------------------------------- the run

def run(cfg, run_dir: Path) -> Dict:
    """Every (arch, norm, σ_b², depth, seed) net and the limits; writes the files (module docstring)."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    timing = {"limit": 0.0, "finite_ntk": 0.0, "training": 0.0}
    dtype = DTYPES[cfg.dtype]
    correlations = [float(c) for c in cfg.correlations]
    settings = [_setting(cfg.activation, cfg.sigma_w2, b2, cfg.norm_position) for b2 in cfg.sigma_b2]
    critical = critical_sigma_b2(cfg.activation, cfg.sigma_w2)
    inputs = {arch: probe_inputs(_input_shape(cfg, arch), correlations, cfg.n_random, cfg.data_seed)
              for arch in cfg.archs}
    n = 1 + len(correlations) + cfg.n_random
    y = regression_targets(n, cfg.data_seed)

    curves, ntk_rows, net_rows = [], [], []
    grid = [(arch, norm, setting) for arch in cfg.archs for norm in cfg.norms for setting in settings]
    bar = tqdm(total=len(grid) * len(cfg.depths) * cfg.seeds, desc="chaos nets", unit="net",
               disable=not cfg.progress)
    for arch, norm, setting in grid:
        key = dict(arch=arch, norm=norm, sigma_b2=setting["sigma_b2"], phase=setting["phase"])
        start = time.perf_counter()
        no_limit = limit_problem(chaos_layers(arch, 1, 1, cfg.activation, cfg.sigma_w2, setting["sigma_b2"], norm,
                                              cfg.norm_position, kernel_size=cfg.kernel_size), _input_shape(cfg, arch))
        limit = None if no_limit else limit_curves(cfg, arch, norm, setting["sigma_b2"], inputs[arch],
                                                   len(correlations))
        timing["limit"] += time.perf_counter() - start
        if limit is not None:
            for i, depth in enumerate(limit["depths"]):
                ntk_rows += [(*key.values(), depth, "limit", "", c, limit["normalised_ntk"][j][i])
                             for j, c in enumerate(correlations)]
                net_rows.append((*key.values(), depth, "limit", "", limit["condition_number"][i],
                                 *[""] * 6, ""))
        finite = []
        for depth in cfg.depths:
            per_seed = []
            for seed in range(cfg.seed, cfg.seed + cfg.seeds):
                trained = arch in cfg.train.archs and seed < cfg.seed + cfg.train.seeds
                record = finite_net(cfg, arch, norm, setting["sigma_b2"], depth, seed, inputs[arch], y, dtype,
                                    len(correlations), trained, timing)
                per_seed.append(record)
                bar.update(1)
                if record.get("skipped"):
                    net_rows.append((*key.values(), depth, "finite", seed, *[""] * 7, record["skipped"]))
                    continue
                ntk_rows += [(*key.values(), depth, "finite", seed, c, v)
                             for c, v in zip(correlations, record["normalised_ntk"])]
                net_rows.append((*key.values(), depth, "finite", seed, record["condition_number"],
                                 record["lambda_max"], record["learning_rate"], record["loss_0"],
                                 _steps(record.get("steps_to_loss"), trained), _steps(record["steps_predicted"]),
                                 record.get("final_loss_ratio", ""),
                                 "" if trained else "not trained (train.archs, train.seeds)"))
            finite.append(_aggregate(per_seed, correlations, cfg.train.max_steps))
        curves.append({**key, "limit": limit, "no_limit": no_limit,
                       "depths": list(cfg.depths), "finite": finite})
    bar.close()

    summary = {
        "activation": cfg.activation, "sigma_w2": cfg.sigma_w2, "critical_sigma_b2": critical,
        "norm_position": cfg.norm_position,
        "settings": settings, "correlations": correlations, "n_inputs": n,
        "widths": {"mlp": cfg.width, "cnn": cfg.cnn_channels}, "curves": curves,
        "max_steps": cfg.train.max_steps, "timing_s": timing, **results.environment(dtype=cfg.dtype),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    results.write_json(run_dir / CHAOS_JSON, summary)
    results.write_csv(run_dir / NORMALISED_CSV, ["arch", "norm", "sigma_b2", "phase", "depth", "source", "seed",
                                                 "correlation", "normalised_ntk"], ntk_rows)
    results.write_csv(run_dir / NETS_CSV, ["arch", "norm", "sigma_b2", "phase", "depth", "source", "seed",
                                           "condition_number", "lambda_max", "learning_rate", "loss_0",
                                           "steps_to_loss", "steps_predicted", "final_loss_ratio", "note"], net_rows)
    for curve in curves:
        last = curve["finite"][-1]
        log.info("%s %s sigma_b2=%g (%s): depth %d normalised NTK (c=%g) finite %s, limit %s",
                 curve["arch"], curve["norm"], curve["sigma_b2"], curve["phase"], curve["depths"][-1],
                 cfg.plot_correlation, _fmt(last["normalised_ntk"].get(str(cfg.plot_correlation), {}).get("mean")),
                 _fmt(None if curve["limit"] is None else
                      curve["limit"]["normalised_ntk"][correlations.index(cfg.plot_correlation)][-1]))
    if cfg.plots:
        from ntklab.plots import plot_chaos

        summary["plots"] = [p.name for p in plot_chaos(run_dir, summary, cfg.plot_correlation, cfg.plot_formats)]
    return summary


def _setting(activation: str, sigma_w2: float, sigma_b2: float, position: str) -> Dict:
    """The mean-field numbers of the plain net at (σ_w², σ_b²) (:mod:`ntklab.phases`), and χ_1 with layer_norm."""
    field = mean_field(activation, sigma_w2, sigma_b2)
    q_star, chi_1 = field.q_star.item(), field.chi_1.item()
    setting = {"sigma_w2": float(sigma_w2), "sigma_b2": float(sigma_b2), "q_star": q_star, "chi_1": chi_1,
               "phase": _phase_name(chi_1), "chi_1_layer_norm": layer_norm_chi_1(activation, sigma_w2, sigma_b2,
                                                                                 position)}
    if setting["chi_1_layer_norm"] is not None:
        setting["phase_layer_norm"] = _phase_name(setting["chi_1_layer_norm"])
    if math.isfinite(q_star) and q_star > 0:
        c_star, chi_c = correlation_fixed_point(activation, sigma_w2, sigma_b2)
        setting.update(c_star=c_star, chi_c_star=chi_c)
        if chi_1 > 1.0:
            # chaotic: the normalised NTK decays like (max(1, χ_{c*})/χ_1)^L at large depth (ntklab.phases)
            setting["ntk_decay_per_layer"] = max(1.0, chi_c) / chi_1
    return setting


def _phase_name(chi_1: float) -> str:
    return "ordered" if chi_1 < 1.0 else ("chaotic" if chi_1 > 1.0 else "critical")


def _input_shape(cfg, arch: str) -> Tuple[int, ...]:
    return (cfg.dim,) if arch == "mlp" else (1, cfg.image_size, cfg.image_size)


def limit_curves(cfg, arch: str, norm: str, sigma_b2: float, x: Tensor, n_pairs: int) -> Dict:
    """The analytic NTK on x at each depth: {"depths": [L...], "normalised_ntk": n_pairs lists over the depths
    (pair i = (x_0, x_i)), "condition_number": one per depth}.

    Plain MLPs at every depth 1..max(depths) in one pass (:func:`ntklab.phases.kernels_by_depth`); MLPs
    with layer_norm at every depth too (one :func:`ntklab.analytic_kernels` per depth: O(L²) layers, cheap
    for vectors); CNNs at the listed depths only (each a full CNTK pass). The caller checks that the
    limit exists (:func:`ntklab.kernels.limit_problem`: not for batch_norm, nor layer_norm after relu)."""
    if arch == "mlp" and norm == "none":
        depths = list(range(1, max(cfg.depths) + 1))
        spec = spec_from_variances(cfg.activation, cfg.sigma_w2, sigma_b2, depth=1, width=cfg.width)
        kernels = [k.ntk for k in kernels_by_depth(spec, x, depths[-1])]
    else:
        depths = list(range(1, max(cfg.depths) + 1)) if arch == "mlp" else list(cfg.depths)
        kernels = [analytic_kernels(chaos_layers(arch, d, cfg.width, cfg.activation, cfg.sigma_w2, sigma_b2, norm,
                                                 cfg.norm_position, kernel_size=cfg.kernel_size), x).ntk
                   for d in depths]
    pairs = [normalised_pairs(k, n_pairs) for k in kernels]
    return {"depths": depths, "normalised_ntk": [list(column) for column in zip(*pairs)],
            "condition_number": [condition_number(k) for k in kernels]}


def finite_net(cfg, arch: str, norm: str, sigma_b2: float, depth: int, seed: int, x: Tensor, y: Tensor,
               dtype: torch.dtype, n_pairs: int, trained: bool, timing: Dict) -> Dict:
    """One seeded net of ``cfg``'s kind: its empirical NTK Θ̂ on the probe batch x (N, *shape) and, if
    ``trained``, its steps to loss on the targets y (N, 1); ``timing`` accumulates seconds.

    Returns {"skipped": why} (a batch_norm net over the memory budget) or normalised_ntk (n_pairs floats),
    condition_number, lambda_max, learning_rate (η = lr_fraction · 2N/λ_max), loss_0, steps_predicted
    (None: not within max_steps) and, if trained, steps_to_loss (None: not reached) and final_loss_ratio."""
    width = cfg.width if arch == "mlp" else cfg.cnn_channels
    start = time.perf_counter()
    net = build_net(chaos_layers(arch, depth, width, cfg.activation, cfg.sigma_w2, sigma_b2, norm, cfg.norm_position,
                                 kernel_size=cfg.kernel_size), x.shape[1:], seed=seed, dtype=dtype)
    budget = int(cfg.memory_budget_gb * 2 ** 30)
    if net.couples_batch:
        # the whole-batch Jacobian and jacrev's work space at once (ntklab.ntk.empirical): N·k·P numbers, twice
        needed = 2 * x.shape[0] * sum(p.numel() for p in net.parameters()) * torch.finfo(dtype).bits // 8
        if needed > budget:
            return {"skipped": f"whole-batch Jacobian needs {needed / 2 ** 30:.3g} GiB > memory_budget_gb="
                               f"{cfg.memory_budget_gb:g}"}
    x = x.to(dtype)
    ntk = empirical_ntk(net, x, memory_budget=budget).to(torch.float64)
    with torch.no_grad():
        f0 = net(x).to(torch.float64)
    lr = max_learning_rate(ntk, 1, cfg.train.lr_fraction)
    record = {"normalised_ntk": normalised_pairs(ntk, n_pairs), "condition_number": condition_number(ntk),
              "lambda_max": torch.linalg.eigvalsh(ntk)[-1].item(), "learning_rate": lr,
              "loss_0": mse_loss(f0, y).item(),
              "steps_predicted": predicted_steps(ntk, f0, y, lr, cfg.train.loss_fraction, cfg.train.max_steps)}
    timing["finite_ntk"] += time.perf_counter() - start
    if trained:
        start = time.perf_counter()
        record["steps_to_loss"], record["final_loss_ratio"] = steps_to_loss(
            net, x, y, lr, cfg.train.loss_fraction, cfg.train.max_steps)
        timing["training"] += time.perf_counter() - start
    return record


def _aggregate(per_seed: List[Dict], correlations: Sequence[float], max_steps: int) -> Dict:
    """Mean and spread over seeds at one depth: normalised NTK per correlation (mean, std, min, max),
    condition number (median, min, max), steps to loss and its prediction (median with "not reached"
    counted as +inf, so null once half the runs did not reach it; the count not reached; every value)."""
    done = [r for r in per_seed if not r.get("skipped")]
    out: Dict = {"seeds": len(done), "skipped": next((r["skipped"] for r in per_seed if r.get("skipped")), None)}
    if not done:
        out.update(normalised_ntk={}, condition_number=None, steps_to_loss=None, steps_predicted=None)
        return out
    values = torch.tensor([r["normalised_ntk"] for r in done], dtype=torch.float64)     # (S, C)
    std = values.std(0, unbiased=True) if len(done) > 1 else torch.zeros(values.shape[1], dtype=torch.float64)
    out["normalised_ntk"] = {str(c): {"mean": values[:, j].mean().item(), "std": std[j].item(),
                                      "min": values[:, j].min().item(), "max": values[:, j].max().item()}
                             for j, c in enumerate(correlations)}
    conditions = torch.tensor([r["condition_number"] for r in done], dtype=torch.float64)
    out["condition_number"] = {"median": conditions.median().item(), "min": conditions.min().item(),
                               "max": conditions.max().item()}
    for name in ("steps_to_loss", "steps_predicted"):
        runs = [r[name] for r in done if name in r]
        # not reached counts as +inf: the median is null (JSON) once half the runs did not reach the loss
        as_numbers = torch.tensor([math.inf if s is None else float(s) for s in runs], dtype=torch.float64)
        out[name] = None if not runs else {"runs": len(runs), "not_reached": sum(s is None for s in runs),
                                           "cap": max_steps, "median": _median(as_numbers), "values": runs}
    return out


def _median(values: Tensor) -> float:
    """The middle value (the mean of the two middle ones for an even count); inf counts as a value."""
    ordered = values.sort().values
    middle = ordered.numel() // 2
    return ordered[middle].item() if ordered.numel() % 2 else ((ordered[middle - 1] + ordered[middle]) / 2).item()


def _steps(value, ran: bool = True):
    """A steps entry of nets.csv: the step, "not reached", or "" where nothing ran."""
    return "" if not ran else ("not reached" if value is None else value)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"
