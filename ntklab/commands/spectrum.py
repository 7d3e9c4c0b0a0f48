"""The ``spectrum`` and ``phase`` commands: config → kernels' spectra / mean-field phases → files.

    spectrum.json   eigenvalues and fractional variance by degree for each kind, the depth sweep
                    and the depth maximising each degree's share
    spectrum.csv    the same as rows: kind, depth, degree, multiplicity, eigenvalue, fractional_variance
    phase.json      χ_1 and q* on the grid, the χ_1 = 1 line, the two example settings against depth
    phase.csv       the grid as rows: sigma_w2, sigma_b2, q_star, chi_1, phase
    depth.csv       setting, depth, normalised_ntk, normalised_nngp, condition_number
    *.png           the figures of :mod:`ntklab.analysis_plots` (plot_formats adds pdf, svg)

:func:`run_spectrum` and :func:`run_phase` take a composed config and a directory and return the
summary they write, so tests call them without a subprocess. Values that type-check but make no
sense raise :class:`ntklab.errors.ConfigError` before anything is computed.
"""

from __future__ import annotations

import csv
import logging
import math
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Sequence

import torch
from omegaconf import OmegaConf

import ntklab
from ntklab import results, spectra
from ntklab.activations import ACTIVATION_NAMES
from ntklab.config import build_spec
from ntklab.errors import ConfigError, check_choice
from ntklab.phases import (correlation_fixed_point, correlation_map, depth_profile, mean_field, phase_diagram,
                           spec_from_variances)

log = logging.getLogger(__name__)

SPECTRUM_KINDS = ("nngp", "ntk", "both")
PLOT_FORMATS = ("png", "pdf", "svg")
SPECTRUM_JSON, SPECTRUM_CSV = "spectrum.json", "spectrum.csv"
PHASE_JSON, PHASE_CSV, DEPTH_CSV = "phase.json", "phase.csv", "depth.csv"


# ----------------------------------------------------------------------------- spectrum

def validate_spectrum(cfg):
    """Check the spectrum config's values; returns the model's :class:`ntklab.ArchSpec`."""
    check_choice("kind", cfg.kind, SPECTRUM_KINDS)
    check_choice("domain", cfg.domain, spectra.DOMAINS)
    spec = build_spec(cfg.model, out_dim=1)
    minimum_d = 1 if cfg.domain == "boolean_cube" else 2
    if cfg.d < minimum_d:
        raise ConfigError("d", f"must be an integer >= {minimum_d} on the {cfg.domain}, got {cfg.d!r}")
    if cfg.domain == "boolean_cube" and not spectra.boolean_cube_supported(spec.act):
        raise ConfigError("model.activation", f"{cfg.model.activation!r} has no closed-form kernel, which the "
                          "boolean cube's exact spectra need; use domain=sphere for it",
                          allowed=("relu", "abs", "leaky_relu", "erf", "identity", "sin"))
    if cfg.max_degree < 0:
        raise ConfigError("max_degree", f"must be an integer >= 0, got {cfg.max_degree!r}")
    if cfg.max_depth < 0:
        raise ConfigError("max_depth", f"must be an integer >= 0, got {cfg.max_depth!r}")
    if cfg.max_depth > 0:
        try:
            replace(spec, depth=cfg.max_depth)
        except ValueError as err:            # "meanfield" has one hidden layer only
            raise ConfigError("max_depth", f"{err}; max_depth=0 turns the depth sweep off") from None
    _check_formats(cfg.plot_formats)
    top = cfg.d if cfg.domain == "boolean_cube" else cfg.max_degree
    for k in cfg.plot_degrees:
        if not 0 <= k <= top:
            raise ConfigError("plot_degrees", f"degree {k!r} is outside 0..{top} (the degrees computed)")
    return spec


