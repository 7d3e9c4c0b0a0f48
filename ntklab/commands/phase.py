"""The ``phase`` command: config → mean-field phases (freeze and chaos) → files.

    phase.json      χ_1 and q* on the grid, the χ_1 = 1 line, the two example settings against depth
    phase.csv       the grid as rows: sigma_w2, sigma_b2, q_star, chi_1, phase
    depth.csv       setting, depth, normalised_ntk, normalised_nngp, condition_number
    *.png           phase_diagram, normalised_ntk, condition_number, correlation_map
                    (:func:`ntklab.plots.plot_phase`; plot_formats adds pdf, svg)
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Dict

import torch
from omegaconf import OmegaConf

from ntklab import results
from ntklab.activations import ACTIVATION_NAMES
from ntklab.config import check_plot_formats
from ntklab.errors import ConfigError, check_choice
from ntklab.phases import (correlation_fixed_point, correlation_map, depth_profile, mean_field, phase_diagram,
                           spec_from_variances)

log = logging.getLogger(__name__)

PHASE_JSON, PHASE_CSV, DEPTH_CSV = "phase.json", "phase.csv", "depth.csv"


def validate(cfg) -> None:
    """Check the phase config's values (raises :class:`ConfigError`)."""
    check_choice("activation", cfg.activation, ACTIVATION_NAMES)
    for name, lowest, strict in (("sigma_w2_range", 0.0, True), ("sigma_b2_range", 0.0, False)):
        pair = list(getattr(cfg, name))
        if len(pair) != 2 or not all(math.isfinite(v) for v in pair) or not pair[0] < pair[1]:
            raise ConfigError(name, f"must be two finite numbers [min, max] with min < max, got {pair!r}")
        if pair[0] < lowest or (strict and pair[0] == lowest):
            raise ConfigError(name, f"must start {'above' if strict else 'at or above'} {lowest:g}, got {pair!r}")
    if cfg.resolution < 2:
        raise ConfigError("resolution", f"must be an integer >= 2, got {cfg.resolution!r}")
    if cfg.max_depth < 1:
        raise ConfigError("max_depth", f"must be an integer >= 1, got {cfg.max_depth!r}")
    for name in ("frozen", "chaotic"):
        point = getattr(cfg, name)
        if not (math.isfinite(point.sigma_w2) and point.sigma_w2 > 0):
            raise ConfigError(f"{name}.sigma_w2", f"must be a finite number > 0, got {point.sigma_w2!r}")
        if not (math.isfinite(point.sigma_b2) and point.sigma_b2 >= 0):
            raise ConfigError(f"{name}.sigma_b2", f"must be a finite number >= 0, got {point.sigma_b2!r}")
    if not -1.0 < cfg.correlation < 1.0:
        raise ConfigError("correlation", f"must lie in (-1, 1), got {cfg.correlation!r}")
    if cfg.n_inputs < 2:
        raise ConfigError("n_inputs", f"must be an integer >= 2, got {cfg.n_inputs!r}")
    if cfg.dim < 2:
        raise ConfigError("dim", f"must be an integer >= 2, got {cfg.dim!r}")
    check_plot_formats(cfg.plot_formats)


def run(cfg, run_dir: Path) -> Dict:
    """χ_1 phase diagram and the frozen/chaotic examples against depth; writes the files."""
    run_dir = Path(run_dir)
    validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    timing = {}
    start = time.perf_counter()
    w_axis = torch.linspace(*cfg.sigma_w2_range, cfg.resolution, dtype=torch.float64)
    b_axis = torch.linspace(*cfg.sigma_b2_range, cfg.resolution, dtype=torch.float64)
    diagram = phase_diagram(cfg.activation, w_axis, b_axis)
    timing["phase_diagram"] = time.perf_counter() - start
    start = time.perf_counter()
    examples = {name: _example(cfg, getattr(cfg, name)) for name in ("frozen", "chaotic")}
    timing["depth_profiles"] = time.perf_counter() - start
    for name, example in examples.items():
        log.info("%s (sigma_w2=%g, sigma_b2=%g): chi_1 = %.4g (%s), normalised NTK at depth %d = %.3g",
                 name, example["sigma_w2"], example["sigma_b2"], example["chi_1"], example["phase"],
                 cfg.max_depth, example["normalised_ntk"][-1])
    summary = {
        "activation": cfg.activation,
        "grid": {"sigma_w2": w_axis.tolist(), "sigma_b2": b_axis.tolist(), "chi_1": diagram.chi_1.tolist(),
                 "q_star": diagram.q_star.tolist()},
        "critical_line": {"sigma_b2": b_axis.tolist(), "sigma_w2": diagram.critical_sigma_w2.tolist()},
        "examples": examples, "timing_s": timing, **results.environment(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    results.write_json(run_dir / PHASE_JSON, summary)
    results.write_csv(run_dir / PHASE_CSV, ["sigma_w2", "sigma_b2", "q_star", "chi_1", "phase"],
                      [(w, b, q, chi, _phase_name(chi))
                       for b, q_row, chi_row in zip(b_axis.tolist(), diagram.q_star.tolist(), diagram.chi_1.tolist())
                       for w, q, chi in zip(w_axis.tolist(), q_row, chi_row)])
    results.write_csv(run_dir / DEPTH_CSV, ["setting", "depth", "normalised_ntk", "normalised_nngp", "condition_number"],
                      [(name, *row) for name, example in examples.items()
                       for row in zip(example["depths"], example["normalised_ntk"], example["normalised_nngp"],
                                      example["condition_number"])])
    if cfg.plots:
        from ntklab.plots import plot_phase

        summary["plots"] = [p.name for p in plot_phase(run_dir, summary, cfg.plot_formats)]
    return summary


def _example(cfg, point) -> Dict:
    """Mean-field numbers and kernels against depth for one (σ_w², σ_b²)."""
    field = mean_field(cfg.activation, point.sigma_w2, point.sigma_b2)
    q_star, chi_1 = field.q_star.item(), field.chi_1.item()
    example = {"sigma_w2": point.sigma_w2, "sigma_b2": point.sigma_b2, "q_star": q_star, "chi_1": chi_1,
               "phase": _phase_name(chi_1)}
    if math.isfinite(q_star) and q_star > 0:
        c_star, chi_c = correlation_fixed_point(cfg.activation, point.sigma_w2, point.sigma_b2)
        c_in = torch.linspace(-1.0, 1.0, 101, dtype=torch.float64)
        c_out, _ = correlation_map(cfg.activation, point.sigma_w2, point.sigma_b2, c_in, q_star=q_star)
        example.update(c_star=c_star, chi_c_star=chi_c, correlation_in=c_in.tolist(), correlation_out=c_out.tolist())
    profile = depth_profile(spec_from_variances(cfg.activation, point.sigma_w2, point.sigma_b2, depth=1),
                            cfg.max_depth, correlation=cfg.correlation, n_inputs=cfg.n_inputs, dim=cfg.dim,
                            seed=cfg.seed)
    example.update(depths=list(profile.depths), normalised_ntk=profile.normalised_ntk.tolist(),
                   normalised_nngp=profile.normalised_nngp.tolist(),
                   condition_number=profile.condition_number.tolist())
    return example


def _phase_name(chi_1: float) -> str:
    return "ordered" if chi_1 < 1.0 else ("chaotic" if chi_1 > 1.0 else "critical")
