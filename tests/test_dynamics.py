"""Kernel-regression dynamics: closed forms against explicit iteration, ODE solves, linearised
and finite networks, and ensembles of finite networks (float64)."""

import contextlib
import math
import warnings

import pytest
import torch

from ntklab import ArchSpec, analytic_kernels, build_mlp, empirical_ntk
from ntklab.dynamics import (accuracy, class_midpoint, correct, ensemble_predictor, gp_inference, linearize,
                             max_learning_rate, mse_loss, mse_predictor, symmetry_tolerance)
from tests.helpers import gradient_descent, random_inputs


@pytest.fixture
def problem(rng):
    """A relu NTK on 12 train and 5 test points with 2-output targets."""
    x_train, x_test = random_inputs(12, 4, rng), random_inputs(5, 4, rng)
    spec = ArchSpec(depth=2, width=64, sigma_w=1.4, sigma_b=0.1)
    joint = analytic_kernels(spec, torch.cat([x_train, x_test]))
    y = random_inputs(12, 2, rng)
    f0_train, f0_test = 0.3 * random_inputs(12, 2, rng), 0.3 * random_inputs(5, 2, rng)
    return dict(k=joint.ntk[:12, :12], k_test=joint.ntk[12:, :12], y=y, f0=f0_train, f0_test=f0_test,
                joint=joint, x_train=x_train, x_test=x_test)


def _iterate(p, lr, steps):
    """f_{t+1} = f_t − (η/(Nk)) Θ (f_t − y) on train, and the same update on test."""
    c = lr / p["y"].numel()
    f, f_test, out = p["f0"].clone(), p["f0_test"].clone(), {}
    for step in range(max(steps) + 1):
        if step in steps:
            out[step] = (f.clone(), f_test.clone())
        residual = f - p["y"]
        f, f_test = f - c * p["k"] @ residual, f_test - c * p["k_test"] @ residual
    return out


def test_discrete_closed_form_equals_iterating_the_recurrence(problem):
    lr = max_learning_rate(problem["k"], out_dim=2, fraction=0.7)
    steps = [0, 1, 5, 37, 200]
    predict = mse_predictor(problem["k"], problem["y"], learning_rate=lr, discrete=True)
    train, test = predict(torch.tensor(steps), problem["f0"], problem["f0_test"], problem["k_test"])
    assert train.shape == (5, 12, 2) and test.shape == (5, 5, 2)
    for i, (f, f_test) in enumerate(_iterate(problem, lr, steps).values()):
        # The recurrence and the eigen-solution differ by rounding only: measured ≤ 4e-15 relative
        # at every listed step. With |1 − cλ| < 1 the recurrence does not amplify its rounding, so
        # after 200 steps it is at most ~200 · a few ε ≈ 1e-13. 1e-10 sits 1000× above that and
        # far below a wrong convention: one step too many or too few already changes f by 6e-3
        # (at step 37) to 3e-4 (at step 200), and η/N in place of η/(Nk) by more.
        assert ((train[i] - f).norm() / f.norm()).item() < 1e-10
        assert ((test[i] - f_test).norm() / f_test.norm()).item() < 1e-10


