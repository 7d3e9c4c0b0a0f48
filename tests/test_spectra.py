"""Spectra by degree against brute force: the full 2^d × 2^d kernel matrix of the boolean cube,
the Gram matrix of many random points on the sphere, and exact identities (trace, node doubling,
two working precisions); spectra on data against their definition and a wide network's."""

import csv
import json
import math

import pytest
import torch

from ntklab import ArchSpec, analytic_kernels, build_mlp
from ntklab.dynamics import max_learning_rate
from ntklab.spectra import (analytic_spectrum, boolean_cube_eigenvalues, boolean_cube_eigenvalues_by_depth,
                            boolean_cube_supported, empirical_spectrum, fractional_variance,
                            fractional_variance_by_depth, kernel_profile, kernel_spectrum, sphere_eigenvalues,
                            sphere_multiplicity)
from ntklab.spectra import _precise_profiles
from tests.helpers import compose_config, start_ntklab, stop_all


def cube(d):
    """All 2^d points of {±1}^d, (2^d, d) float64."""
    bits = (torch.arange(2 ** d)[:, None] >> torch.arange(d)) & 1
    return 1.0 - 2.0 * bits.to(torch.float64)


CUBE_CASES = [
    # (d, spec, kind)
    (10, ArchSpec(depth=2, activation="relu", sigma_w=1.4, sigma_b=0.3), "ntk"),
    (8, ArchSpec(depth=1, activation="relu"), "nngp"),
    (8, ArchSpec(depth=3, activation="erf", sigma_w=1.7, sigma_b=0.5), "ntk"),
    (7, ArchSpec(depth=3, activation="erf", sigma_w=1.2), "nngp"),
    (7, ArchSpec(depth=2, activation="abs", sigma_b=0.2, parametrization="standard", width=64), "ntk"),
    (6, ArchSpec(depth=2, activation="sin", sigma_w=1.3, sigma_b=0.1, parametrization="mup", width=32), "ntk"),
]


@pytest.mark.parametrize("d, spec, kind", CUBE_CASES)
def test_boolean_cube_eigenvalues_equal_the_full_matrix_eigendecomposition(d, spec, kind):
    x = cube(d)
    k = getattr(analytic_kernels(spec, x), kind) / 2 ** d               # the operator on 2^d points
    mu = boolean_cube_eigenvalues(spec, d, kind)
    assert mu.shape == (d + 1,) and mu.dtype == torch.float64
    # eigh of a 1024 × 1024 matrix is backward stable: errors ~ N·eps·‖K‖, far below 1e-12·Φ(1)
    tol = 1e-12 * k[0, 0].item()
    multiplicity = torch.tensor([math.comb(d, k) for k in range(d + 1)])
    expected = torch.repeat_interleave(mu, multiplicity).sort().values
    torch.testing.assert_close(torch.linalg.eigvalsh(k), expected, rtol=0, atol=tol)
    # and each degree's eigenvalue belongs to its monomials: K χ_S / 2^d = μ_|S| χ_S
    for degree in range(d + 1):
        chi = x[:, :degree].prod(dim=1)
        torch.testing.assert_close(k @ chi, mu[degree] * chi, rtol=0, atol=tol)


@pytest.mark.parametrize("parametrization", ["ntk", "standard", "mup"])
@pytest.mark.parametrize("activation", ["relu", "abs", "leaky_relu", "erf", "identity", "sin"])
def test_high_precision_recursion_equals_analytic_kernels(activation, parametrization):
    spec = ArchSpec(depth=3, width=40, activation=activation, sigma_w=1.3, sigma_b=0.4,
                    parametrization=parametrization)
    d = 9
    t = torch.tensor([1 - 2 * m / d for m in range(d + 1)], dtype=torch.float64)
    profiles = _precise_profiles(spec, d, [0, 1, 3], working_bits=120)
    for depth, (nngp, ntk) in profiles.items():
        reference = kernel_profile(ArchSpec(depth=depth, width=40, activation=activation, sigma_w=1.3, sigma_b=0.4,
                                            parametrization=parametrization), t, d)
        for ours, theirs in ((nngp, reference.nngp), (ntk, reference.ntk)):
            # float64 rounding through 3 layers (arccos near ρ = 1 amplifies it a little): ~1e-15
            torch.testing.assert_close(torch.tensor([float(v) for v in ours], dtype=torch.float64), theirs,
                                       rtol=0, atol=1e-13 * theirs[0].item())


