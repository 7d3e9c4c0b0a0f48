"""Freeze and chaos against closed forms (relu's χ_1, erf's edge-of-chaos curve), against the
depth recursion of the analytic kernels, and against the rates the mean-field theory predicts."""

import csv
import json
import math

import pytest
import torch

from ntklab import ArchSpec, analytic_kernels
from ntklab.activations import from_callable, get_activation
from ntklab.phases import (chi_1, correlation_fixed_point, correlation_map, critical_line, depth_profile,
                           gaussian_moments, kernels_by_depth, mean_field, normalised_kernel, phase_diagram,
                           spec_from_variances, sphere_pair_and_points)
from tests.helpers import compose_config, start_ntklab, stop_all


def test_relu_chi_1_is_exactly_one_at_the_edge():
    # E[relu'(z)²] = 1/2 whatever q, so χ_1 = σ_w²/2: exactly 1 at σ_w² = 2
    assert chi_1("relu", 2.0, 0.0).item() == 1.0
    field = mean_field("relu", torch.tensor([1.0, 1.5, 2.0, 3.0]), 0.5)
    assert field.chi_1.tolist() == [0.5, 0.75, 1.0, 1.5]
    # q* = σ_w² q*/2 + σ_b² solves to σ_b²/(1 − σ_w²/2) below σ_w² = 2; above (and at, with a bias) it diverges
    torch.testing.assert_close(field.q_star[:2], torch.tensor([0.5 / 0.5, 0.5 / 0.25], dtype=torch.float64),
                               rtol=1e-14, atol=0)
    assert field.q_star[2:].tolist() == [math.inf, math.inf]
    assert mean_field("relu", 2.0, 0.0).q_star.item() == 2.0      # every q is fixed: it stays at q^1


def test_fixed_point_is_the_limit_of_the_depth_recursion():
    # Σ^L(x, x) of a deep net is the length map iterated L times from q^1 = σ_w² + σ_b² (x·x/n_0 = 1)
    sigma_w2, sigma_b2 = 1.7, 0.3
    x = torch.ones(1, 4, dtype=torch.float64)
    deep = analytic_kernels(spec_from_variances("erf", sigma_w2, sigma_b2, depth=300), x, diagonal=True)
    # the map contracts by ~0.7 per layer here: 300 layers leave rounding error only
    assert mean_field("erf", sigma_w2, sigma_b2).q_star.item() == pytest.approx(deep.nngp.item(), rel=1e-13)


def test_quadrature_moments_match_the_closed_forms():
    # the 1-D rule for activations without a dual, tried on relu (kink at 0) and erf wrapped as callables
    q = torch.tensor([0.05, 0.7, 3.0, 12.0], dtype=torch.float64)
    for name in ("relu", "erf"):
        act = get_activation(name)
        wrapped = from_callable(act.fn, derivative=act.derivative)
        for ours, exact in zip(gaussian_moments(wrapped, q), gaussian_moments(act, q)):
            torch.testing.assert_close(ours, exact, rtol=1e-12, atol=0)


def test_chi_1_is_the_slope_of_the_correlation_map_at_one():
    sigma_w2, sigma_b2 = 2.2, 0.4
    field = mean_field("erf", sigma_w2, sigma_b2)
    h = 1e-4
    c = torch.tensor([1.0 - 2 * h, 1.0 - h, 1.0], dtype=torch.float64)
    values, chi_c = correlation_map("erf", sigma_w2, sigma_b2, c)
    assert values[-1].item() == pytest.approx(1.0, abs=1e-14)            # c = 1 is a fixed point
    slope = (3 * values[2] - 4 * values[1] + values[0]).item() / (2 * h)  # second-order one-sided difference
    assert slope == pytest.approx(field.chi_1.item(), rel=1e-6)        # O(h²) ≈ 1e-8 truncation
    assert chi_c[-1].item() == pytest.approx(field.chi_1.item(), rel=1e-14)


def erf_edge_of_chaos(sigma_w2):
    """The χ_1 = 1 line of erf in closed form: E[erf'(u)²] = (4/π)/√(1 + 4q) gives q* on it, and the
    length map E[erf(u)²] = (2/π) arcsin(2q/(1 + 2q)) the σ_b² that makes q* a fixed point."""
    q = ((4 * sigma_w2 / math.pi) ** 2 - 1) / 4
    return q - sigma_w2 * (2 / math.pi) * torch.asin(2 * q / (1 + 2 * q))