def test_gradient_flow_equals_matrix_exponential_and_rk4(problem):
    k, y, f0 = problem["k"], problem["y"], problem["f0"]
    lr = 2.0
    c = lr / y.numel()
    predict = mse_predictor(k, y, learning_rate=lr)
    times = torch.tensor([0.0, 0.5, 3.0, 20.0])
    train, test = predict(times, f0, problem["f0_test"], problem["k_test"])
    for t, f in zip(times, train):            # exact: y + expm(−cΘt)(f0 − y)
        exact = y + torch.linalg.matrix_exp(-c * k * t) @ (f0 - y)
        assert torch.allclose(f, exact, rtol=0, atol=1e-10)
    # A fine-step RK4 solve of df/dt = −cΘ(f − y), df*/dt = −cΘ*(f − y): error O(h⁴) ≈ 1e-12 here.
    state = torch.cat([f0, problem["f0_test"]])
    rhs = lambda s: -c * torch.cat([k, problem["k_test"]]) @ (s[:12] - y)
    h, t = 1e-3, 0.0
    for target, f, f_test in zip(times[1:3], train[1:3], test[1:3]):
        while t < target.item() - 1e-12:
            k1 = rhs(state); k2 = rhs(state + h / 2 * k1); k3 = rhs(state + h / 2 * k2); k4 = rhs(state + h * k3)
            state, t = state + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), t + h
        assert torch.allclose(state[:12], f, rtol=0, atol=1e-9)
        assert torch.allclose(state[12:], f_test, rtol=0, atol=1e-9)


def test_infinite_time_is_kernel_regression_with_ridge(problem):
    k, y, k_test = problem["k"], problem["y"], problem["k_test"]
    for ridge in (0.0, 0.1):
        regularised = k + ridge * k.diagonal().mean() * torch.eye(12, dtype=torch.float64)
        for discrete in (False, True):
            predict = mse_predictor(k, y, learning_rate=1.0, ridge=ridge, discrete=discrete)
            train, test = predict(math.inf, 0.0, 0.0, k_test)
            assert torch.allclose(test, k_test @ torch.linalg.solve(regularised, y), rtol=1e-9, atol=1e-12)
            if ridge == 0.0:
                assert torch.allclose(train, y, rtol=0, atol=1e-9)


def test_losses_match_the_predicted_outputs(problem):
    predict = mse_predictor(problem["k"], problem["y"], learning_rate=3.0)
    times = torch.tensor([0.0, 1.0, 10.0, math.inf])
    y_test = torch.zeros(5, 2, dtype=torch.float64)
    train, test = predict(times, problem["f0"], problem["f0_test"], problem["k_test"])
    train_loss, test_loss = predict.losses(times, problem["f0"], problem["f0_test"], problem["k_test"], y_test)
    assert torch.allclose(train_loss, mse_loss(train, problem["y"]), rtol=1e-10, atol=1e-15)
    assert torch.allclose(test_loss, mse_loss(test, y_test), rtol=1e-12, atol=0)
    assert train_loss[0].item() == pytest.approx(0.5 * ((problem["f0"] - problem["y"]) ** 2).mean().item(), rel=1e-12)


def test_vector_targets_and_scalar_times(problem):
    predict = mse_predictor(problem["k"], problem["y"][:, 0], learning_rate=1.0)
    train, test = predict(2.0, problem["f0"][:, 0], problem["f0_test"][:, 0], problem["k_test"])
    both = mse_predictor(problem["k"], problem["y"], learning_rate=1.0)(2.0, problem["f0"], problem["f0_test"],
                                                                       problem["k_test"])
    # One output of k = 2 runs at half the speed (c = η/(Nk)), so compare with η doubled there.
    fast = mse_predictor(problem["k"], problem["y"], learning_rate=2.0)(2.0, problem["f0"], problem["f0_test"],
                                                                       problem["k_test"])
    assert train.shape == (12,) and test.shape == (5,)
    assert torch.allclose(train, fast.train[:, 0], rtol=1e-12, atol=1e-14)
    assert not torch.allclose(train, both.train[:, 0])


