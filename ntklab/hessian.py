"""The training loss's Hessian without forming it: Hessian-vector products by ``torch.func`` and
Lanczos for its top eigenvalues, with the Gauss–Newton / residual split that ties it to the NTK.

For the loss a run differentiates, L(θ) = s/(2Nk) Σ_i ‖g(x_i; θ) − y_i‖² over N points and k
outputs (g = f with s = 1, or the lazy-scaled g = α(f − f_0) with s = 1/α²),

    H = ∇²L = (s/(Nk)) J_gᵀ J_g  +  (s/(Nk)) Σ_{i,a} (g_a(x_i) − y_ia) ∇²g_a(x_i)
            =  G  (Gauss–Newton)  +  R  (residual term),           J_g = ∂g/∂θ  (Nk, P)

G = (s/(Nk)) J_gᵀJ_g has the nonzero eigenvalues of s·J_g J_gᵀ/(Nk) = Θ̂/(Nk), Θ̂ the (Nk, Nk)
empirical NTK of f (for g = α(f − f_0), s·J_g J_gᵀ = J_f J_fᵀ). So the sharpness λ_max(H) is
λ_max(Θ̂)/(Nk) up to R, which is O(n^(−1/2)) in operator norm at the initialisation of a wide net
(Liu, Zhu & Belkin 2020), and gradient descent at step η is stable along the top direction when
η·λ_max(H) < 2, the same edge as η < η_max = 2Nk/λ_max(Θ̂) (Cohen et al. 2021; Jacot, Gabriel &
Hongler 2019 for the two parts' spectra).

H is never formed: H v = ∇_θ ⟨∇_θ L(θ), v⟩, reverse mode over reverse mode (``torch.func.grad``
twice), at about three times the cost of a gradient (forward-over-reverse, ``jvp`` of ``grad``, gives
the same numbers but measured four times on a CPU at width 1024).
:func:`lanczos` turns such products into the top eigenvalues; :meth:`LossHessian.dense` forms H
explicitly, for tests on tiny nets only.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jvp, vjp

from ntklab.dynamics import mse_loss

LANCZOS_TOL = 1e-3
"""Default stopping rule of :func:`lanczos`: stop once every wanted Ritz value θ_i has an estimated
error at most this × |θ_1|. The estimate is min(r_i, r_i²/g_i), with r_i = ‖Ay − θ_i y‖ the Ritz
pair's residual (which Lanczos gives for free, β_j·|last entry of the Ritz vector|) and g_i the
distance from θ_i to the nearest other Ritz value: some eigenvalue lies within r_i of θ_i (a bound),
and within about r_i²/g_i when the gap to the rest of the spectrum is g_i (the Kato–Temple bound;
Parlett, "The Symmetric Eigenvalue Problem")."""

MIN_STEPS = 4
"""Fewest products before the stopping rule may end :func:`lanczos` from a random start (top + 3 for
``top`` eigenvalues): a Krylov space of one to three vectors can have small residuals for Ritz values
that are not yet the top ones."""


class LanczosResult(NamedTuple):
    """Top eigenvalues (descending, float64, (m,)), their Ritz vectors ((m, P), the operator's dtype),
    the residual bound of each (float64, (m,)), the number of matrix-vector products made, and the
    smallest Ritz value (an upper bound on the smallest eigenvalue, which Lanczos approaches from the
    other end at the same time: max(|lowest|, |values[0]|) estimates the operator's norm from below)."""

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    steps: int
    lowest: float


def lanczos(matvec: Callable[[Tensor], Tensor], dim: int, *, top: int = 1, max_steps: int = 30,
            tol: float = LANCZOS_TOL, seed: int = 0, start: Optional[Tensor] = None, gap: Optional[float] = None,
            min_steps: Optional[int] = None, dtype: torch.dtype = torch.float64, device=None) -> LanczosResult:
    """The ``top`` largest (algebraic) eigenvalues of a symmetric operator on R^dim by Lanczos with
    full reorthogonalisation.

    Args:
        matvec: v ↦ A v for v of shape (dim,), ``dtype``, on ``device``.
        top: how many of the largest eigenvalues to return (at most dim).
        max_steps: most products A v (Krylov dimension); capped at dim, where Lanczos is exact.
        tol: stop once every wanted Ritz value's estimated error is at most tol·|θ_1| (see
            :data:`LANCZOS_TOL`); 0 runs all ``max_steps``.
        seed: of the start vector, a standard normal draw from its own generator (never the global one),
            so a measurement is a deterministic function of the operator.
        start: the start vector instead (normalised here), e.g. a guess of the top eigenvectors.
        gap: an estimate of the distance from the wanted eigenvalues to the rest of the spectrum, used
            for the error estimate of the lowest wanted Ritz value while no other Ritz value lies
            below it (the first ``top`` steps); None: the residual alone until then.
        min_steps: fewest products before the stopping rule applies (default: top + 3 from a random
            start, ``top`` from a given one; see :data:`MIN_STEPS`).

    The basis is reorthogonalised against every earlier vector twice per step (Gram–Schmidt twice
    is enough: Giraud et al. 2005), so no ghost copies of converged eigenvalues appear; memory is
    (max_steps + 1)·dim numbers. The tridiagonal matrix is diagonalised in float64.
    """
    if not 1 <= top <= dim:
        raise ValueError(f"top must be in [1, {dim}], got {top}")
    steps = min(int(max_steps), dim)
    if steps < top:
        raise ValueError(f"max_steps={max_steps} is fewer than the {top} eigenvalues asked for")
    if start is None:
        start = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        min_steps = top + MIN_STEPS - 1 if min_steps is None else min_steps
    elif not (start.shape == (dim,) and bool(torch.isfinite(start).all()) and float(start.norm()) > 0):
        raise ValueError(f"start must be a finite nonzero vector of shape ({dim},)")
    min_steps = min(top if min_steps is None else max(min_steps, top), steps)
    basis = torch.empty(steps + 1, dim, dtype=dtype, device=device)       # (steps + 1, P)
    basis[0] = (start / start.norm()).to(device=device, dtype=dtype)
    alphas: List[float] = []
    betas: List[float] = []
    for j in range(steps):
        w = matvec(basis[j])
        done = basis[: j + 1]
        coefficients = done @ w                      # α_j = q_jᵀ A q_j, and β_{j−1}, 0, ... up to rounding
        alphas.append(float(coefficients[j]))
        w = w - done.T @ coefficients
        w = w - done.T @ (done @ w)                  # the second pass
        beta = float(w.norm())
        ritz_values, ritz = torch.linalg.eigh(_tridiagonal(alphas, betas))
        wanted = min(top, j + 1)
        residuals = beta * ritz[-1, -wanted:].abs()
        scale = float(ritz_values.abs().max().clamp_min(torch.finfo(torch.float64).tiny))
        invariant = beta <= 10 * torch.finfo(dtype).eps * scale      # the Krylov space is A-invariant
        if j + 1 == steps or invariant:
            break
        if j + 1 >= min_steps and tol > 0 and bool((_error_estimates(ritz_values, residuals, gap) <= tol * scale).all()):
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    m = len(alphas)
    keep = min(top, m)
    values = ritz_values[-keep:].flip(0)
    coordinates = ritz[:, -keep:].flip(1).to(dtype=dtype, device=basis.device)     # (m, keep)
    vectors = (basis[:m].T @ coordinates).T                                         # (keep, P)
    return LanczosResult(values, vectors, residuals.flip(0), m, float(ritz_values[0]))


def _error_estimates(ritz_values: Tensor, residuals: Tensor, gap: Optional[float]) -> Tensor:
    """min(r_i, r_i²/g_i) for the wanted (top) Ritz values, in ascending order like ``residuals``."""
    m, wanted = ritz_values.shape[0], residuals.shape[0]
    gaps = []
    for i in range(m - wanted, m):
        others = torch.cat([ritz_values[:i], ritz_values[i + 1:]])
        g = float((others - ritz_values[i]).abs().min()) if others.numel() else math.inf
        if i == 0:          # no Ritz value below the lowest wanted one yet: the distance to the rest is the hint
            g = min(g, gap) if gap is not None else 0.0
        gaps.append(g)
    gaps = torch.tensor(gaps, dtype=torch.float64)
    quadratic = torch.where(gaps > 0, residuals ** 2 / gaps.clamp_min(torch.finfo(torch.float64).tiny),
                            torch.full_like(residuals, math.inf))
    return torch.minimum(residuals, quadratic)


def _tridiagonal(alphas: List[float], betas: List[float]) -> Tensor:
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    return t


class LossHessian:
    """The Hessian of L(θ) = s/(2Nk) Σ‖g(x_i; θ) − y_i‖² at the model's current parameters, as an
    operator on flat vectors of its trainable parameters (in ``named_parameters`` order).

    Args:
        model: any ``nn.Module`` mapping x to (N, k); only parameters with requires_grad count.
        x: the inputs (N, ...); y: the targets (N, k) (cast to the model's dtype).
        alpha, f0: the lazy scale: g = α(f − f0) with s = 1/α², as the trainer's ``NetworkOutputs``;
            f0 (N, k) the outputs at θ_0 on x. None: g = f, s = 1.

    The parameters are read when the object is made: make a new one after the model has moved.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, *, alpha: Optional[float] = None,
                 f0: Optional[Tensor] = None):
        if (alpha is None) != (f0 is None):
            raise ValueError("alpha and f0 come together (g = alpha·(f − f0)), or neither")
        self.model = model
        self.params: Dict[str, Tensor] = {name: p.detach() for name, p in model.named_parameters()
                                          if p.requires_grad}
        if not self.params:
            raise ValueError(f"{type(model).__name__} has no trainable parameters")
        first = next(iter(self.params.values()))
        self.dtype, self.device = first.dtype, first.device
        self.x = x.to(device=self.device, dtype=self.dtype)
        self.y = y.to(device=self.device, dtype=self.dtype)
        if self.y.dim() == 1:
            self.y = self.y.unsqueeze(1)
        self.alpha, self.f0 = alpha, None if f0 is None else f0.to(device=self.device, dtype=self.dtype)
        self.scale = 1.0 if alpha is None else alpha ** -2           # s
        self.entries = self.y.numel()                                # N·k
        self._shapes = [(name, p.shape, p.numel()) for name, p in self.params.items()]
        self.dim = sum(n for _, _, n in self._shapes)                # P

    # -- the loss as a function of the parameters
    def outputs(self, params: Dict[str, Tensor]) -> Tensor:
        """g(x; θ), (N, k)."""
        f = functional_call(self.model, params, (self.x,))
        f = f.reshape(self.y.shape)
        return f if self.alpha is None else self.alpha * (f - self.f0)

    def loss(self, params: Dict[str, Tensor]) -> Tensor:
        return self.scale * mse_loss(self.outputs(params), self.y)

    # -- flat vectors
    def flatten(self, tree: Dict[str, Tensor]) -> Tensor:
        return torch.cat([tree[name].reshape(-1) for name, _, _ in self._shapes])

    def unflatten(self, vector: Tensor) -> Dict[str, Tensor]:
        pieces = torch.split(vector, [n for _, _, n in self._shapes])
        return {name: piece.view(shape) for (name, shape, _), piece in zip(self._shapes, pieces)}

    # -- products
    def hvp(self, vector: Tensor) -> Tensor:
        """H v, (P,) → (P,): the gradient of ⟨∇L, v⟩."""
        tangent = self.unflatten(vector)

        def along(params: Dict[str, Tensor]) -> Tensor:
            gradient = grad(self.loss)(params)
            return sum((gradient[name] * tangent[name]).sum() for name in gradient)
        return self.flatten(grad(along)(self.params))

    def output_jvp(self, vector: Tensor) -> Tensor:
        """J_g v, (P,) → (N, k)."""
        return jvp(self.outputs, (self.params,), (self.unflatten(vector),))[1]

    def gauss_newton_vp(self, vector: Tensor) -> Tensor:
        """G v = (s/(Nk)) J_gᵀ (J_g v), (P,) → (P,)."""
        _, pullback = vjp(self.outputs, self.params)
        (product,) = pullback(self.output_jvp(vector))
        return self.flatten(product) * (self.scale / self.entries)

    def gauss_newton_quadratic(self, vector: Tensor) -> float:
        """vᵀ G v = (s/(Nk)) ‖J_g v‖²."""
        return float(self.output_jvp(vector).double().pow(2).sum()) * self.scale / self.entries

    def residual_vp(self, vector: Tensor) -> Tensor:
        """R v = H v − G v, (P,) → (P,)."""
        return self.hvp(vector) - self.gauss_newton_vp(vector)

    # -- spectra
    def top_eigenvalues(self, top: int = 1, *, max_steps: int = 30, tol: float = LANCZOS_TOL,
                        seed: int = 0, start: Optional[Tensor] = None, gap: Optional[float] = None) -> LanczosResult:
        """The ``top`` largest eigenvalues of H by :func:`lanczos` on :meth:`hvp`."""
        return lanczos(self.hvp, self.dim, top=top, max_steps=max_steps, tol=tol, seed=seed, start=start, gap=gap,
                       dtype=self.dtype, device=self.device)

    def gauss_newton_start(self, cotangents: Tensor, noise: float = 0.0, seed: int = 0) -> Tensor:
        """A Lanczos start vector at the top of G: J_gᵀc for output cotangents c (N, k), e.g.
        c = Σ_i u_i/√λ_i over the NTK's top eigenvectors u_i, whose images J_gᵀu_i/√λ_i are G's top
        unit eigenvectors; plus ``noise`` × a seeded random unit vector (0: none). One
        vector-Jacobian product.

        Without noise, Lanczos explores from G's top: H J_gᵀc = G J_gᵀc + R J_gᵀc reaches the
        directions R couples to G's top in the next steps. An eigenvector of H that R adds and that
        is nearly orthogonal to that Krylov space is missed, and no residual shows it: Lanczos then
        converges to the next eigenvalue instead. For H's top this did not happen where it was
        checked (a catapult's spike, R holding 30% of λ_max); for lower eigenvalues, where R's
        interleave with G's, it did (see ``SpectrumTracker.START_NOISE``), and ``noise`` > 0 lets the
        Krylov space reach them."""
        _, pullback = vjp(self.outputs, self.params)
        (tree,) = pullback(cotangents.to(device=self.device, dtype=self.dtype).reshape(self.y.shape))
        direction = self.flatten(tree)
        norm = direction.norm()
        if not noise and norm > 0:
            return direction / norm
        random = torch.randn(self.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        random = (random / random.norm()).to(device=self.device, dtype=self.dtype)
        return random if not norm > 0 else direction / norm + noise * random

    def dense(self) -> Tensor:
        """H itself, (P, P), by ``torch.func.hessian``: P² numbers, for tiny nets and tests."""
        flat = self.flatten(self.params)
        return hessian(lambda vector: self.loss(self.unflatten(vector)))(flat)


def gauss_newton_share(operator: LossHessian, spectrum: LanczosResult) -> float:
    """The Gauss–Newton part's share of the top eigenvalue: with v the top Ritz vector (unit norm),
    λ_max(H) = vᵀGv + vᵀRv, and the share is vᵀGv / λ_max(H) (1 when R contributes nothing; above 1
    when R pulls the top eigenvalue down)."""
    vector = spectrum.vectors[0]
    return operator.gauss_newton_quadratic(vector / vector.norm()) / float(spectrum.values[0])