def test_d1000_is_stable_across_precisions():
    spec = ArchSpec(depth=2, activation="relu", sigma_w=1.4, sigma_b=0.2)
    mu = boolean_cube_eigenvalues(spec, 1000, "ntk")
    mu_more = boolean_cube_eigenvalues(spec, 1000, "ntk", extra_bits=200)
    # every μ_k down to ~1e-304 is resolved: more bits change nothing beyond float64's last digit
    assert bool((mu > 0).all()) and mu[-1] < 1e-290
    torch.testing.assert_close(mu, mu_more, rtol=4 * torch.finfo(torch.float64).eps, atol=0)
    assert fractional_variance(mu).sum().item() == pytest.approx(1.0, abs=1e-12)
    # the trace identity Σ C(d,k) μ_k = K(x, x) = Φ(1), with Φ(1) from the float64 analytic kernels
    phi_1 = kernel_profile(spec, [1.0], 1000).ntk.item()
    assert fractional_variance(mu, total=phi_1).sum().item() == pytest.approx(1.0, abs=1e-12)


def test_log_eigenvalues_reach_below_float64():
    # at d = 1100 the high-degree μ_k (≲ Φ(1)/C(d, k), ≈ 1e-337 at k = d) fall below float64's range
    spec = ArchSpec(depth=1, activation="relu")
    log_mu = boolean_cube_eigenvalues(spec, 1100, "nngp", log=True)
    high = log_mu[500::2]                      # even degrees (relu's odd degrees >= 3 are 0 at depth 1)
    assert bool(torch.isfinite(high).all()) and high.max() < math.log(1e-320)
    shares = fractional_variance(log_mu, log=True)
    assert shares.sum().item() == pytest.approx(1.0, abs=1e-12) and bool((shares >= 0).all())


def test_fractional_variance_shares():
    mu = torch.tensor([0.5, 0.1, 0.01, 0.002], dtype=torch.float64)        # d = 3
    weights = torch.tensor([1, 3, 3, 1], dtype=torch.float64) * mu
    torch.testing.assert_close(fractional_variance(mu), weights / weights.sum())
    torch.testing.assert_close(fractional_variance(mu.log(), log=True), weights / weights.sum())
    torch.testing.assert_close(fractional_variance(mu, [1, 2, 5, 7], total=10.0),
                               torch.tensor([1, 2, 5, 7]) * mu / 10.0)
    with pytest.raises(ValueError, match="every eigenvalue is zero"):
        fractional_variance(torch.zeros(4))


def test_odd_kernel_has_exact_zeros_at_even_degrees():
    # erf is odd and without bias every layer's Φ is odd in t, so μ_k = 0 for even k, exactly
    mu = boolean_cube_eigenvalues(ArchSpec(depth=2, activation="erf", sigma_w=1.5), 200, "ntk")
    assert bool((mu[0::2] == 0).all()) and bool((mu[1:40:2] > 0).all())


def test_unsupported_activations_are_refused():
    assert boolean_cube_supported("relu") and boolean_cube_supported("erf")
    assert not boolean_cube_supported("tanh")
    with pytest.raises(ValueError, match="tanh.*closed-form"):
        boolean_cube_eigenvalues(ArchSpec(depth=1, activation="tanh"), 10)


@pytest.mark.parametrize("parametrization", ["ntk", "mup"])
def test_depth_sweep_equals_one_computation_per_depth(parametrization):
    # the sweep shares the hidden layers and applies each depth's readout ("mup"'s depends on it)
    spec = ArchSpec(depth=1, width=64, activation="relu", sigma_w=1.4, sigma_b=0.2, parametrization=parametrization)
    depths = [0, 1, 2, 5]
    swept = boolean_cube_eigenvalues_by_depth(spec, 20, depths, "ntk")
    for row, depth in zip(swept, depths):
        alone = boolean_cube_eigenvalues(ArchSpec(depth=depth, width=64, activation="relu", sigma_w=1.4, sigma_b=0.2,
                                                  parametrization=parametrization), 20, "ntk")
        torch.testing.assert_close(row, alone, rtol=1e-15, atol=0)


def test_deeper_relu_nets_favour_higher_degrees():
    # Yang & Salman 2019 (§4): the depth maximising degree k's share of the NTK grows with k
    sweep = fractional_variance_by_depth(ArchSpec(depth=1, activation="relu"), 128, range(1, 16), "ntk")
    best = list(sweep.best_depth[1:10])
    assert best == sorted(best) and best[-1] > best[0]
    torch.testing.assert_close(sweep.fractional_variance.sum(dim=1), torch.ones(15, dtype=torch.float64))
    assert sweep.best_depth[4] == sweep.depths[int(sweep.fractional_variance[:, 4].argmax())]


