"""Mehler's expansion: E[f(u) f(v)] of a Gaussian pair as a short sum whose terms factor over the inputs.

For u = √q1 z1, v = √q2 z2 with (z1, z2) standard normal of correlation ρ (Mehler 1866; O'Donnell,
*Analysis of Boolean Functions*, §11.2):

    E[f(u) f(v)] = Σ_k a_k(q1) a_k(q2) ρ^k,    a_k(q) = E[f(√q z) h_k(z)],   z ~ N(0, 1),

with h_k = He_k / √k! the orthonormal (probabilists') Hermite polynomials. The coefficients of one
input do not depend on the other, so an N1 × N2 block of pairs costs the coefficients of its N1 + N2
variances (one-dimensional integrals, :class:`HermiteCoefficients`) and then K + 1 multiply-adds per
pair (:func:`mehler_sum`), whatever the variances: every input may have its own.

Truncation after k = K leaves, by Cauchy–Schwarz,

    |Σ_{k>K} a_k(q1) a_k(q2) ρ^k| ≤ |ρ|^{K+1} √(A_K(q1) A_K(q2)),
    A_K(q) = Σ_{k>K} a_k(q)² = E[f(√q z)²] − Σ_{k≤K} a_k(q)²,

one number per input and K, so each chunk of pairs picks the least K that certifies it, and a pair no
K ≤ :data:`MAX_TERMS` certifies is left to the caller. With t_K = A_K / E[f²] the bound is relative
to √(E[f(u)²] E[f(v)²]), the Cauchy–Schwarz scale of the entry. The tails shrink fast for smooth f at
moderate variance (tanh at q = 2: t_K < 1e-12 from K = 171, its derivative from K = 236; sigmoid,
softplus, silu and gelu need 3-5× fewer terms; K grows about linearly with q) and slowly where
f(√q z) has a kink or a step of width 1/√q (relu: like K^(−3/2)), where only pairs of smaller |ρ|
are certified (|ρ|^{K+1} does the work).

The one-dimensional integrals use :func:`normal_rule`: composite Gauss–Legendre with a breakpoint at
0 (a kink of f there is integrated exactly), panels graded geometrically towards 0 down to a width
below 1/(4√q) (a step of width 1/√q is resolved at any variance), and unit panels out to |z| = 12.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

MAX_TERMS = 1024
"""The largest K the series is summed to."""

FIRST_TERMS = 64
"""Coefficients are computed up to this K first, then up to twice as many each time a chunk needs more."""

NORMAL_RULE_CUTOFF = 12
"""|z| ≤ 12: beyond it f(√q z) h_k(z) e^{−z²/2} is below e^{−36} ≈ 2e-16 of f, since |h_k(z)| e^{−z²/4} ≲ 1."""

RULE_NODES = ((128, 12), (256, 16), (MAX_TERMS, 24))
"""(largest K, Gauss–Legendre nodes per panel of :func:`normal_rule`): h_k oscillates faster as k grows,
and these node counts give every a_k, k ≤ K, to ~1e-15 of √E[f²] (against a 40-node, |z| ≤ 16 rule, for
tanh, gelu, softplus and tanh' at q = 0.5 … 1e4; 12 nodes leave 7e-11 at K = 256, 16 nodes 1e-8 at
K = 1024). Coefficients start on the coarsest rule and move to a finer one only when a chunk needs more terms."""

CHUNK_ENTRIES = 2 ** 16
"""Pairs summed together: arrays of 64k float64 numbers stay in cache (3.6× faster per term than 1M)."""


def grading_levels(q: Tensor) -> Tensor:
    """Panels halve towards 0 until narrower than 1/(4√q): ceil(log2 √q) + 2 levels, at least 2 (elementwise)."""
    return torch.ceil(torch.log2(torch.sqrt(q.clamp(min=1.0)))).add_(2.0).to(torch.int64)


def composite_legendre(breaks: np.ndarray, nodes: int) -> Tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of ``nodes``-point Gauss–Legendre on each panel [breaks[i], breaks[i+1]]."""
    t, w = np.polynomial.legendre.leggauss(nodes)
    left, right = breaks[:-1, None], breaks[1:, None]
    return (left + (right - left) * (t + 1.0) / 2.0).reshape(-1), ((right - left) / 2.0 * w).reshape(-1)


def rule_nodes(terms: int) -> int:
    """The Gauss–Legendre nodes per panel that resolve h_0 … h_terms (:data:`RULE_NODES`)."""
    return next(nodes for largest, nodes in RULE_NODES if terms <= largest)