def run_spectrum(cfg, run_dir: Path) -> Dict:
    """Eigenvalues by degree of ``cfg.model``'s kernels, and the depth sweep; writes the files."""
    run_dir = Path(run_dir)
    spec = validate_spectrum(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    kinds = list(spectra.KINDS) if cfg.kind == "both" else [cfg.kind]
    cube = cfg.domain == "boolean_cube"
    max_degree = None if cube else cfg.max_degree
    degrees = list(range((cfg.d if cube else cfg.max_degree) + 1))
    multiplicity = [_as_float(math.comb(cfg.d, k) if cube else spectra.sphere_multiplicity(cfg.d, k))
                    for k in degrees]
    sweep_depths = list(range(1, cfg.max_depth + 1))
    timing = {}
    start = time.perf_counter()
    main = spectra.depth_sweeps(spec, cfg.d, [spec.depth], kinds, domain=cfg.domain, max_degree=max_degree)
    timing["spectrum"] = time.perf_counter() - start
    if sweep_depths:
        start = time.perf_counter()
        sweeps = spectra.depth_sweeps(spec, cfg.d, sweep_depths, kinds, domain=cfg.domain, max_degree=max_degree)
        timing["sweep"] = time.perf_counter() - start
    by_kind = {}
    for kind in kinds:
        entry = {"eigenvalue": main[kind].eigenvalues[0].tolist(),
                 "fractional_variance": main[kind].fractional_variance[0].tolist()}
        if sweep_depths:
            sweep = sweeps[kind]
            entry["sweep"] = {"depths": list(sweep.depths), "eigenvalue": sweep.eigenvalues.tolist(),
                              "fractional_variance": sweep.fractional_variance.tolist(),
                              "best_depth": list(sweep.best_depth)}
        by_kind[kind] = entry
        log.info("%s: mu_0..3 = %s; %s", kind, ", ".join(f"{m:.4g}" for m in entry["eigenvalue"][:4]),
                 f"best depth of degrees 0..5 = {entry['sweep']['best_depth'][:6]}" if sweep_depths else "no sweep")
    summary = {
        "domain": cfg.domain, "d": cfg.d, "depth": spec.depth, "degree": degrees, "multiplicity": multiplicity,
        "kinds": by_kind, "timing_s": timing, **_environment(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    results.write_json(run_dir / SPECTRUM_JSON, summary)
    _write_csv(run_dir / SPECTRUM_CSV, ["kind", "depth", "degree", "multiplicity", "eigenvalue", "fractional_variance"],
               _spectrum_rows(summary))
    if cfg.plots:
        from ntklab.analysis_plots import plot_spectrum

        summary["plots"] = [p.name for p in plot_spectrum(run_dir, summary, cfg.plot_degrees, cfg.plot_formats)]
    return summary


def _spectrum_rows(summary: Dict) -> List[Sequence]:
    rows = []
    for kind, entry in summary["kinds"].items():
        tables = [(summary["depth"], entry["eigenvalue"], entry["fractional_variance"])]
        sweep = entry.get("sweep")
        if sweep:
            tables += [(depth, mu, fv) for depth, mu, fv in zip(sweep["depths"], sweep["eigenvalue"],
                                                                 sweep["fractional_variance"])
                       if depth != summary["depth"]]
        for depth, mu, fv in sorted(tables, key=lambda table: table[0]):
            rows += [(kind, depth, k, m, e, f) for k, m, e, f in zip(summary["degree"], summary["multiplicity"], mu, fv)]
    return rows


# ----------------------------------------------------------------------------- phase

def validate_phase(cfg) -> None:
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
    _check_formats(cfg.plot_formats)


def _check_formats(formats) -> None:
    if not formats:
        raise ConfigError("plot_formats", "must name at least one format", allowed=PLOT_FORMATS)
    for name in formats:
        check_choice("plot_formats", name, PLOT_FORMATS)


def run_phase(cfg, run_dir: Path) -> Dict:
    """χ_1 phase diagram and the frozen/chaotic examples against depth; writes the files."""
    run_dir = Path(run_dir)
    validate_phase(cfg)
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
        "examples": examples, "timing_s": timing, **_environment(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    results.write_json(run_dir / PHASE_JSON, summary)
    _write_csv(run_dir / PHASE_CSV, ["sigma_w2", "sigma_b2", "q_star", "chi_1", "phase"],
               [(w, b, q, chi, _phase_name(chi))
                for b, q_row, chi_row in zip(b_axis.tolist(), diagram.q_star.tolist(), diagram.chi_1.tolist())
                for w, q, chi in zip(w_axis.tolist(), q_row, chi_row)])
    _write_csv(run_dir / DEPTH_CSV, ["setting", "depth", "normalised_ntk", "normalised_nngp", "condition_number"],
               [(name, *row) for name, example in examples.items()
                for row in zip(example["depths"], example["normalised_ntk"], example["normalised_nngp"],
                               example["condition_number"])])
    if cfg.plots:
        from ntklab.analysis_plots import plot_phase

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


# ----------------------------------------------------------------------------- files

def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[repr(v) if isinstance(v, float) else v for v in row] for row in rows])


def _as_float(n: int) -> float:
    """A multiplicity as a float; inf beyond float64 (C(d, d/2) from d ≈ 1030; JSON writes null)."""
    try:
        return float(n)
    except OverflowError:
        return math.inf


def _environment() -> Dict:
    return {"device_name": results.device_name("cpu"),
            "versions": {"ntklab": ntklab.__version__, "torch": torch.__version__,
                         "python": platform.python_version()}}