def test_erf_edge_of_chaos_matches_its_closed_form():
    sigma_w2 = torch.linspace(0.9, 3.0, 8, dtype=torch.float64)
    sigma_b2 = erf_edge_of_chaos(sigma_w2)
    assert bool((sigma_b2 > 0).all())
    torch.testing.assert_close(chi_1("erf", sigma_w2, sigma_b2), torch.ones(8, dtype=torch.float64),
                               rtol=1e-13, atol=0)
    # the line found by bisection on a grid, without the closed form
    found = critical_line("erf", sigma_b2, torch.linspace(0.25, 4.0, 31, dtype=torch.float64))
    torch.testing.assert_close(found, sigma_w2, rtol=1e-10, atol=0)       # bisection to ~1e-14, q* to rounding
    # it starts at σ_w² = π/4 for σ_b = 0 (erf'(0)² = 4/π), where q* → 0
    start = critical_line("erf", [0.0], torch.linspace(0.25, 4.0, 31, dtype=torch.float64)).item()
    assert start == pytest.approx(math.pi / 4, rel=1e-8)


def test_phase_diagram_orders_left_of_the_line_and_is_chaotic_right_of_it():
    diagram = phase_diagram("erf", torch.linspace(0.3, 4.0, 9), torch.linspace(0.0, 2.0, 5))
    assert diagram.chi_1.shape == (5, 9)
    for row, edge in zip(diagram.chi_1, diagram.critical_sigma_w2):
        assert bool((row[diagram.sigma_w2 < edge] < 1).all()) and bool((row[diagram.sigma_w2 > edge] > 1).all())
    assert bool(torch.isfinite(diagram.critical_sigma_w2).all())


@pytest.mark.parametrize("activation, parametrization", [("relu", "standard"), ("erf", "mup"), ("tanh", "ntk")])
def test_kernels_by_depth_equal_analytic_kernels_at_each_depth(activation, parametrization):
    # one pass through the hidden layers, each depth's readout applied: the same recursion, so
    # agreement to float64 rounding (tanh through the same quadrature_dual as analytic_kernels)
    x = sphere_pair_and_points(0.3, 6, 5)
    spec = ArchSpec(depth=1, width=30, activation=activation, sigma_w=1.3, sigma_b=0.3, parametrization=parametrization)
    for depth, kernels in enumerate(kernels_by_depth(spec, x, 5), start=1):
        reference = analytic_kernels(ArchSpec(depth=depth, width=30, activation=activation, sigma_w=1.3, sigma_b=0.3,
                                              parametrization=parametrization), x)
        torch.testing.assert_close(kernels.nngp, reference.nngp, rtol=1e-13, atol=0)
        torch.testing.assert_close(kernels.ntk, reference.ntk, rtol=1e-13, atol=0)


def test_normalised_ntk_freezes_in_the_ordered_phase():
    sigma_w2, sigma_b2 = 1.0, 1.0
    assert chi_1("erf", sigma_w2, sigma_b2).item() < 1
    profile = depth_profile(spec_from_variances("erf", sigma_w2, sigma_b2, depth=1), 100, correlation=0.5)
    assert profile.normalised_ntk[-1].item() == pytest.approx(1.0, abs=1e-12)
    assert bool((profile.normalised_ntk[1:] >= profile.normalised_ntk[:-1]).all())
    assert profile.normalised_nngp[-1].item() == pytest.approx(1.0, abs=1e-12)
    # the kernel matrix tends to a constant: numerically rank one by depth 100
    assert profile.condition_number[10].item() > 1e3 and profile.condition_number[-1].item() == math.inf


def test_normalised_ntk_decays_at_the_predicted_rate_in_the_chaotic_phase():
    sigma_w2, sigma_b2 = 3.5, 0.05
    field = mean_field("erf", sigma_w2, sigma_b2)
    c_star, chi_c = correlation_fixed_point("erf", sigma_w2, sigma_b2)
    assert field.chi_1.item() > 1 and c_star < 1
    profile = depth_profile(spec_from_variances("erf", sigma_w2, sigma_b2, depth=1), 100, correlation=0.5)
    # Θ(x,x) grows like χ_1^L; Θ(x,x') like χ_{c*}^L, or tends to a constant when χ_{c*} < 1 (here:
    # χ_{c*} ≈ 0.84), which it approaches like χ_{c*}^L: the ratio's error at L = 80 is ~0.84^80 ≈ 1e-6
    assert chi_c < 1
    rate = 1.0 / field.chi_1.item()
    ratios = profile.normalised_ntk[80:] / profile.normalised_ntk[79:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, rate), rtol=1e-5, atol=0)
    # the NNGP's correlation goes to c*, also at rate ~χ_{c*}: 0.84^100 ≈ 4e-8 left at depth 100
    assert profile.normalised_nngp[-1].item() == pytest.approx(c_star, abs=1e-6)
    assert profile.condition_number[-1].item() < 1.01                               # diagonal-dominated