SPHERE_CASES = [
    (ArchSpec(depth=2, activation="relu", sigma_w=1.4), "ntk"),
    (ArchSpec(depth=2, activation="relu", sigma_w=1.4), "nngp"),
    (ArchSpec(depth=2, activation="erf", sigma_w=1.4, sigma_b=0.3), "ntk"),
]


@pytest.mark.parametrize("spec, kind", SPHERE_CASES)
def test_sphere_eigenvalues_equal_a_gram_matrix_of_many_points(spec, kind):
    d, n = 3, 1600
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(d)                   # uniform on the sphere, x·x/d = 1
    gram = torch.linalg.eigvalsh(getattr(analytic_kernels(spec, x), kind) / n).flip(0)
    lam = sphere_eigenvalues(spec, d, 10, kind)
    # Sampling splits each degenerate group at first order, by ~λ_k · c/√n with c of a few (up to
    # 14% at n = 1600 over 6 seeds); the group's mean moves far less, as the first-order
    # perturbation is traceless there (Σ_a Y_a(x)² = N(d, k) on the sphere): ≤ 1.4% over 6 seeds.
    order = sorted(range(11), key=lambda k: -lam[k].item())
    start = 0
    for k in order[:4]:                              # the top four degrees, as groups of N(3, k) = 2k + 1
        group = gram[start:start + sphere_multiplicity(d, k)]
        start += group.numel()
        assert group.numel() == 2 * k + 1
        assert group.mean().item() == pytest.approx(lam[k].item(), rel=0.03), (k, group, lam[k])
        assert ((group / lam[k] - 1).abs().max().item()) < 0.25, (k, group, lam[k])
    # and the next eigenvalue belongs to the fifth degree, not to the fourth
    assert gram[start].item() < (lam[order[3]] + lam[order[4]]).item() / 2


def test_sphere_quadrature_is_converged_and_the_trace_is_complete():
    spec = ArchSpec(depth=3, activation="relu", sigma_w=1.3, sigma_b=0.2)
    lam = sphere_eigenvalues(spec, 4, 30, "ntk")
    # relu's √(1−t) terms are analytic in θ: four times the default nodes changes only rounding
    torch.testing.assert_close(lam, sphere_eigenvalues(spec, 4, 30, "ntk", nodes=4 * 96),
                               rtol=0, atol=1e-13 * lam[0].item())
    # Mercer: Σ_k N(d, k) λ_k = Φ(1). erf's smooth kernel's λ_k fall below float64's resolution of
    # the sum from k ≈ 33 (returned as 0), and those degrees hold ~3e-12 of the trace
    smooth = ArchSpec(depth=2, activation="erf", sigma_w=1.2, sigma_b=0.3)
    lam = sphere_eigenvalues(smooth, 5, 60, "nngp")
    total = sum(sphere_multiplicity(5, k) * lam[k].item() for k in range(61))
    assert total == pytest.approx(kernel_profile(smooth, [1.0], 5).nngp.item(), rel=1e-11)
    assert [sphere_multiplicity(3, k) for k in range(4)] == [1, 3, 5, 7]
    assert [sphere_multiplicity(2, k) for k in range(3)] == [1, 2, 2]


def test_cube_and_sphere_spectra_meet_as_d_grows():
    # t = x·x'/d is ±1-valued on the cube and continuous on the sphere; the low-degree eigenvalues
    # agree up to O(k²/d) (measured: 2% at d = 100, 0.5% at d = 400 for k = 2): quadrupling d
    # should cut the gap about four times
    spec = ArchSpec(depth=2, activation="erf", sigma_w=1.3, sigma_b=0.3)
    gaps = []
    for d in (100, 400):
        mu, lam = boolean_cube_eigenvalues(spec, d, "ntk")[:4], sphere_eigenvalues(spec, d, 3, "ntk")
        gaps.append(((mu - lam).abs() / lam).max().item())
    assert gaps[1] < 0.02 and 3.0 < gaps[0] / gaps[1] < 5.5


def test_kernel_spectrum_is_a_sorted_eigendecomposition(rng):
    a = torch.randn(12, 12, generator=rng, dtype=torch.float64)
    kernel = a @ a.T
    spectrum = kernel_spectrum(kernel, top=4)
    assert bool((spectrum.eigenvalues[:-1] >= spectrum.eigenvalues[1:]).all())
    v = spectrum.eigenvectors
    torch.testing.assert_close(kernel @ v, v * spectrum.eigenvalues[:4], rtol=1e-10, atol=1e-10)
    assert bool((v.gather(0, v.abs().argmax(dim=0, keepdim=True)) > 0).all())
    assert spectrum.eta_max() == pytest.approx(max_learning_rate(kernel), rel=1e-12)