@pytest.mark.parametrize("fraction, converges", [(0.9, True), (1.1, False)])
def test_largest_stable_learning_rate(problem, fraction, converges):
    k, y, f0 = problem["k"], problem["y"], problem["f0"]
    lr = max_learning_rate(k, out_dim=2, fraction=fraction)
    assert lr == pytest.approx(fraction * 2 * 24 / torch.linalg.eigvalsh(k)[-1].item(), rel=1e-12)
    with pytest.warns(RuntimeWarning, match="above η_max") if not converges else contextlib.nullcontext():
        predictor = mse_predictor(k, y, learning_rate=lr, discrete=True)
    train_loss, _ = predictor.losses(torch.tensor([0, 3000]), f0)
    loss_0, loss_t = train_loss
    # At 0.9 η_max the slowest top mode shrinks by 0.8 per step and the rest converge; at 1.1 the
    # top mode grows by 1.2 per step: 3000 steps separate the two by hundreds of orders of magnitude.
    assert (loss_t < 1e-6 * loss_0) if converges else (loss_t > 1e6 * loss_0)


@pytest.mark.parametrize("fraction, converges", [(0.9, True), (1.1, False)])
def test_linearised_network_at_the_stability_edge(fraction, converges, rng):
    x, y = random_inputs(8, 3, rng), random_inputs(8, 1, rng)
    net = build_mlp(ArchSpec(depth=1, width=32, sigma_b=0.1), 3, seed=0, dtype=torch.float64)
    lr = max_learning_rate(empirical_ntk(net, x), fraction=fraction)
    lin = linearize(net)
    start = mse_loss(lin(x), y).item()
    gradient_descent(lin, x, y, lr, steps=400)
    end = mse_loss(lin(x), y).item()
    assert (end < 1e-3 * start) if converges else (end > 1e3 * start)


def test_linearised_network_follows_the_empirical_ntk_prediction(rng):
    x_train, x_test = random_inputs(10, 4, rng), random_inputs(4, 4, rng)
    y = random_inputs(10, 2, rng)
    net = build_mlp(ArchSpec(depth=2, width=64, activation="erf", sigma_w=1.3, sigma_b=0.2, out_dim=2), 4,
                    seed=1, dtype=torch.float64)
    # A finite 2-output net's kernel couples its outputs (hidden layers are shared): use the full one.
    theta_train = empirical_ntk(net, x_train, outputs="full")             # (10, 10, 2, 2)
    theta_test = empirical_ntk(net, x_test, x_train, outputs="full")      # (4, 10, 2, 2)
    with torch.no_grad():
        f0_train, f0_test = net(x_train), net(x_test)
    flat = theta_train.permute(0, 2, 1, 3).reshape(20, 20)
    lr = max_learning_rate(theta_train, fraction=0.5)                      # 2Nk/λ_max of the full kernel
    assert lr == pytest.approx(0.5 * 2 * 20 / torch.linalg.eigvalsh(flat)[-1].item(), rel=1e-12)
    lin = gradient_descent(linearize(net), x_train, y, lr, steps=100)
    predicted = mse_predictor(theta_train, y, learning_rate=lr, discrete=True)(100, f0_train, f0_test, theta_test)
    with torch.no_grad():
        # f_lin is exactly linear in θ, so gradient descent on it is exactly the kernel recurrence
        # with Θ̂_0; only rounding separates them: measured ≤ 2e-14 on outputs of size ~1-2 (five
        # input draws). 1e-8 is far above that and far below any real difference: predicting one
        # step early moves the outputs by 3e-3, the per-output mean kernel instead of the full
        # one by 0.08, and the nonlinear net itself ends 0.12 away.
        assert (lin(x_train) - predicted.train).abs().max().item() < 1e-8
        assert (lin(x_test) - predicted.test).abs().max().item() < 1e-8
    # And the wrapped network itself was not touched.
    assert torch.equal(net(x_train).detach(), f0_train)


def test_ill_conditioned_kernel_warns_and_stays_finite(problem):
    k = problem["k"]
    duplicated = torch.cat([torch.cat([k, k[:, :1]], 1), torch.cat([k[:1], k[:1, :1]], 1)], 0)
    y = torch.cat([problem["y"], problem["y"][:1]])
    with pytest.warns(RuntimeWarning, match="ill-conditioned.*condition number"):
        predict = mse_predictor(duplicated, y)
    train, test = predict(math.inf, 0.0, 0.0, torch.cat([problem["k_test"], problem["k_test"][:, :1]], 1))
    assert torch.isfinite(train).all() and torch.isfinite(test).all()
    # The duplicated point is fitted like the original (its targets agree), so the fit is exact.
    assert torch.allclose(train, y, atol=1e-8)