@functools.lru_cache(maxsize=32)
def normal_rule(levels: int, nodes: int) -> Tuple[np.ndarray, np.ndarray]:
    """Nodes z (M,) and weights w (M,) with Σ w F(z) ≈ E F(z), z ~ N(0, 1).

    Breakpoints 0, ±2^−levels, …, ±1/2, ±1, ±2, …, ±12; ``nodes`` Gauss–Legendre nodes on each panel
    (M = 2 · nodes · (levels + 12)).
    """
    breaks = np.array([0.0] + [2.0 ** -j for j in range(levels, 0, -1)]
                      + [float(j) for j in range(1, NORMAL_RULE_CUTOFF + 1)])
    z, weights = composite_legendre(breaks, nodes)
    z = np.concatenate([-z[::-1], z])
    weights = np.concatenate([weights[::-1], weights]) * np.exp(-z * z / 2.0) / math.sqrt(2.0 * math.pi)
    return z, weights


@functools.lru_cache(maxsize=8)
def _weighted_hermite(levels: int, nodes: int) -> np.ndarray:
    """w_m h_k(z_m) at the nodes of ``normal_rule(levels, nodes)`` for every k the rule resolves,
    (K + 1, M) (6 MB at the finest rule and 3 levels), by the stable recurrence
    h_{k+1} = (z h_k − √k h_{k−1}) / √(k+1)."""
    z, w = normal_rule(levels, nodes)
    terms = max(largest for largest, n in RULE_NODES if n == nodes)
    table = np.empty((terms + 1, z.size))
    previous, current = np.zeros_like(z), np.ones_like(z)
    for k in range(terms + 1):
        table[k] = current * w
        previous, current = current, (z * current - math.sqrt(k) * previous) / math.sqrt(k + 1)
    return table


class HermiteCoefficients:
    """a_k(q) = E[f(√q z) h_k(z)] of one function f for n variances q, known up to a K that grows on demand.

    ``coefficients``: (K + 1, n); ``tails``: t_K = A_K(q) / E[f(√q z)²], (K + 1, n), non-increasing in K
    (0 where E[f²] = 0: f(√q z) = 0 almost surely, and so is every coefficient). Rounding leaves
    t_K ≳ 1e-16, far below any tolerance asked of the series.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], q: Tensor):
        self.fn, self.q = fn, q
        self.levels = int(grading_levels(q.max())) if q.numel() else 2
        self.nodes = 0
        self.coefficients = q.new_empty((0, q.shape[0]))
        self.extend(FIRST_TERMS)

    @property
    def terms(self) -> int:
        """K: a_0 … a_K are known."""
        return self.coefficients.shape[0] - 1

    def extend(self, terms: int) -> None:
        """Know the coefficients up to a_terms (at most :data:`MAX_TERMS`)."""
        terms = min(terms, MAX_TERMS)
        if terms <= self.terms:
            return
        nodes = rule_nodes(terms)
        if nodes != self.nodes:          # a finer rule: evaluate f on it and start the coefficients over
            z, w = (torch.as_tensor(a, dtype=self.q.dtype, device=self.q.device)
                    for a in normal_rule(self.levels, nodes))
            self.values = self.fn(torch.sqrt(self.q).unsqueeze(1) * z)            # f(√q z_m), (n, M)
            self.second_moment = (self.values * self.values * w).sum(dim=1)       # (n,)
            self.nodes, self.coefficients = nodes, self.coefficients[:0]
        table = torch.as_tensor(_weighted_hermite(self.levels, nodes)[self.terms + 1: terms + 1],
                                dtype=self.values.dtype, device=self.values.device)
        self.coefficients = torch.cat([self.coefficients, table @ self.values.T])    # (K + 1, n)
        captured = torch.cumsum(self.coefficients ** 2, dim=0)
        scale = torch.where(self.second_moment > 0, self.second_moment, torch.ones_like(self.second_moment))
        self.tails = ((self.second_moment - captured) / scale).clamp_(min=0.0)


def mehler_sum(rho: Tensor, a: Tensor, b: Tensor, terms: int, out: Tensor) -> None:
    """out ← Σ_{k ≤ terms} a_k b_k ρ^k by Horner's rule, in place; a[k], b[k] broadcast against ρ and out."""
    out.copy_(a[terms] * b[terms])
    for k in range(terms - 1, -1, -1):
        out.mul_(rho).addcmul_(a[k], b[k])


def least_terms(tails1: Tensor, tails2: Tensor, rho_max: float, tolerance: float) -> Optional[int]:
    """The least K with rho_max^{K+1} √(t1_K t2_K) ≤ tolerance (t1, t2: (K_known + 1,)), or None."""
    bound = torch.sqrt(tails1 * tails2)
    if rho_max < 1.0:
        k = torch.arange(1, bound.shape[0] + 1, dtype=bound.dtype, device=bound.device)
        bound = bound * torch.pow(rho_max, k)
    ok = torch.nonzero(bound <= tolerance)
    return int(ok[0]) if ok.numel() else None