def test_normalised_kernel_recovers_the_correlations_of_a_rescaled_kernel():
    # K = D C D with C a correlation matrix (unit diagonal) and D > 0 diagonal: K_ij/√(K_ii K_jj) = C_ij exactly
    # in exact arithmetic, so to a few ulps in float64
    features = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    features = features / features.norm(dim=1, keepdim=True)
    correlations = features @ features.T
    scales = torch.tensor([0.1, 1.0, 3.0, 7.5, 1e3, 2.0], dtype=torch.float64)
    normalised = normalised_kernel(scales[:, None] * correlations * scales[None, :])
    torch.testing.assert_close(normalised, correlations, rtol=0, atol=1e-14)
    # a float32 kernel is normalised in float64
    assert normalised_kernel(correlations.float()).dtype == torch.float64
    # an input whose output is exactly 0 has no direction: nan in its row and column, not a made-up 0
    zero_row = correlations.clone()
    zero_row[2, :] = zero_row[:, 2] = 0.0
    normalised = normalised_kernel(zero_row)
    assert normalised[2].isnan().all() and normalised[:, 2].isnan().all()
    assert not normalised[[0, 1, 3, 4, 5]][:, [0, 1, 3, 4, 5]].isnan().any()
    with pytest.raises(ValueError, match=r"square \(N, N\) kernel, got shape \(6, 4\)"):
        normalised_kernel(features)


def test_spec_from_variances_and_invalid_values():
    spec = spec_from_variances("erf", 2.25, 0.04, depth=3)
    assert spec == ArchSpec(depth=3, activation="erf", sigma_w=1.5, sigma_b=0.2)
    with pytest.raises(ValueError, match="sigma_w2"):
        mean_field("erf", 0.0, 0.1)
    with pytest.raises(ValueError, match="correlation"):
        depth_profile(spec, 5, correlation=1.5)


# ----------------------------------------------------------------------------- the command

@pytest.fixture(scope="module", autouse=True)
def command_runs(tmp_path_factory):
    """The command's runs, started before this module's first test: their ~3 s of interpreter and
    torch start-up overlap the in-process tests instead of adding to them."""
    tmp = tmp_path_factory.mktemp("phase_command")
    runs = {"tmp": tmp,
            "ok": start_ntklab("phase", "activation=relu", "resolution=7", "sigma_w2_range=[0.5,3.5]", "max_depth=12",
                         f"hydra.run.dir={tmp / 'run'}", cwd=tmp),
            "bad": start_ntklab("phase", "resolution=1", f"hydra.run.dir={tmp / 'bad'}", cwd=tmp)}
    yield runs
    stop_all([runs["ok"], runs["bad"]])


def test_phase_command_writes_its_files(command_runs):
    run_dir = command_runs["tmp"] / "run"
    ok, bad = command_runs["ok"], command_runs["bad"]
    out, err = ok.communicate(timeout=300)
    assert ok.returncode == 0, err
    with open(run_dir / "phase.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 * 7
    for row in rows:   # relu: χ_1 = σ_w² E[relu'(z)²] = σ_w²/2 at any q, so the ordered side is σ_w² < 2
        assert float(row["chi_1"]) == float(row["sigma_w2"]) / 2
        w = float(row["sigma_w2"])
        assert row["phase"] == ("ordered" if w < 2 else "critical" if w == 2 else "chaotic")
    summary = json.loads((run_dir / "phase.json").read_text())
    assert summary["critical_line"]["sigma_w2"] == pytest.approx([2.0] * 7, rel=1e-12)
    frozen = summary["examples"]["frozen"]
    assert frozen["chi_1"] == 0.5 and frozen["depths"] == list(range(1, 13)) and frozen["phase"] == "ordered"
    with open(run_dir / "depth.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 * 12
    for name in ("phase_diagram.png", "normalised_ntk.png", "condition_number.png", "correlation_map.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out, err = bad.communicate(timeout=300)
    assert bad.returncode == 2 and "resolution" in err and ">= 2" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_phase_config_values_are_checked():
    from ntklab.commands.phase import validate
    from ntklab.errors import ConfigError

    cases = {"activation=tanh": None, "activation=foo": "activation", "sigma_w2_range=[0,1]": "sigma_w2_range",
             "sigma_w2_range=[2,1]": "sigma_w2_range", "sigma_b2_range=[-1,1]": "sigma_b2_range",
             "max_depth=0": "max_depth", "frozen.sigma_b2=-1": "frozen.sigma_b2", "chaotic.sigma_w2=0": "chaotic.sigma_w2",
             "correlation=1": "correlation", "n_inputs=1": "n_inputs"}
    for override, field in cases.items():
        cfg = compose_config("phase", [override])
        if field is None:
            validate(cfg)
            continue
        with pytest.raises(ConfigError, match=f"^{field}:"):
            validate(cfg)