def test_gp_inference_equals_infinite_time_nngp_ensemble(problem):
    joint = problem["joint"]
    k_train = analytic_kernels(ArchSpec(depth=2, width=64, sigma_w=1.4, sigma_b=0.1), problem["x_train"])
    kernels_test_train = type(joint)(joint.nngp[12:, :12], joint.ntk[12:, :12])
    ens = ensemble_predictor(k_train, kernels_test_train, joint.nngp[12:, 12:], problem["y"], learning_rate=1.0)
    mean, cov = ens(math.inf, kind="nngp")
    gp_mean, gp_cov = gp_inference(joint.nngp[:12, :12], joint.nngp[12:, :12], joint.nngp[12:, 12:], problem["y"])
    assert torch.allclose(mean, gp_mean, rtol=1e-8, atol=1e-10)
    assert torch.allclose(cov, gp_cov, rtol=1e-8, atol=1e-10)
    # Direct formula: K* K⁻¹ y and K** − K* K⁻¹ K*ᵀ.
    solve = torch.linalg.solve(joint.nngp[:12, :12], joint.nngp[12:, :12].T).T
    assert torch.allclose(gp_mean, solve @ problem["y"], rtol=1e-7, atol=1e-9)
    assert torch.allclose(gp_cov, joint.nngp[12:, 12:] - solve @ joint.nngp[12:, :12].T, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("bad, message", [
    (dict(k_train_train=torch.ones(3, 4)), "square"),
    (dict(k_train_train=torch.tensor([[1.0, 2.0], [0.0, 1.0]])), "not symmetric"),
    (dict(y_train=torch.ones(5)), "y_train must have shape (2,) or (2, k)"),
    (dict(learning_rate=-1.0), "learning_rate must be a finite number > 0"),
    (dict(ridge=-0.1), "ridge must be"),
])
def test_bad_predictor_inputs(bad, message):
    args = dict(k_train_train=torch.eye(2, dtype=torch.float64), y_train=torch.ones(2))
    args.update(bad)
    with pytest.raises(ValueError) as err:
        mse_predictor(**args)
    assert message in str(err.value)


def test_bad_times():
    predict = mse_predictor(torch.eye(2, dtype=torch.float64), torch.ones(2), discrete=True)
    with pytest.raises(ValueError, match="integers"):
        predict(1.5)
    with pytest.raises(ValueError, match=">= 0"):
        predict(-1)
    with pytest.raises(ValueError, match="diverge"), pytest.warns(RuntimeWarning, match="above η_max"):
        mse_predictor(torch.eye(2, dtype=torch.float64), torch.ones(2), learning_rate=10.0, discrete=True)(math.inf)


@pytest.mark.parametrize("ridge", [0.01, 0.3])
def test_nngp_ensemble_with_ridge_is_the_gp_posterior_with_that_noise(problem, ridge):
    """kind="nngp" at t = ∞ with a ridge r is the GP posterior with noise r·mean(diag K): the regularised
    train kernel in every term (before, the prior term used the unregularised one and differed by O(r))."""
    joint = problem["joint"]
    k_train = type(joint)(joint.nngp[:12, :12], joint.ntk[:12, :12])
    kernels_test_train = type(joint)(joint.nngp[12:, :12], joint.ntk[12:, :12])
    ens = ensemble_predictor(k_train, kernels_test_train, joint.nngp[12:, 12:], problem["y"], ridge=ridge)
    mean, cov = ens(math.inf, kind="nngp")
    gp_mean, gp_cov = gp_inference(joint.nngp[:12, :12], joint.nngp[12:, :12], joint.nngp[12:, 12:], problem["y"],
                                   ridge=ridge)
    # Both are one eigendecomposition of the same regularised kernel, whose condition number is
    # below 1/r: float64 rounding leaves ~1e-14 relative; 1e-10 is a wide margin.
    assert torch.allclose(mean, gp_mean, rtol=1e-10, atol=1e-12)
    assert torch.allclose(cov, gp_cov, rtol=1e-10, atol=1e-12)
    # And both equal the textbook posterior with noise σ² = r·mean(diag K), by a direct solve.
    k_noisy = joint.nngp[:12, :12] + ridge * joint.nngp[:12, :12].diagonal().mean() * torch.eye(12, dtype=torch.float64)
    solve = torch.linalg.solve(k_noisy, joint.nngp[12:, :12].T).T
    assert torch.allclose(gp_mean, solve @ problem["y"], rtol=1e-10, atol=1e-12)
    assert torch.allclose(gp_cov, joint.nngp[12:, 12:] - solve @ joint.nngp[12:, :12].T, rtol=1e-10, atol=1e-12)


def test_ntk_ensemble_ridge_regularises_the_dynamics_not_the_prior(problem):
    """kind="ntk": the ridge enters the NTK that drives training; the initial outputs keep the plain
    NNGP as covariance. At t = 0 nothing has trained, so the covariance is the prior K** exactly."""
    joint = problem["joint"]
    k_train = type(joint)(joint.nngp[:12, :12], joint.ntk[:12, :12])
    kernels_test_train = type(joint)(joint.nngp[12:, :12], joint.ntk[12:, :12])
    ens = ensemble_predictor(k_train, kernels_test_train, joint.nngp[12:, 12:], problem["y"], ridge=0.1)
    mean_0, cov_0 = ens(0.0, kind="ntk")
    assert torch.allclose(mean_0, torch.zeros_like(mean_0)) and torch.allclose(cov_0, joint.nngp[12:, 12:])
    # At t = ∞ the mean is ridge regression with the NTK: Θ* (Θ + r·mean(diag Θ) I)⁻¹ y.
    mean, _ = ens(math.inf, kind="ntk")
    theta = joint.ntk[:12, :12]
    regularised = theta + 0.1 * theta.diagonal().mean() * torch.eye(12, dtype=torch.float64)
    expected = joint.ntk[12:, :12] @ torch.linalg.solve(regularised, problem["y"])
    assert torch.allclose(mean, expected, rtol=1e-10, atol=1e-12)      # float64 rounding, condition < 10/r


def test_test_kernel_without_initial_test_outputs_is_refused(problem):
    predict = mse_predictor(problem["k"], problem["y"], learning_rate=1.0)
    with pytest.raises(ValueError, match="without fx_test_0"):
        predict(1.0, problem["f0"], None, problem["k_test"])
    # an explicit 0.0 says the outputs start at zero, and is the same as passing zeros
    zero = predict(1.0, problem["f0"], 0.0, problem["k_test"]).test
    assert torch.equal(zero, predict(1.0, problem["f0"], torch.zeros(5, 2, dtype=torch.float64), problem["k_test"]).test)


def test_discrete_prediction_above_eta_max_warns(problem):
    lr = max_learning_rate(problem["k"], out_dim=2, fraction=1.2)
    with pytest.warns(RuntimeWarning, match="above η_max"):
        predict = mse_predictor(problem["k"], problem["y"], learning_rate=lr, discrete=True)
    # the warning is about a real divergence: the residual along the top eigenvector grows like 1.4^t
    train = predict(torch.tensor([0, 200]), problem["f0"]).train
    assert (train[1] - problem["y"]).abs().max() > 1e6 * (train[0] - problem["y"]).abs().max()
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # at 0.9 η_max nothing is said
        mse_predictor(problem["k"], problem["y"], learning_rate=lr * 0.9 / 1.2, discrete=True)


def test_ill_conditioning_warning_counts_the_null_eigenvalues(problem):
    k = problem["k"]
    duplicated = torch.cat([torch.cat([k, k[:, :1]], 1), torch.cat([k[:1], k[:1, :1]], 1)], 0)
    with pytest.warns(RuntimeWarning) as record:
        predictor = mse_predictor(duplicated, torch.cat([problem["y"], problem["y"][:1]]))
    message = str(record[0].message)
    # a duplicated point makes the kernel exactly singular: λ_min is rounding noise, so the condition
    # number is inf or astronomically large, never that of the well-resolved eigenvalues (~1e2 here)
    quoted = float(message.split("λ_max/λ_min = ")[1].split(",")[0])
    assert quoted > 1e12
    assert "1 of 13 eigenvalues" in message
    assert predictor.spectrum.condition_number == pytest.approx(quoted, rel=1e-2)   # quoted to 3 digits


def test_a_kernel_computed_in_float32_leaves_its_rounding_level_directions_unfitted():
    """K = V diag(λ) Vᵀ held in float64. Computed in float32, its entries carry errors E with
    ‖E‖₂ ≲ eps32·‖K‖_F ≈ 1.3e-6 here, so λ = 1e-7 and 1e-9 are noise: precision=float32 leaves them
    unfitted and the t = ∞ fit on the train points is the projection V_k V_kᵀ y onto the rest (a
    closed form); held to float64's rounding, every direction is fitted and the fit is y itself."""
    generator = torch.Generator().manual_seed(3)
    vectors, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))
    eigenvalues = torch.tensor([1e-9, 1e-7, 1e-3, 1.0, 3.0, 10.0], dtype=torch.float64)
    kernel = vectors @ torch.diag(eigenvalues) @ vectors.T
    kernel = (kernel + kernel.T) / 2
    y = torch.randn(6, 2, generator=generator, dtype=torch.float64)
    kept = vectors[:, 2:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)          # ill-conditioned, by construction
        coarse = mse_predictor(kernel, y, precision=torch.float32)
        fine = mse_predictor(kernel, y)
        same = mse_predictor(kernel, y, precision=torch.float64)
    assert int(coarse.spectrum.null.sum()) == 2 and int(fine.spectrum.null.sum()) == 0
    torch.testing.assert_close(coarse(math.inf, 0.0).train, kept @ (kept.T @ y), rtol=0, atol=1e-10)
    # fitting 1e-9 exactly: the residual is rounding amplified by the condition number 1e10, ~1e-6
    torch.testing.assert_close(fine(math.inf, 0.0).train, y, rtol=0, atol=1e-4)
    torch.testing.assert_close(same(math.inf, 0.0).train, fine(math.inf, 0.0).train, rtol=0, atol=0)
    with pytest.warns(RuntimeWarning, match=r"2 of 6 eigenvalues are within rounding \(eps·‖K‖_F of float32 = 1.\d+e-06\)"):
        mse_predictor(kernel, y, precision=torch.float32)