def mehler_expectations(fns: Sequence[Callable[[Tensor], Tensor]], q1: Tensor, q2: Tensor, rho: Tensor,
                        outputs: Sequence[Tensor], tolerance: float) -> Tensor:
    """Write E[f(u) f(v)] for each f in ``fns`` into ``outputs`` by the series; return the pairs left uncertified.

    q1, q2: variances with rho's number of dimensions, broadcasting against it (e.g. (R, 1) and (1, C)
    for an (R, C) block); rho: correlations, shape S; outputs: tensors of shape S. Returns a bool
    tensor of shape S, True where the truncation bound exceeds ``tolerance`` · √(E[f(u)²] E[f(v)²])
    for some f at K = MAX_TERMS (those outputs hold the truncated sum; the caller replaces them).
    """
    shape = rho.shape
    # one coefficient set per distinct variance (inputs on a sphere have a single one)
    distinct, inverse = torch.unique(torch.cat([q1.reshape(-1), q2.reshape(-1)]), return_inverse=True)
    index1, index2 = inverse[: q1.numel()].reshape(q1.shape), inverse[q1.numel():].reshape(q2.shape)
    series = [_Side(HermiteCoefficients(fn, distinct), index1, index2) for fn in fns]
    left = torch.zeros(shape, dtype=torch.bool, device=rho.device)
    for chunk in _chunks(shape):
        rho_c = rho[chunk]
        rho_max = float(rho_c.abs().max()) if rho_c.numel() else 0.0
        for side, out in zip(series, outputs):
            a, b, t1, t2 = side.take(chunk)
            terms = least_terms(_largest(t1), _largest(t2), rho_max, tolerance)
            while terms is None and side.coefficients.terms < MAX_TERMS:
                side.extend()
                a, b, t1, t2 = side.take(chunk)
                terms = least_terms(_largest(t1), _largest(t2), rho_max, tolerance)
            if terms is None:
                terms = MAX_TERMS
                # per pair: |ρ|^{K+1} √(t1 t2) > tol  ⇔  |ρ| > g1 g2 with g = (tol / t)^{1/(2(K+1))}
                exponent = 1.0 / (2.0 * (terms + 1))
                g1 = (tolerance / t1[terms]).pow_(exponent)          # t = 0 gives inf: always certified
                g2 = (tolerance / t2[terms]).pow_(exponent)
                left[chunk] |= rho_c.abs() > g1 * g2
            mehler_sum(rho_c, a, b, terms, out[chunk])
    return left


def _largest(tails: Tensor) -> Tensor:
    """(K + 1, …) → (K + 1,): the largest tail over the chunk's inputs at each K."""
    return tails.reshape(tails.shape[0], -1).amax(dim=1)


class _Side:
    """One function's coefficients, gathered to the shapes of q1 and q2 (re-gathered when extended)."""

    def __init__(self, coefficients: HermiteCoefficients, index1: Tensor, index2: Tensor):
        self.coefficients, self.index1, self.index2 = coefficients, index1, index2
        self._gather()

    def _gather(self):
        c, t = self.coefficients.coefficients, self.coefficients.tails
        self.a, self.t1 = c[:, self.index1], t[:, self.index1]            # (K + 1, *q1.shape)
        self.b, self.t2 = c[:, self.index2], t[:, self.index2]

    def extend(self):
        self.coefficients.extend(2 * self.coefficients.terms)
        self._gather()

    def take(self, chunk):
        """The chunk's slices of a, b and of the tails (leading K axis kept)."""
        i1, i2 = _broadcast_index(chunk, self.index1.shape), _broadcast_index(chunk, self.index2.shape)
        return self.a[i1], self.b[i2], self.t1[i1], self.t2[i2]


def _broadcast_index(chunk: tuple, shape) -> tuple:
    """The index of a tensor of ``shape`` (broadcasting against the full one) for the full tensor's ``chunk``,
    behind a leading K axis: size-1 axes take 0 for an integer and everything for a slice."""
    index = [slice(None)]
    for position, item in enumerate(chunk):
        if shape[position] == 1:
            index.append(0 if isinstance(item, int) else slice(None))
        else:
            index.append(item)
    return tuple(index)


def _chunks(shape) -> Iterator[tuple]:
    """Indices into an array of ``shape`` covering it in pieces of about :data:`CHUNK_ENTRIES` entries:
    the trailing axes whole, one axis sliced, the leading ones taken one index at a time."""
    inner, axis = 1, len(shape)
    while axis > 0 and inner * shape[axis - 1] <= CHUNK_ENTRIES:
        axis -= 1
        inner *= shape[axis]
    if axis == 0:
        yield ()
        return
    step = max(1, CHUNK_ENTRIES // inner)
    for outer in itertools.product(*(range(n) for n in shape[: axis - 1])):
        for start in range(0, shape[axis - 1], step):
            yield outer + (slice(start, start + step),)
