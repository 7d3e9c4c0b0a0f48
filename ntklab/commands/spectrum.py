"""The ``spectrum`` command: config → the kernels' eigenvalues by degree and their depth sweep → files.

    spectrum.json   eigenvalues and fractional variance by degree for each kind, the depth sweep
                    and the depth maximising each degree's share
    spectrum.csv    the same as rows: kind, depth, degree, multiplicity, eigenvalue, fractional_variance
    *.png           eigenvalues, fractional_variance_depth (:func:`ntklab.plots.plot_spectrum`;
                    plot_formats adds pdf, svg)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Sequence

from omegaconf import OmegaConf

from ntklab import results, spectra
from ntklab.config import build_spec, check_plot_formats
from ntklab.errors import ConfigError, check_choice

log = logging.getLogger(__name__)

SPECTRUM_KINDS = ("nngp", "ntk", "both")
SPECTRUM_JSON, SPECTRUM_CSV = "spectrum.json", "spectrum.csv"


def validate(cfg):
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
    check_plot_formats(cfg.plot_formats)
    top = cfg.d if cfg.domain == "boolean_cube" else cfg.max_degree
    for k in cfg.plot_degrees:
        if not 0 <= k <= top:
            raise ConfigError("plot_degrees", f"degree {k!r} is outside 0..{top} (the degrees computed)")
    return spec


def run(cfg, run_dir: Path) -> Dict:
    """Eigenvalues by degree of ``cfg.model``'s kernels, and the depth sweep; writes the files."""
    run_dir = Path(run_dir)
    spec = validate(cfg)
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
        "kinds": by_kind, "timing_s": timing, **results.environment(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    results.write_json(run_dir / SPECTRUM_JSON, summary)
    results.write_csv(run_dir / SPECTRUM_CSV,
                      ["kind", "depth", "degree", "multiplicity", "eigenvalue", "fractional_variance"],
                      _rows(summary))
    if cfg.plots:
        from ntklab.plots import plot_spectrum

        summary["plots"] = [p.name for p in plot_spectrum(run_dir, summary, cfg.plot_degrees, cfg.plot_formats)]
    return summary


def _rows(summary: Dict) -> List[Sequence]:
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


def _as_float(n: int) -> float:
    """A multiplicity as a float; inf beyond float64 (C(d, d/2) from d ≈ 1030; JSON writes null)."""
    try:
        return float(n)
    except OverflowError:
        return math.inf