def test_wide_network_spectrum_approaches_the_analytic_one(rng):
    x = torch.randn(24, 5, generator=rng, dtype=torch.float64)
    spec = ArchSpec(depth=2, width=2048, activation="relu", sigma_w=1.4, sigma_b=0.1)
    analytic = analytic_spectrum(spec, x, "ntk", top=2)
    empirical = empirical_spectrum(build_mlp(spec, in_dim=5, seed=0, dtype=torch.float64), x, "ntk", top=2)
    # the empirical NTK fluctuates by O(depth/√width) (Hanin & Nica 2019): 3-10% at width 2048 over
    # three seeds; the top eigenvectors, separated by a wide gap, overlap to > 0.995 there
    assert empirical.eigenvalues[0].item() == pytest.approx(analytic.eigenvalues[0].item(), rel=0.2)
    assert (empirical.eigenvectors[:, 0] @ analytic.eigenvectors[:, 0]).item() > 0.99


# ----------------------------------------------------------------------------- the command

@pytest.fixture(scope="module", autouse=True)
def command_runs(tmp_path_factory):
    """The command's runs, started before this module's first test: their ~3 s of interpreter and
    torch start-up overlap the in-process tests instead of adding to them."""
    tmp = tmp_path_factory.mktemp("spectrum_command")
    runs = {"tmp": tmp,
            "ok": start_ntklab("spectrum", "d=16", "max_depth=4", "model.sigma_b=0.2", "plot_formats=[png,pdf]",
                         f"hydra.run.dir={tmp / 'run'}", cwd=tmp),
            "bad": start_ntklab("spectrum", "model.activation=tanh", f"hydra.run.dir={tmp / 'bad'}", cwd=tmp)}
    yield runs
    stop_all([runs["ok"], runs["bad"]])


def test_spectrum_command_writes_its_files(command_runs):
    run_dir = command_runs["tmp"] / "run"
    ok, bad = command_runs["ok"], command_runs["bad"]
    out, err = ok.communicate(timeout=300)
    assert ok.returncode == 0, err
    summary = json.loads((run_dir / "spectrum.json").read_text())
    ntk = summary["kinds"]["ntk"]
    # μ_0 = E_x Φ(x·1/d) straight from the float64 analytic kernels: no cancellation at degree 0
    d = 16
    t = torch.tensor([1 - 2 * m / d for m in range(d + 1)], dtype=torch.float64)
    phi = kernel_profile(ArchSpec(depth=2, activation="relu", sigma_b=0.2), t, d).ntk
    mu_0 = sum(math.comb(d, m) * phi[m].item() for m in range(d + 1)) / 2 ** d
    assert ntk["eigenvalue"][0] == pytest.approx(mu_0, rel=1e-12)
    assert sum(ntk["fractional_variance"]) == pytest.approx(1.0, abs=1e-12)
    assert ntk["sweep"]["depths"] == [1, 2, 3, 4] and len(ntk["sweep"]["best_depth"]) == d + 1
    with open(run_dir / "spectrum.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 4 * (d + 1)           # nngp and ntk, depths 1..4 (the configured 2 among them)
    assert float(rows[0]["multiplicity"]) == 1.0 and rows[0]["kind"] == "nngp"
    for name in ("eigenvalues", "fractional_variance_depth"):
        assert (run_dir / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (run_dir / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    out, err = bad.communicate(timeout=300)
    assert bad.returncode == 2 and "model.activation" in err and "domain=sphere" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_spectrum_config_values_are_checked():
    from ntklab.commands.spectrum import validate
    from ntklab.errors import ConfigError

    cases = {"kind=both": None, "kind=foo": "kind", "domain=torus": "domain", "d=0": "d", "max_depth=-1": "max_depth",
             "plot_degrees=[200]": "plot_degrees", "model.sigma_w=-1": "model.sigma_w",
             "domain=sphere,d=1": "d", "domain=sphere,max_degree=5,plot_degrees=[6]": "plot_degrees",
             "plot_formats=[gif]": "plot_formats"}
    for overrides, field in cases.items():
        cfg = compose_config("spectrum", overrides.split(","))
        if field is None:
            validate(cfg)
            continue
        with pytest.raises(ConfigError, match=f"^{field}:"):
            validate(cfg)
    cfg = compose_config("spectrum", ["parametrization=meanfield", "depth=1"])
    with pytest.raises(ConfigError, match="^max_depth:.*max_depth=0"):
        validate(cfg)
