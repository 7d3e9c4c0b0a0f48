"""The tracked quantities (docs/design.md, section 5), measured at the log steps of a training run.

At initialisation (θ = θ_0) :func:`reference_kernels` computes what every later step is compared
with: the analytic NNGP/NTK (float64) on train×train and test×train, the empirical NTK Θ̂_0 of the
network on the same sets, and the outputs f_0. From them a :class:`Tracker` precomputes, for all
log steps at once, the kernel-regression predictions (one eigendecomposition each):

    analytic:  f_t = f_0 − Θ(·,X) Θ^{-1} (I − (I − ηΘ/(Nk))^t) (f_0(X) − y)      (Θ the limit's NTK)
    linear:    the same with Θ̂_0 (the linearised network; the full (N,N,k,k) kernel when N·k is small)

and then, at step t, measures on the network

    param_drift      ‖θ_t − θ_0‖ / ‖θ_0‖, in total and per layer (weights and bias of layer l together)
    kernel_change    ‖Θ̂_t − Θ̂_0‖_F / ‖Θ̂_0‖_F on the probe set (the first ``probe_size`` train points)
    kernel_to_limit  ‖Θ̂_t − Θ‖_F / ‖Θ‖_F on the probe set
    pred_gap_*       RMS over test points and outputs of f_t(x*) − prediction_t(x*)

Empirical kernels are the structured per-output mean kernel (``outputs="mean"``), cheap at any width.

The opt-in spectral quantities (:class:`SpectrumTracker`, names in :mod:`ntklab.quantities`) are
measured on the spectrum set (the first ``track.spectrum_points`` train points, all by default) of
S points: the top eigenvalues of Θ̂_t there (the full (Sk, Sk) kernel when k > 1 and Sk ≤
``full_kernel_limit``, else the per-output mean kernel, whose eigenvalues the full one repeats k
times for a wide net), and those of the Hessian of the loss the run differentiates on those points
(:mod:`ntklab.hessian`), compared with the step size: η·λ_max(Θ̂)/(Sk) and η·λ_max(H) against 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from ntklab.data import Dataset
from ntklab.dynamics import accuracy, class_midpoint, max_learning_rate, mse_loss, mse_predictor
from ntklab.errors import ConfigError
from ntklab.hessian import LossHessian, gauss_newton_share, lanczos
from ntklab.kernels import analytic_kernels
from ntklab.nets import Net
from ntklab.ntk import empirical_ntk
from ntklab.quantities import SPECTRAL


@dataclass
class ReferenceKernels:
    """What the run is compared with, computed once at θ_0 (on the run's device): float64, except
    the empirical train and test kernels, kept in the run's dtype so that :mod:`ntklab.dynamics`
    checks their symmetry at the rounding of the dtype they were computed in (it computes in
    float64 from them).

    Shapes: N train, M test, P probe points, k outputs. ``None`` where nothing tracked needs it.
    """

    f0_train: Tensor                          # (N, k)
    f0_test: Tensor                           # (M, k)
    probe_ntk_init: Tensor                    # Θ̂_0 on the probe set, (P, P)
    test_row_init: Tensor                     # Θ̂_0(x*_0, x*_j) over the test points, (M,)
    test_row_analytic: Optional[Tensor] = None     # Θ(x*_0, x*_j), (M,)
    analytic_train: Optional[Tensor] = None   # Θ (N, N)
    analytic_test: Optional[Tensor] = None    # Θ(x*, X) (M, N)
    analytic_nngp_probe: Optional[Tensor] = None   # Σ (P, P)
    empirical_train: Optional[Tensor] = None  # Θ̂_0 (N, N) or full (N, N, k, k), the run's dtype
    empirical_test: Optional[Tensor] = None   # Θ̂_0(x*, X) (M, N) or (M, N, k, k), the run's dtype
    _eta_max: Dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def probe_size(self) -> int:
        return self.probe_ntk_init.shape[0]

    @property
    def analytic_probe(self) -> Optional[Tensor]:
        """Θ on the probe set: the leading block of the train kernel (the probe is the first P points)."""
        if self.analytic_train is None:
            return None
        return self.analytic_train[: self.probe_size, : self.probe_size]

    @property
    def linear_kernel(self) -> Optional[str]:
        """"full" or "mean": which empirical kernel the linearised prediction uses."""
        if self.empirical_train is None:
            return None
        return "full" if self.empirical_train.dim() == 4 else "mean"

    def eta_max(self, kind: str) -> float:
        """η_max = 2Nk/λ_max of the analytic ("eta_max") or empirical ("eta_max_empirical") NTK."""
        if kind not in self._eta_max:    # one eigenvalue problem per kernel, however often asked
            kernel = self.analytic_train if kind == "eta_max" else self.empirical_train
            try:
                self._eta_max[kind] = max_learning_rate(kernel, out_dim=self.f0_train.shape[1])
            except ValueError as err:    # NaN, inf or all zero: a kernel scale the dtype cannot hold
                which = "analytic" if kind == "eta_max" else "empirical"
                raise ConfigError("model.sigma_w", f"the {which} NTK of the train set gives no η_max ({err}); the "
                                                   "kernel scales like σ_w^(2·depth), so a σ_w this far from 1 takes "
                                                   "it out of the dtype's range") from None
        return self._eta_max[kind]


def reference_kernels(model: Net, data: Dataset, *, analytic: bool, empirical: bool, probe_size: int,
                      full_kernel_limit: int, outputs: Optional["NetworkOutputs"] = None) -> ReferenceKernels:
    """Kernels and outputs at θ_0 (see :class:`ReferenceKernels`).

    Args:
        model: the network at initialisation; data: the data set on the model's device.
        analytic: compute the analytic kernels (kernel_to_limit, pred_gap_analytic, η_max).
        empirical: compute Θ̂_0 on train×train and test×train (pred_gap_linear, empirical η_max).
        probe_size: P; the probe set is the first min(P, N) train points.
        full_kernel_limit: the linear prediction uses the full (N, N, k, k) kernel while N·k is at
            most this (it then equals the linearised network exactly), else the mean kernel.
        outputs: what is trained (:class:`NetworkOutputs`); f_0 are its outputs at θ_0 (0 with α).
    """
    outputs = outputs or NetworkOutputs(model, data)
    x_train, x_test = data.x_train, data.x_test
    probe = x_train[: min(probe_size, data.n_train)]
    with torch.no_grad():
        f0_train, f0_test = outputs(model, x_train, "train"), outputs(model, x_test, "test")
    if not (bool(torch.isfinite(f0_train).all()) and bool(torch.isfinite(f0_test).all())):
        # every quantity compares with f_0: nothing measured from here on would be a number
        raise ConfigError("model.sigma_w", f"the net's outputs at initialisation are not all finite in "
                                           f"{str(f0_train.dtype).removeprefix('torch.')}; they scale like "
                                           "σ_w^depth, so a σ_w this far from 1 takes them out of range")
    f0_train, f0_test = f0_train.double(), f0_test.double()
    reference = ReferenceKernels(f0_train, f0_test, empirical_ntk(model, probe, method="structured").double(),
                                 test_row(model, x_test))
    if analytic:
        x_train64, x_test64 = x_train.double(), x_test.double()
        kernels = analytic_kernels(model.arch, x_train64)
        reference.analytic_train = kernels.ntk
        reference.analytic_nngp_probe = kernels.nngp[: reference.probe_size, : reference.probe_size]
        reference.analytic_test = analytic_kernels(model.arch, x_test64, x_train64).ntk
        reference.test_row_analytic = analytic_kernels(model.arch, x_test64[:1], x_test64).ntk[0]
    if empirical:
        k = data.out_dim
        outputs = "full" if 1 < k and data.n_train * k <= full_kernel_limit else "mean"
        # not .double(): a float32 kernel's 1-ulp asymmetry is rounding, but in float64 it would not be
        reference.empirical_train = empirical_ntk(model, x_train, method="structured", outputs=outputs)
        reference.empirical_test = empirical_ntk(model, x_test, x_train, method="structured", outputs=outputs)
    return reference


class NetworkOutputs:
    """What is trained: f(x; θ), or with ``alpha`` the lazy-scaled f_α(x) = α (f(x; θ) − f(x; θ_0))
    of Chizat, Oyallon & Bach (2019), trained on L/α² = 1/(2Nkα²) Σ‖f_α − y‖².

    f_α starts at 0 and its gradient-descent dynamics are those of Θ̂ at step size η whatever α:
    Δf_α = α J Δθ = −η Θ̂ (f_α − y)/(Nk). Large α keeps θ within O(1/α) of θ_0 (lazy training);
    α → 0 leaves the kernel regime. Only the train and test points are ever evaluated, so
    f(x; θ_0) is kept for those rather than a copy of the initial network.

    ``chunk``: rows per forward pass when no gradient is taken (the measurements), as the step's
    passes are chunked (``optim.chunk_size``, :func:`ntklab.resources.chunk_rows`); None: all at once.
    """

    def __init__(self, model: Net, data: Dataset, alpha: Optional[float] = None, chunk: Optional[int] = None):
        self.alpha, self.chunk = alpha, chunk
        if alpha is not None:
            with torch.no_grad():
                self._f0 = {"train": self._forward(model, data.x_train), "test": self._forward(model, data.x_test)}

    def _forward(self, model: Net, x: Tensor) -> Tensor:
        if self.chunk is None or self.chunk >= x.shape[0] or torch.is_grad_enabled():
            return model(x)
        return torch.cat([model(part) for part in x.split(self.chunk)])

    def initial(self, split: str) -> Optional[Tensor]:
        """f(x; θ_0) on the ``split`` set (kept only with α; None without)."""
        return None if self.alpha is None else self._f0[split]

    @property
    def loss_scale(self) -> float:
        """The factor 1/α² on the loss whose gradient is followed (1 without α)."""
        return 1.0 if self.alpha is None else self.alpha ** -2

    def __call__(self, model: Net, x: Tensor, split: str, rows: Optional[Tensor] = None) -> Tensor:
        """Outputs on ``x`` = the ``split`` set ("train" or "test"), or its ``rows`` (a mini-batch's
        indices, or a slice: a chunk of the batch)."""
        f = self._forward(model, x)
        if self.alpha is None:
            return f
        f0 = self._f0[split] if rows is None else self._f0[split][rows]
        return self.alpha * (f - f0)


def test_row(model: Net, x_test: Tensor) -> Tensor:
    """Θ̂(x*_0, x*_j) for every test point j, (M,) float64: one row of the test kernel, which for the
    circle data (equally spaced angles) is the curve Θ̂(x_0, x(γ)) of Jacot et al. (2018), Fig. 1."""
    return empirical_ntk(model, x_test[:1], x_test, method="structured").double()[0]


def parameter_groups(model: Net) -> Dict[str, List[Tensor]]:
    """Trainable tensors by parametrized layer (dense or conv), in forward order:
    ``{"layer_1": [W, b], ..., "layer_{L+1}": [...]}`` (readout last)."""
    return {f"layer_{i}": [p for p in (layer.weight, layer.bias) if p is not None and p.requires_grad]
            for i, layer in enumerate(model.parametrized_modules(), start=1)}


class Tracker:
    """Measures the tracked quantities at the log steps; see the module docstring.

    Args:
        model: the network at θ_0 (the tracker keeps a copy of θ_0).
        data: the data set on the model's device.
        outputs: what is trained (:class:`NetworkOutputs`, default f itself).
        reference: from :func:`reference_kernels` on the same model and data.
        learning_rate: η of the gradient steps (the predictions assume full-batch GD at this η).
        log_steps: the steps at which :meth:`measure` will be called.
        quantities: names from ``ntklab.quantities.OPTIONAL`` to measure.
        spectrum: the :class:`SpectrumTracker` of the spectral quantities among them (None: none).
    """

    def __init__(self, model: Net, data: Dataset, reference: ReferenceKernels, learning_rate: float,
                 log_steps: Sequence[int], quantities: Sequence[str], outputs: Optional[NetworkOutputs] = None,
                 spectrum: Optional["SpectrumTracker"] = None):
        self.data = data
        self.spectrum = spectrum
        self.outputs = outputs or NetworkOutputs(model, data)
        self.reference = reference
        self.quantities = tuple(quantities)
        self.theta0 = {name: [p.detach().clone() for p in params]
                       for name, params in parameter_groups(model).items()}
        self.theta0_norm = math.sqrt(sum(_squared_norm(ps) for ps in self.theta0.values()))
        self.y_train, self.y_test = data.y_train.double(), data.y_test.double()
        # scalar ±1 targets: one threshold for both splits, from targets that hold both classes (the
        # test set's alone where the train targets carry label noise)
        self.midpoint = class_midpoint(self.y_train, self.y_test) if data.labels_train is not None else None
        self.probe = data.x_train[: reference.probe_size]
        self._row = {int(s): i for i, s in enumerate(log_steps)}
        times = torch.tensor([int(s) for s in log_steps], dtype=torch.float64)
        self.predictions = {}
        for kind, train, test in (("analytic", reference.analytic_train, reference.analytic_test),
                                  ("linear", reference.empirical_train, reference.empirical_test)):
            if train is None:
                continue
            predict = mse_predictor(train, self.y_train, learning_rate=learning_rate, discrete=True)
            outputs = predict(times, reference.f0_train, reference.f0_test, test)
            self.predictions[kind] = {
                "train": outputs.train, "test": outputs.test,   # (T, N, k), (T, M, k)
                "train_loss": mse_loss(outputs.train, self.y_train),
                "test_loss": mse_loss(outputs.test, self.y_test)}

    def measure(self, model: Net, step: int) -> Dict[str, object]:
        """The metrics record of one log step (plain Python numbers, JSON-ready)."""
        row = self._row[int(step)]
        with torch.no_grad():
            f_train = self.outputs(model, self.data.x_train, "train").double()
            f_test = self.outputs(model, self.data.x_test, "test").double()
        record: Dict[str, object] = {"step": int(step),
                                     "train_loss": mse_loss(f_train, self.y_train).item(),
                                     "test_loss": mse_loss(f_test, self.y_test).item()}
        if self.data.labels_train is not None:
            record["train_accuracy"] = accuracy(f_train, self.y_train, self.midpoint)
            record["test_accuracy"] = accuracy(f_test, self.y_test, self.midpoint)
        for kind, predicted in self.predictions.items():
            record[f"pred_train_loss_{kind}"] = predicted["train_loss"][row].item()
            record[f"pred_test_loss_{kind}"] = predicted["test_loss"][row].item()
        if "param_drift" in self.quantities:
            record.update(self._param_drift(model))
        if "kernel_change" in self.quantities or "kernel_to_limit" in self.quantities:
            probe_ntk = self.probe_ntk(model)
            if "kernel_change" in self.quantities:
                record["kernel_change"] = _relative_distance(probe_ntk, self.reference.probe_ntk_init)
            if "kernel_to_limit" in self.quantities and self.reference.analytic_probe is not None:
                record["kernel_to_limit"] = _relative_distance(probe_ntk, self.reference.analytic_probe)
        for kind in ("analytic", "linear"):
            if f"pred_gap_{kind}" in self.quantities and kind in self.predictions:
                gap = f_test - self.predictions[kind]["test"][row]
                record[f"pred_gap_{kind}"] = gap.pow(2).mean().sqrt().item()
        if self.spectrum is not None:
            record.update(self.spectrum.measure(model))
        return record

    def test_outputs(self, model: Net, step: int) -> Dict[str, Optional[Tensor]]:
        """The network's test outputs now and the predictions for this step, each (M, k) float64."""
        with torch.no_grad():
            outputs = {"network": self.outputs(model, self.data.x_test, "test").double()}
        row = self._row.get(int(step))
        for kind in ("analytic", "linear"):
            predicted = self.predictions.get(kind)
            outputs[kind] = None if predicted is None or row is None else predicted["test"][row]
        return outputs

    def probe_ntk(self, model: Net) -> Tensor:
        """Θ̂_t on the probe set, float64."""
        return empirical_ntk(model, self.probe, method="structured").double()

    def _param_drift(self, model: Net) -> Dict[str, object]:
        per_layer, total = {}, 0.0
        with torch.no_grad():
            for name, params in parameter_groups(model).items():
                moved = _squared_norm([p - p0 for p, p0 in zip(params, self.theta0[name])])
                total += moved
                per_layer[name] = math.sqrt(moved / max(_squared_norm(self.theta0[name]), 1e-300))
        return {"param_drift": math.sqrt(total) / self.theta0_norm, "param_drift_layers": per_layer}


class SpectrumTracker:
    """The spectral quantities (``ntk_top_eigenvalues``, ``sharpness``, ``gauss_newton_share``) on the
    first ``points`` train points (all when None); see the module docstring and :mod:`ntklab.quantities`.

    Each measurement is a deterministic function of θ_t (the Lanczos start is computed from θ_t and
    a fixed seed), so resumed runs record the same numbers. Per log step it costs Θ̂_t on the
    spectrum set and its eigendecomposition; with ``sharpness``, one vector-Jacobian product for the
    Lanczos start (J_gᵀ of Θ̂'s top eigenvectors: G's top eigenvectors, which H's top is close to
    wherever R is small) and then Hessian-vector products until the estimated relative error of each
    top eigenvalue is below ``lanczos_tol`` (at most ``lanczos_steps``; one or two for a wide net at
    init); with ``gauss_newton_share``, one Jacobian-vector product more. README "Speed" has the
    measured costs.
    """

    SEED = 0        # of the random part of the Lanczos start vector
    START_NOISE = 0.3
    """With ``top`` > 1: the Lanczos start is G's top eigenvectors plus this × a seeded random unit
    vector. The lower wanted eigenvalues lie where R's eigenvalues interleave with G's, and from G's
    top alone Lanczos can converge to a lower eigenvalue and miss one R adds (the default task at
    width 256, top 3, θ_0: 0.0410 reported as the second against 0.0421, 3.3% of λ_max off, within
    the stopping rule's 1%); the random part reaches it (0.02% off, 14 products instead of 8).
    With ``top`` = 1 the start stays G's top eigenvector, for the one-product measurement near
    init: through a catapult's spike, where R holds 30% of λ_max, it agrees with Lanczos run to
    convergence from a random start to 1.4% (tests/test_hessian.py)."""

    def __init__(self, data: Dataset, outputs: NetworkOutputs, learning_rate: float, quantities: Sequence[str], *,
                 points: Optional[int] = None, top: int = 1, lanczos_steps: int = 20, lanczos_tol: float = 1e-2,
                 full_kernel_limit: int = 2048):
        unknown = set(quantities) - set(SPECTRAL)
        if unknown:
            raise ValueError(f"not spectral quantities: {', '.join(sorted(unknown))}")
        n = data.n_train if points is None else min(int(points), data.n_train)
        self.quantities = tuple(quantities)
        self.x, self.y = data.x_train[:n], data.y_train[:n]
        self.entries = n * data.out_dim                            # S·k
        self.kernel = "full" if data.out_dim > 1 and self.entries <= full_kernel_limit else "mean"
        eigenvalues = self.entries if self.kernel == "full" else n
        if "ntk_top_eigenvalues" in quantities and top > eigenvalues:
            shape = f"{n} points × {data.out_dim} outputs" if self.kernel == "full" else f"{n} points"
            raise ConfigError("track.top_eigenvalues", f"is {top}, but Θ̂ on the spectrum set ({shape}) has "
                                                       f"{eigenvalues} eigenvalues: ask for at most that many, or "
                                                       f"raise track.spectrum_points")
        self.alpha = outputs.alpha
        self.f0 = None if outputs.alpha is None else outputs.initial("train")[:n]
        self.learning_rate, self.top, self.lanczos_steps, self.lanczos_tol = learning_rate, top, lanczos_steps, lanczos_tol

    @property
    def points(self) -> int:
        return self.x.shape[0]

    def ntk_spectrum(self, model: Net):
        """Θ̂_t on the spectrum set ((Sk, Sk) rows (point, output), or the (S, S) mean kernel), its top
        ``top`` + 1 eigenvalues (descending) and their eigenvectors (columns), float64."""
        kernel = empirical_ntk(model, self.x, method="auto", outputs=self.kernel).double()
        if self.kernel == "full":
            n, _, k, _ = kernel.shape
            kernel = kernel.permute(0, 2, 1, 3).reshape(n * k, n * k)
        values, vectors = torch.linalg.eigh(kernel)
        top = min(self.top + 1, values.shape[0])
        return kernel, values[-top:].flip(0), vectors[:, -top:].flip(1)

    def measure(self, model: Net) -> Dict[str, object]:
        record: Dict[str, object] = {}
        kernel, below, eigenvectors = self.ntk_spectrum(model)     # one more than wanted: the gap below
        values, vectors = below[: self.top], eigenvectors[:, : self.top]
        if "ntk_top_eigenvalues" in self.quantities:
            record["ntk_top_eigenvalues"] = values.tolist()
            record["ntk_max_eigenvalue"] = values[0].item()
            record["eta_ntk"] = self.learning_rate * values[0].item() / self.entries
        if "sharpness" not in self.quantities and "gauss_newton_share" not in self.quantities:
            return record
        hessian = LossHessian(model, self.x, self.y, alpha=self.alpha, f0=self.f0)
        k = hessian.y.shape[1]
        # G = (s/(Sk)) J_gᵀJ_g has Θ̂/(Sk)'s spectrum exactly when Θ̂ is the full kernel (or k = 1);
        # a k > 1 mean kernel's eigenvalues are G's k-fold, split apart at finite width
        exact = self.kernel == "full" or k == 1
        # start at G's top: J_gᵀ Σ_i u_i/√λ_i is the sum of its top unit eigenvectors
        cotangent = vectors @ values.clamp_min(torch.finfo(torch.float64).tiny).rsqrt()    # (Sk,) or (S,)
        if not exact:
            cotangent = cotangent.unsqueeze(1).expand(-1, k) / k ** 0.5
        start = hessian.gauss_newton_start(cotangent, noise=self.START_NOISE if self.top > 1 else 0.0, seed=self.SEED)
        # G's gap below its top estimates H's, for the stopping rule's first steps
        gap = (values[-1] - below[-1]).item() / self.entries if exact and below.shape[0] > values.shape[0] else None
        spectrum = lanczos(hessian.hvp, hessian.dim, top=min(self.top, hessian.dim), max_steps=self.lanczos_steps,
                           tol=self.lanczos_tol, start=start, gap=gap, dtype=hessian.dtype, device=hessian.device)
        record["sharpness"] = spectrum.values[0].item()
        record["hessian_top_eigenvalues"] = spectrum.values.tolist()
        record["eta_sharpness"] = self.learning_rate * record["sharpness"]
        record["lanczos_steps"] = spectrum.steps
        if "gauss_newton_share" in self.quantities:
            if spectrum.steps == 1 and exact:
                # the Ritz vector is the start, G's top eigenvector: vᵀGv = λ_max(Θ̂)/(Sk), no product needed
                record["gauss_newton_share"] = values[0].item() / self.entries / record["sharpness"]
            else:
                record["gauss_newton_share"] = gauss_newton_share(hessian, spectrum)
        return record


def _squared_norm(tensors: Sequence[Tensor]) -> float:
    return sum(t.double().pow(2).sum().item() for t in tensors)


def _relative_distance(a: Tensor, b: Tensor) -> float:
    """‖a − b‖_F / ‖b‖_F."""
    return ((a - b).norm() / b.norm()).item()