def test_target_shape_error_reports_what_was_passed():
    with pytest.raises(ValueError, match=r"got \(4,\)$"):
        mse_predictor(torch.eye(5, dtype=torch.float64), torch.ones(4))


def test_kernel_symmetry_is_checked_at_the_rounding_of_its_dtype(problem):
    """A float32 kernel whose transpose differs by one float32 ulp (what the structured NTK of a float32
    μP net on 8 points has: max|K − Kᵀ| = 1.49e-8 at max|K| = 0.72) is a kernel: η_max and the
    predictions are those of its symmetrised float64 copy. The same matrix passed as float64 is not
    (one float32 ulp is 4e-8 of max|K|, above float64's √eps), nor is a float32 matrix off by 1e-3."""
    assert symmetry_tolerance(torch.float64) == pytest.approx(1.49e-8, rel=1e-2)     # √eps, the old 1e-8's size
    assert symmetry_tolerance(torch.float32) == pytest.approx(3.45e-4, rel=1e-2)
    kernel = problem["k"].float()
    kernel = kernel / kernel.abs().max()                        # max|K| = 1
    off_diagonal = kernel.masked_fill(torch.eye(12, dtype=torch.bool), 0)
    i, j = divmod(int(off_diagonal.abs().argmax()), 12)        # the largest off-diagonal entry
    bumped = kernel.clone()
    bumped[i, j] = torch.nextafter(bumped[i, j], torch.tensor(2.0))     # one ulp up: K is now asymmetric
    asymmetry = (bumped - bumped.T).abs().max().item()
    assert 1.5e-8 < asymmetry < 1e-7                            # above float64's tolerance, far below float32's
    symmetric = bumped.double()
    symmetric = (symmetric + symmetric.T) / 2
    assert max_learning_rate(bumped, out_dim=2) == max_learning_rate(symmetric, out_dim=2)
    y = problem["y"]
    assert torch.equal(mse_predictor(bumped, y, learning_rate=1.0)(7.0).train,
                       mse_predictor(symmetric, y, learning_rate=1.0)(7.0).train)
    with pytest.raises(ValueError, match="k_train_train is not symmetric.*float64"):
        max_learning_rate(bumped.double(), out_dim=2)
    off = kernel.clone()
    off[0, 1] += 1e-3                                           # 1e-3 of max|K|: three times float32's √eps
    with pytest.raises(ValueError, match="k_train_train is not symmetric.*float32"):
        mse_predictor(off, y)
    # float64 keeps its tolerance: 1e-9 of max|K| is rounding, 1e-7 is not
    for size, accepted in ((1e-9, True), (1e-7, False)):
        near = problem["k"] / problem["k"].abs().max()
        near[0, 1] += size
        with pytest.raises(ValueError, match="not symmetric") if not accepted else contextlib.nullcontext():
            max_learning_rate(near)


