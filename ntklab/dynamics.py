"""What the kernel says gradient descent will do: predictions at any time, ensembles, linearised nets.

Conventions (docs/design.md, same as neural-tangents' ``predict``): N training points, k outputs,
loss L = 1/(2Nk) Σ_i ‖f(x_i) − y_i‖², learning rate η, Θ the per-output train×train kernel.
With c = η/(Nk) the linearised function-space dynamics are

    train:  f_t = y + D_t (f_0 − y),          D_t = exp(−cΘt)  (gradient flow)  or  (I − cΘ)^t  (discrete)
    test:   f_t(x*) = f_0(x*) − Θ(x*, X) G_t (f_0 − y),     G_t = Θ^{-1} (I − D_t)

With Θ = V diag(λ) Vᵀ both are diagonal: d(λ) = e^{−cλt} or (1 − cλ)^t and g(λ) = (1 − d(λ))/λ,
which tends to c·t as λ → 0, so finite times never divide by a small eigenvalue. One
eigendecomposition then serves every time, including t = ∞ (plain kernel regression, where
G_∞ = Θ^{-1} on the non-null eigenspace: a pseudo-inverse). Everything is float64.

References: Jacot et al. 2018; Lee et al. 2019 ("Wide neural networks of any depth evolve as
linear models", eqs. 9-16).
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from ntklab.kernels.analytic import Kernels
from ntklab.tensor_checks import check_learning_rate

TimeLike = Union[int, float, Tensor]

ILL_CONDITIONED = 1e12
"""Condition number above which a kernel triggers a warning."""


class Prediction(NamedTuple):
    """Predicted outputs: train (N, k) or (T, N, k); test likewise with N* rows, or None."""

    train: Tensor
    test: Optional[Tensor]


def mse_loss(fx: Tensor, y: Tensor) -> Tensor:
    """L = 1/(2Nk) Σ ‖f − y‖²: half the mean squared error over y's axes ((N,) or (N, k)).

    fx may carry leading axes (a time axis, say); they are kept: fx (T, N, k) gives (T,).
    """
    y = torch.as_tensor(y)
    return 0.5 * ((torch.as_tensor(fx) - y) ** 2).mean(dim=tuple(range(-y.dim(), 0)))


def class_midpoint(y: Tensor, y_test: Optional[Tensor] = None) -> Optional[float]:
    """The threshold between the two classes of scalar targets y (N, 1) (±1, possibly centred): the
    midpoint of their two values; None for one-hot targets (N, k > 1), classified by argmax. Take it
    from targets that hold both classes (the train set's) and pass it to :func:`correct` for any
    subset, which may hold one class only.

    With ``y_test`` (M, 1), y being the train targets: from both sets where together they take at
    most two values; else (label noise: ``data.noise`` goes on the train set only, whose targets then
    take more than two values, whose extremes are not the classes') from ``y_test`` alone where it
    holds both classes; else (noisy train targets beside a one-class test set) the midpoint of the
    extremes of both sets, the best guess left. Raises ValueError where the targets it reads hold
    one value only, or more than two."""
    if y.shape[1] > 1:
        return None
    if y_test is None:
        values = torch.unique(y)
    else:
        both = torch.cat([y, y_test])
        values = torch.unique(both)
        if values.numel() > 2:
            values = torch.unique(y_test)
            if values.numel() != 2:
                return (both.min().item() + both.max().item()) / 2
    if values.numel() == 1:
        raise ValueError(f"scalar targets hold one value only ({values.item():g}): the two classes' midpoint needs "
                         "targets of both classes (pass midpoint= from the train targets)")
    if values.numel() > 2:
        raise ValueError(f"scalar targets take {values.numel()} values, not two classes' (label noise?): take the "
                         "midpoint from targets without noise (the test set's)")
    return (values[0].item() + values[1].item()) / 2


def correct(fx: Tensor, y: Tensor, midpoint: Optional[float] = None) -> Tensor:
    """(M,) bool: which of the M points (outputs fx (M, k), targets y (M, k)) are classified right:
    argmax for one-hot targets; for scalar two-valued targets (±1, possibly centred) the side of
    ``midpoint`` (default: :func:`class_midpoint` of y, which needs both classes in y)."""
    if y.shape[1] == 1:
        if midpoint is None:
            midpoint = class_midpoint(y)
        return ((fx > midpoint) == (y > midpoint)).reshape(-1)
    return fx.argmax(1) == y.argmax(1)


def accuracy(fx: Tensor, y: Tensor, midpoint: Optional[float] = None) -> float:
    """Fraction of points classified right (:func:`correct`)."""
    return correct(fx, y, midpoint).double().mean().item()


def max_learning_rate(k_train_train: Tensor, out_dim: int = 1, fraction: float = 1.0) -> float:
    """η_max = 2Nk / λ_max(Θ), times ``fraction``: the largest η for which discrete gradient
    descent on the linearised model converges (|1 − ηλ/(Nk)| < 1 for every eigenvalue).

    ``k_train_train``: the per-output (N, N) kernel with ``out_dim`` = k, or a full (N, N, k, k) one.
    """
    kernel = torch.as_tensor(k_train_train)
    if kernel.dim() == 4:      # a full (N, N, k, k) kernel: its flattened size N·k is the Nk above
        kernel, out_dim = _flatten_outputs(kernel), 1
    kernel = _check_kernel(kernel, "k_train_train")
    if not isinstance(out_dim, int) or out_dim < 1:
        raise ValueError(f"out_dim must be an integer >= 1, got {out_dim!r}")
    if not fraction > 0:
        raise ValueError(f"fraction must be > 0, got {fraction!r}")
    top = torch.linalg.eigvalsh(kernel)[-1].item()
    if not top > 0:
        raise ValueError(f"k_train_train has no positive eigenvalue (largest {top:.3g}); η_max is undefined")
    return fraction * 2.0 * kernel.shape[0] * out_dim / top


class _Spectrum:
    """Eigendecomposition of a train kernel and the diagonal factors d(λ, t), g(λ, t) above."""

    def __init__(self, kernel: Tensor, learning_rate: float, out_dim: int, ridge: float, discrete: bool,
                 precision: Optional[torch.dtype] = None):
        learning_rate = check_learning_rate(learning_rate)
        n = kernel.shape[0]
        kernel = _add_ridge(kernel, ridge)
        eigenvalues, self.vectors = torch.linalg.eigh(kernel)
        top = eigenvalues[-1].clamp_min(0.0)
        # Eigenvalues within rounding of zero (or negative from rounding) are null directions:
        # no finite time moves them and the t = ∞ solution leaves them alone (pseudo-inverse). Rounding
        # in the dtype the kernel is held in: N·eps·λ_max. Entries computed in a coarser dtype (a
        # float32 kernel held in float64) each carry an error of about its eps relative (measured 1-2
        # eps32 on float32 CNTK entries), a matrix E with ‖E‖₂ ≤ ‖E‖_F ≈ eps·‖K‖_F: by Weyl's inequality
        # eigenvalues below that are indistinguishable from 0, and inverting them fits the noise.
        cutoff, rule = n * torch.finfo(kernel.dtype).eps * top, "N·eps·λ_max"
        if precision is not None and torch.finfo(precision).eps > torch.finfo(kernel.dtype).eps:
            entries = torch.finfo(precision).eps * torch.linalg.matrix_norm(kernel)
            if entries > cutoff:
                cutoff, rule = entries, f"eps·‖K‖_F of {str(precision).replace('torch.', '')}"
        self.null = eigenvalues <= cutoff
        self.eigenvalues = torch.where(self.null, torch.zeros_like(eigenvalues), eigenvalues)
        smallest = eigenvalues[0]
        if smallest < -cutoff:
            # not rounding: a kernel matrix is positive semi-definite, so this one is wrong (or not a kernel)
            warnings.warn(f"the train kernel is indefinite: its smallest eigenvalue is {smallest.item():.3g} against "
                          f"λ_max = {top.item():.3g}, beyond rounding ({rule} = {cutoff.item():.3g}); its "
                          f"{int((eigenvalues < -cutoff).sum())} negative directions are left unfitted, as null ones",
                          RuntimeWarning, stacklevel=3)
        # λ_max/λ_min over every eigenvalue, the null ones included (inf when λ_min ≤ 0): the number
        # that says how far the kernel is from invertible, not that of its well-resolved part.
        condition = (top / smallest).item() if smallest > 0 else math.inf
        rounding = self.null & (eigenvalues >= -cutoff)     # the indefinite part was warned about above
        if rounding.any() or (condition > ILL_CONDITIONED and smallest >= -cutoff):
            if rounding.any():
                consequence = (f"{int(rounding.sum())} of {n} eigenvalues are within rounding ({rule} = "
                               f"{cutoff.item():.3g}) of 0, the smallest {smallest.item():.3g}; those directions are "
                               "left unfitted at t = inf (a pseudo-inverse)")
            else:
                consequence = "predictions at large t amplify rounding errors in the kernel"
            warnings.warn(f"the train kernel is ill-conditioned (condition number λ_max/λ_min = {condition:.3g}, "
                          f"λ_max = {top.item():.3g}): {consequence}. A ridge whose σ² (ridge × the mean "
                          f"diagonal) is well above {cutoff.item():.3g} regularises it.",
                          RuntimeWarning, stacklevel=3)
        self.condition_number = condition
        self.rate = learning_rate / (n * out_dim)          # c = η/(Nk)
        self.discrete = discrete
        unstable = int((self.rate * self.eigenvalues >= 2).sum())
        if discrete and unstable:
            warnings.warn(f"learning rate {learning_rate:.6g} is at or above η_max = 2Nk/λ_max = "
                          f"{2.0 / (self.rate / learning_rate * top.item()):.6g}: the discrete dynamics diverge along "
                          f"{unstable} of {n} eigendirections, where predictions grow like |1 − ηλ/(Nk)|^t and "
                          "overflow to ±inf at large t", RuntimeWarning, stacklevel=3)

    def factors(self, times: Tensor) -> Tuple[Tensor, Tensor]:
        """d (T, N) and g (T, N) at the given times (float64, inf allowed)."""
        lam = self.eigenvalues.unsqueeze(0)                 # (1, N)
        t = times.unsqueeze(1)                              # (T, 1)
        finite = torch.isfinite(t)
        t_finite = torch.where(finite, t, torch.zeros_like(t))
        a = self.rate * lam                                 # cλ
        if self.discrete:
            # (1 − a)^t, written as exp(t·log1p(−a)) where that is accurate (a < 1).
            stable = a < 1
            log_base = torch.log1p(-torch.where(stable, a, torch.zeros_like(a)))
            decay = torch.where(stable, torch.exp(t_finite * log_base), (1 - a) ** t_finite)
            one_minus = torch.where(stable, -torch.expm1(t_finite * log_base), 1 - decay)
        else:
            decay = torch.exp(-a * t_finite)
            one_minus = -torch.expm1(-a * t_finite)
        gain = torch.where(lam > 0, one_minus / torch.where(lam > 0, lam, torch.ones_like(lam)),
                           self.rate * t_finite)           # (1 − d)/λ → c·t as λ → 0
        if not bool(finite.all()):
            if self.discrete and bool((a >= 2).any()):
                raise ValueError("t = inf with a learning rate at or above η_max: the discrete dynamics "
                                 "diverge and have no limit")
            inf_decay = self.null.to(decay.dtype).expand_as(decay)
            inf_gain = torch.where(self.null, torch.zeros_like(lam), 1.0 / torch.where(self.null, torch.ones_like(lam), lam))
            decay = torch.where(finite, decay, inf_decay)
            gain = torch.where(finite, gain, inf_gain.expand_as(gain))
        return decay, gain

    def response(self, k_test_train: Tensor, gain: Tensor) -> Tensor:
        """A_t = Θ(x*, X) V diag(g_t) Vᵀ for every t: (N*, N) and gain (T, N) → (T, N*, N)."""
        return (k_test_train @ self.vectors) @ (gain.unsqueeze(-1) * self.vectors.T)


class MSEPredictor:
    """Train/test outputs of gradient descent on the MSE loss at any times, from one eigendecomposition.

    Call ``predictor(t, fx_train_0, fx_test_0, k_test_train)`` → :class:`Prediction`;
    ``predictor.losses(...)`` gives the train (and test) loss at the same times.
    """

    def __init__(self, k_train_train, y_train, learning_rate: float = 1.0, ridge: float = 0.0,
                 discrete: bool = False, precision: Optional[torch.dtype] = None):
        k_train_train = torch.as_tensor(k_train_train)
        # A full (N, N, k, k) kernel of a finite net couples its outputs: run the dynamics on the
        # flattened (N·k, N·k) matrix. The rate c = η/(Nk) is unchanged by the flattening.
        self.full_outputs = k_train_train.dim() == 4
        if self.full_outputs:
            n, _, k, _ = k_train_train.shape
            targets, _ = _as_targets(y_train, n, "y_train")
            if targets.shape[1] != k:
                raise ValueError(f"y_train has {targets.shape[1]} outputs but the full kernel has k={k}")
            y_train = targets.reshape(n * k, 1)
            k_train_train = _flatten_outputs(k_train_train)
        kernel = _check_kernel(k_train_train, "k_train_train")
        self.y, self._vector_targets = _as_targets(y_train, kernel.shape[0], "y_train")
        learning_rate = check_learning_rate(learning_rate)
        self.spectrum = _Spectrum(kernel, learning_rate, self.y.shape[1], ridge, discrete, precision)
        self.learning_rate = learning_rate
        self.discrete = discrete
        self._outputs = k if self.full_outputs else None

    @property
    def eigenvalues(self) -> Tensor:
        """Eigenvalues of the (ridge-regularised) train kernel, ascending; rounding-level ones are 0."""
        return self.spectrum.eigenvalues

    def __call__(self, t: TimeLike, fx_train_0=0.0, fx_test_0=None, k_test_train=None) -> Prediction:
        """Predicted outputs at time(s) t.

        With a full (N, N, k, k) train kernel (a finite net's ``outputs="full"`` NTK) pass the test
        kernel as (N*, N, k, k) too; outputs are (…, N, k) either way.

        Args:
            t: a number or a 1-D tensor of times (steps when discrete; ``inf`` allowed).
            fx_train_0: the outputs at t = 0 on the train set, (N, k) like y_train; 0 means zero.
            fx_test_0: outputs at t = 0 on the test points (N*, k), or 0.0 for nets whose outputs start
                at zero; required with k_test_train (a finite net's f_0(x*) is O(1) and would
                otherwise be dropped silently).
            k_test_train: Θ(x*, X), shape (N*, N).
        Returns:
            :class:`Prediction`; with a tensor t each output gains a leading time axis (T, ...).
        """
        times, scalar = self._times(t)
        fx_train_0, fx_test_0, k_test_train = self._flat(fx_train_0, fx_test_0, k_test_train)
        projected = self._residual(fx_train_0)
        decay, gain = self.spectrum.factors(times)               # (T, N)
        vectors = self.spectrum.vectors
        train = self.y + _apply(vectors, decay, projected)                     # (T, N, k)
        test = None
        if k_test_train is not None:
            if fx_test_0 is None:
                raise ValueError("k_test_train was given without fx_test_0: pass the test outputs at t = 0 "
                                 "(N*, k), or 0.0 if the outputs start at zero")
            k_test = _check_kernel(k_test_train, "k_test_train", rows=None, cols=vectors.shape[0])
            test_0 = self._initial(fx_test_0, k_test.shape[0], "fx_test_0")
            test = test_0 - _apply(k_test @ vectors, gain, projected)              # (T, N*, k)
        elif fx_test_0 is not None:
            raise ValueError("fx_test_0 was given without k_test_train; pass both for test predictions")
        return Prediction(self._shape(train, scalar), None if test is None else self._shape(test, scalar))

    def losses(self, t: TimeLike, fx_train_0=0.0, fx_test_0=None, k_test_train=None,
               y_test=None) -> Tuple[Tensor, Optional[Tensor]]:
        """Train loss (and test loss when y_test is given) at time(s) t, shapes () or (T,).

        The train loss is read off the eigenbasis, L_t = 1/(2Nk) Σ_j d_j(t)² ‖(Vᵀ(f_0 − y))_j‖²,
        in O(T·N·k) without forming the outputs.
        """
        times, scalar = self._times(t)
        projected = self._residual(self._flat(fx_train_0, None, None)[0])
        decay, _ = self.spectrum.factors(times)
        train_loss = 0.5 * (decay ** 2 * (projected ** 2).sum(1)).sum(1) / self.y.numel()
        test_loss = None
        if y_test is not None:
            if k_test_train is None:
                raise ValueError("y_test needs k_test_train (and fx_test_0) to predict test outputs")
            test = self(times, fx_train_0, fx_test_0, k_test_train).test
            y_test, _ = _as_targets(y_test, test.shape[1], "y_test")
            test_loss = mse_loss(test, y_test)
        if scalar:
            return train_loss[0], None if test_loss is None else test_loss[0]
        return train_loss, test_loss

    # -- helpers
    def _times(self, t: TimeLike) -> Tuple[Tensor, bool]:
        return _as_times(t, self.discrete, self.y.device)

    def _initial(self, fx_0, n: int, name: str) -> Tensor:
        if fx_0 is None or (isinstance(fx_0, (int, float)) and fx_0 == 0):
            return torch.zeros(n, self.y.shape[1], dtype=torch.float64, device=self.y.device)
        values, _ = _as_targets(fx_0, n, name)
        if values.shape[1] != self.y.shape[1]:
            raise ValueError(f"{name} has {values.shape[1]} outputs but y_train has {self.y.shape[1]}")
        return values

    def _residual(self, fx_train_0) -> Tensor:
        """Vᵀ(f_0 − y): the initial residual in the eigenbasis, (N, k)."""
        residual = self._initial(fx_train_0, self.y.shape[0], "fx_train_0") - self.y
        return self.spectrum.vectors.T @ residual

    def _flat(self, fx_train_0, fx_test_0, k_test_train):
        """For full-output kernels: (N, k) outputs → (N·k, 1), (N*, N, k, k) → (N*·k, N·k)."""
        if not self.full_outputs:
            return fx_train_0, fx_test_0, k_test_train
        flat = lambda f: f if f is None or isinstance(f, (int, float)) else torch.as_tensor(f).reshape(-1, 1)
        k_test = None if k_test_train is None else _flatten_outputs(torch.as_tensor(k_test_train))
        return flat(fx_train_0), flat(fx_test_0), k_test

    def _shape(self, values: Tensor, scalar: bool) -> Tensor:
        if self.full_outputs:
            values = values.reshape(values.shape[0], -1, self._outputs)
        elif self._vector_targets:
            values = values.squeeze(-1)
        return values[0] if scalar else values


def mse_predictor(k_train_train, y_train, learning_rate: float = 1.0, ridge: float = 0.0,
                  discrete: bool = False, precision: Optional[torch.dtype] = None) -> MSEPredictor:
    """A predictor of gradient descent on the MSE loss with kernel ``k_train_train``.

    ``k_train_train`` is the per-output kernel (N, N) (outputs independent, as in the infinite-width
    limit), or a finite net's full (N, N, k, k) kernel, whose output blocks couple the outputs.

    ``ridge`` is added to the kernel's diagonal as a fraction of its mean diagonal entry;
    ``discrete`` selects gradient descent in whole steps instead of gradient flow.
    ``precision``: the dtype the kernel's entries were computed in, when coarser than the one it is
    held in (a float32 kernel passed as float64); eigenvalues below eps·‖K‖_F for that dtype's eps
    are then its rounding, left unfitted (a pseudo-inverse at t = ∞), as are those within N·eps·λ_max
    of 0 for the dtype it is held in. Default: the kernel's own dtype.
    See :class:`MSEPredictor` and the module docstring for the formulas.
    """
    return MSEPredictor(k_train_train, y_train, learning_rate, ridge, discrete, precision)


class EnsemblePredictor:
    """Mean and covariance over initialisations of infinitely wide nets trained on the MSE loss.

    f_0 is a draw of the NNGP K, so with A_t = Θ(x*, X) G_t (G_t of the module docstring),
    (Lee et al. 2019, eqs. 14-16)

        mean_t = A_t y,     cov_t = K(x*, x*) + A_t K A_tᵀ − A_t K(x*, X)ᵀ − K(x*, X) A_tᵀ.

    kind="ntk": every layer trained (Θ = the NTK); kind="nngp": only the readout trained (Θ = K),
    whose t = ∞ limit is the NNGP posterior K(x*,X) K⁻¹ y, K** − K(x*,X) K⁻¹ K(X,x*).

    ``ridge`` (as neural-tangents' ``diag_reg``, a fraction r of the train kernel's mean diagonal):
      kind="nngp": the NNGP train kernel becomes K + r·mean(diag K)·I in every term, the covariance
        of the initial train outputs included. It is then observation noise of that variance, and at
        t = ∞ mean and covariance are exactly :func:`gp_inference`'s with the same ridge; at finite t
        it is the readout's gradient flow on the regularised kernel.
      kind="ntk": the ridge is added to the NTK that drives training (Θ + r·mean(diag Θ)·I, which
        slows the fast directions and damps the slow ones as in ridge regression), while the initial
        outputs keep the unregularised NNGP K as their covariance: the ridge changes the dynamics,
        not the prior over networks.
    """

    def __init__(self, kernels_train_train: Kernels, kernels_test_train: Kernels, nngp_test_test,
                 y_train, learning_rate: float = 1.0, ridge: float = 0.0, discrete: bool = False):
        self._train = {name: _check_kernel(getattr(kernels_train_train, name), f"kernels_train_train.{name}")
                       for name in ("nngp", "ntk")}
        n = self._train["nngp"].shape[0]
        self._test = {name: _check_kernel(getattr(kernels_test_train, name), f"kernels_test_train.{name}",
                                          rows=None, cols=n) for name in ("nngp", "ntk")}
        self._test_test = _check_kernel(nngp_test_test, "nngp_test_test", rows=self._test["nngp"].shape[0])
        self.y, self._vector_targets = _as_targets(y_train, n, "y_train")
        self._settings = (check_learning_rate(learning_rate), self.y.shape[1], ridge, discrete)
        self._spectra: Dict[str, _Spectrum] = {}
        # the covariance of the initial train outputs, by kind (see the class docstring for the ridge)
        self._prior_train = {"ntk": self._train["nngp"], "nngp": _add_ridge(self._train["nngp"], ridge)}

    def __call__(self, t: TimeLike, kind: str = "ntk") -> Tuple[Tensor, Tensor]:
        """(mean (N*, k), cov (N*, N*)) at time(s) t; a tensor t adds a leading time axis."""
        if kind not in ("ntk", "nngp"):
            raise ValueError(f"kind must be 'ntk' or 'nngp', got {kind!r}")
        if kind not in self._spectra:
            self._spectra[kind] = _Spectrum(self._train[kind], *self._settings)
        spectrum = self._spectra[kind]
        times, scalar = _as_times(t, spectrum.discrete, self.y.device)
        _, gain = spectrum.factors(times)                                       # (T, N)
        response = spectrum.response(self._test[kind], gain)                    # A_t (T, N*, N)
        mean = response @ self.y
        k_cross = self._test["nngp"]
        cross = response @ k_cross.T                                            # A_t K(x*, X)ᵀ
        cov = (self._test_test + response @ self._prior_train[kind] @ response.transpose(1, 2)
               - cross - cross.transpose(1, 2))
        if self._vector_targets:
            mean = mean.squeeze(-1)
        return (mean[0], cov[0]) if scalar else (mean, cov)


def ensemble_predictor(kernels_train_train: Kernels, kernels_test_train: Kernels, nngp_test_test,
                       y_train, learning_rate: float = 1.0, ridge: float = 0.0,
                       discrete: bool = False) -> EnsemblePredictor:
    """Infinite-width ensemble predictions; see :class:`EnsemblePredictor`."""
    return EnsemblePredictor(kernels_train_train, kernels_test_train, nngp_test_test, y_train,
                             learning_rate, ridge, discrete)


def gp_inference(k_train_train, k_test_train, k_test_test, y_train, ridge: float = 0.0) -> Tuple[Tensor, Tensor]:
    """Gaussian-process posterior with kernel K (the NNGP for Bayesian nets, or the NTK):

        mean = K(x*, X) (K + σ²I)⁻¹ y,   cov = K(x*, x*) − K(x*, X) (K + σ²I)⁻¹ K(X, x*),

    σ² = ridge × mean diagonal of K (0: noiseless; a pseudo-inverse on rounding-level directions).
    Returns mean (N*, k) and cov (N*, N*).
    """
    train = _check_kernel(k_train_train, "k_train_train")
    test = _check_kernel(k_test_train, "k_test_train", rows=None, cols=train.shape[0])
    test_test = _check_kernel(k_test_test, "k_test_test", rows=test.shape[0])
    y, vector_targets = _as_targets(y_train, train.shape[0], "y_train")
    spectrum = _Spectrum(train, 1.0, y.shape[1], ridge, discrete=False)
    _, gain = spectrum.factors(torch.tensor([math.inf], dtype=torch.float64, device=y.device))
    response = spectrum.response(test, gain)[0]                             # K* (K + σ²I)⁻¹
    mean = response @ y
    cov = test_test - response @ test.T
    return (mean.squeeze(-1) if vector_targets else mean), cov


class Linearized(nn.Module):
    """f_lin(x; θ) = f(x; θ0) + J(x; θ0)(θ − θ0), trainable in θ like any module.

    The product J(θ − θ0) is one forward-mode ``torch.func.jvp`` of the wrapped module at θ0 with
    tangent θ − θ0: the Jacobian is never formed, and autograd differentiates through the tangent.
    θ starts at θ0 (so f_lin = f at initialisation). θ0, frozen parameters and the module's buffers
    are copied into buffers here, so ``.to()`` moves them and the wrapped module is never changed.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        # Kept outside this module's submodules, so optimisers and .to() see only our copies.
        object.__setattr__(self, "model", model)
        self.in_dim = getattr(model, "in_dim", None)
        self.trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        self.params = nn.ParameterDict({_key(name): nn.Parameter(p.detach().clone())
                                        for name, p in model.named_parameters() if p.requires_grad})
        self.fixed = [name for name, p in model.named_parameters() if not p.requires_grad]
        self.fixed += [name for name, _ in model.named_buffers()]
        tensors = dict(model.named_parameters(), **dict(model.named_buffers()))
        for name in self.trainable:
            self.register_buffer("initial__" + _key(name), tensors[name].detach().clone())
        for name in self.fixed:
            self.register_buffer("fixed__" + _key(name), tensors[name].detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        initial = {name: getattr(self, "initial__" + _key(name)) for name in self.trainable}
        tangent = {name: self.params[_key(name)] - initial[name] for name in self.trainable}
        fixed = {name: getattr(self, "fixed__" + _key(name)) for name in self.fixed}
        f0, df = jvp(lambda p: functional_call(self.model, {**p, **fixed}, (x,)), (initial,), (tangent,))
        return f0 + df


def _key(name: str) -> str:
    return name.replace(".", "__")


def linearize(model: nn.Module) -> Linearized:
    """The first-order Taylor expansion of ``model`` around its current parameters; see :class:`Linearized`."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"{type(model).__name__} has no trainable parameters to linearise around")
    return Linearized(model)


# ----------------------------------------------------------------------------- validation

def symmetry_tolerance(dtype: torch.dtype) -> float:
    """The largest max|K − Kᵀ| / max|K| a train kernel computed in ``dtype`` may have: √eps of that
    dtype (1.5e-8 in float64, 3.5e-4 in float32, 0.088 in bfloat16).

    A kernel is symmetric by definition, so what Kᵀ differs by is rounding: K(x, x') and K(x', x)
    summed in different orders, each off by at most m·eps relative to max|K| for sums of m terms
    (about √m·eps in practice; measured ≤ 1 ulp for the structured NTK of float32 nets). √eps leaves
    room for m up to 1/√eps ≈ 2900 terms in the worst case and far more in practice, while a matrix
    that is not a train×train kernel (a test×train block, a transposed one) differs by O(1)."""
    return math.sqrt(torch.finfo(dtype).eps)


def _check_kernel(kernel, name: str, rows: Optional[int] = -1, cols: Optional[int] = None) -> Tensor:
    """Float64 2-D finite tensor; rows=-1 asks for a square symmetric matrix, symmetric up to the
    rounding of the dtype it was computed in (:func:`symmetry_tolerance` of the dtype passed, float64
    for anything not floating point), and returns it symmetrised."""
    kernel = torch.as_tensor(kernel)
    if kernel.dim() != 2:
        raise ValueError(f"{name} must be a 2-D kernel matrix, got shape {tuple(kernel.shape)}")
    computed_in = kernel.dtype if kernel.is_floating_point() else torch.float64
    kernel = kernel.to(torch.float64)
    if not bool(torch.isfinite(kernel).all()):
        raise ValueError(f"{name} has NaN or infinite entries")
    if rows == -1:
        if kernel.shape[0] != kernel.shape[1] or kernel.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty square (N, N) matrix, got {tuple(kernel.shape)}")
        scale = kernel.abs().max().item()
        asymmetry = (kernel - kernel.T).abs().max().item()
        tolerance = symmetry_tolerance(computed_in)
        if asymmetry > tolerance * scale:
            raise ValueError(f"{name} is not symmetric: max |K - Kᵀ| = {asymmetry:.3g} is {asymmetry / scale:.3g} of "
                             f"max |K| = {scale:.3g}, above the {tolerance:.2g} that {computed_in} rounding allows "
                             "(√eps); pass a train×train kernel, in the dtype it was computed in")
        return (kernel + kernel.T) / 2
    if rows is not None and kernel.shape[0] != rows:
        raise ValueError(f"{name} has {kernel.shape[0]} rows, expected {rows}")
    if cols is not None and kernel.shape[1] != cols:
        raise ValueError(f"{name} has {kernel.shape[1]} columns but there are {cols} training points")
    return kernel


def _add_ridge(kernel: Tensor, ridge: float) -> Tensor:
    """K + ridge · mean(diag K) · I: the ridge is a fraction of the mean diagonal entry, as
    neural-tangents' ``diag_reg``, so it means the same at every kernel scale."""
    if not (isinstance(ridge, (int, float)) and math.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    if not ridge:
        return kernel
    return kernel + ridge * kernel.diagonal().mean() * torch.eye(kernel.shape[0], dtype=kernel.dtype,
                                                                 device=kernel.device)


def _apply(matrix: Tensor, factors: Tensor, projected: Tensor) -> Tensor:
    """matrix (M, N) @ (factors_t ⊙ projected) for every t → (T, M, k), as one matrix product.

    factors (T, N), projected (N, k). Stacking the T right-hand sides into (N, T·k) makes it one
    GEMM instead of T matrix-vector products that would each re-read the matrix.
    """
    times, n = factors.shape
    k = projected.shape[1]
    right = (factors.T.unsqueeze(-1) * projected.unsqueeze(1)).reshape(n, times * k)   # (N, T·k)
    return (matrix @ right).reshape(matrix.shape[0], times, k).transpose(0, 1)


def _flatten_outputs(kernel: Tensor) -> Tensor:
    """(N1, N2, k, k) → (N1·k, N2·k), rows and columns ordered (point, output)."""
    if kernel.dim() != 4 or kernel.shape[2] != kernel.shape[3]:
        raise ValueError(f"a full-output kernel must have shape (N1, N2, k, k), got {tuple(kernel.shape)}")
    n1, n2, k, _ = kernel.shape
    return kernel.permute(0, 2, 1, 3).reshape(n1 * k, n2 * k)


def _as_targets(values, n: int, name: str) -> Tuple[Tensor, bool]:
    """(n, k) float64 targets; also says whether they came as a vector (n,)."""
    values = torch.as_tensor(values).to(torch.float64)
    given = tuple(values.shape)          # reported as passed, before a vector becomes a column
    vector = values.dim() == 1
    if vector:
        values = values.unsqueeze(1)
    if values.dim() != 2 or values.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, k), got {given}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} has NaN or infinite entries")
    return values, vector


def _as_times(t: TimeLike, discrete: bool, device) -> Tuple[Tensor, bool]:
    """Times as a float64 vector (T,), and whether t was a scalar; integers only when discrete."""
    times = torch.as_tensor(t, dtype=torch.float64, device=device)
    scalar = times.dim() == 0
    if times.dim() > 1 or bool(torch.isnan(times).any()) or bool((times < 0).any()):
        raise ValueError(f"t must be a number or 1-D tensor of times >= 0 (inf allowed), got {t!r}")
    times = times.reshape(-1)
    if discrete:
        finite = times[torch.isfinite(times)]
        if bool((finite != finite.round()).any()):
            raise ValueError("discrete=True predicts whole gradient steps: t must hold integers (or inf)")
    return times, scalar