def test_scalar_targets_are_classified_on_either_side_of_the_two_classes_midpoint():
    # centred ±1 targets of an unbalanced train set (mean 0.5: classes at 0.5 and −1.5, midpoint −0.5)
    fx = torch.tensor([[0.2], [-0.4], [-0.6], [-3.0]], dtype=torch.float64)
    y = torch.tensor([[0.5], [0.5], [-1.5], [0.5]], dtype=torch.float64)
    assert class_midpoint(y) == -0.5
    assert correct(fx, y).tolist() == [True, True, True, False]
    # a subset of one class (a small held-out part) takes the midpoint of targets that hold both:
    # its own max and min would make the threshold the class value itself, so −3.0 < 0.5 counted right
    one_class = y[[0, 1, 3]]
    with pytest.raises(ValueError, match="one value only"):
        correct(fx[[0, 1, 3]], one_class)
    assert correct(fx[[0, 1, 3]], one_class, midpoint=class_midpoint(y)).tolist() == [True, True, False]
    assert accuracy(fx[[0, 1, 3]], one_class, class_midpoint(y)) == pytest.approx(2 / 3)
    assert class_midpoint(torch.eye(3, dtype=torch.float64)) is None        # one-hot: argmax, no threshold
    # train and test targets together, unless label noise (on the train set only) moved the train
    # targets off the two class values: then the test targets' alone
    y_test = torch.tensor([[0.5], [-1.5]], dtype=torch.float64)
    assert class_midpoint(y[:2], y_test) == -0.5          # a one-class train set, clean: both sets together
    noisy = y + torch.tensor([[0.3], [-0.2], [0.9], [0.1]], dtype=torch.float64)     # extremes 0.8 and −0.6
    assert class_midpoint(noisy, y_test) == -0.5
    with pytest.raises(ValueError, match="take 4 values, not two classes'"):
        class_midpoint(noisy)
