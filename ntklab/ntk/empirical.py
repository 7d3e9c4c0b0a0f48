"""Empirical NTK and NNGP of a finite network.

    Θ̂(x, x')_{ij} = Σ_p ∂f_i(x)/∂θ_p · ∂f_j(x')/∂θ_p        (all trainable parameters θ)
    Σ̂(x, x')_{ij} = f_i(x) f_j(x')

Three ways to get Θ̂, equal up to rounding:

* ``structured`` (ntklab MLPs only; DESIGN.md): with a^{l-1}(x) the input of layer l and
  δ^l_i(x) = ∂f_i/∂z^l from one backward pass,

      Θ̂(x, x')_{ij} = Σ_l [c_l · a^{l-1}(x)·a^{l-1}(x') + c'_l] · δ^l_i(x)·δ^l_j(x'),

  c_l = weight_mult², c'_l = bias_mult²; the readout's δ is the identity. Cost: one forward and
  backward pass plus Gram matrices, O(N·P + N²·Σ n_l) — the Jacobian is never formed.
* ``jacobian``: ``torch.func.jacrev`` Jacobians J (N, k, P), contracted J1 J2ᵀ; any ``nn.Module``.
* ``ntvp``: NTK-vector products Θ̂ v = J1 (J2ᵀ v) by ``torch.func.vjp`` then ``jvp``, applied to
  the basis vectors of the outputs on x2; any ``nn.Module``, never stores J.

Output modes (k outputs): "full" gives (N1, N2, k, k); "mean" gives the trace over outputs divided
by k, (N1, N2) — the per-output kernel that the analytic NTK predicts, and what neural-tangents
returns with ``trace_axes=(-1,)``; "trace" gives the plain sum over outputs. For k = 1 "mean"
and "trace" agree.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from ntklab.inputs import check_inputs
from ntklab.nets.mlp import MLP

NTK_METHODS = ("auto", "structured", "jacobian", "ntvp")
NNGP_METHODS = ("auto", "outputs", "readout")
OUTPUT_MODES = ("mean", "trace", "full")
DEFAULT_MEMORY_BUDGET = 2 ** 30
"""Bytes of working memory (features, Jacobians or tangents) per chunk, excluding the result."""


def empirical_ntk(model: nn.Module, x1, x2=None, method: str = "auto", *, outputs: str = "mean",
                  memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Tensor:
    """Empirical NTK Θ̂ of ``model`` between x1 (N1, d) and x2 (N2, d); x2=None means x1.

    Args:
        model: maps (N, d) to (N, k) or (N,); inputs are cast to its parameters' dtype and device.
        method: "structured" (ntklab MLPs), "jacobian", "ntvp", or "auto" (structured where it applies,
            else jacobian).
        outputs: "mean" → (N1, N2), "trace" → (N1, N2), "full" → (N1, N2, k, k); see module docstring.
        memory_budget: bytes of working memory per chunk; inputs are split into row chunks to stay
            within it (the returned kernel itself is not counted).

    Returns:
        Θ̂ in the model's dtype, on the model's device.
    """
    if method not in NTK_METHODS:
        raise ValueError(f"method must be one of {', '.join(NTK_METHODS)}, got {method!r}")
    _check_outputs(outputs)
    if method == "auto":
        method = "structured" if isinstance(model, MLP) else "jacobian"
    if method == "structured" and not isinstance(model, MLP):
        raise ValueError(f"method='structured' needs an ntklab MLP (build_mlp), got {type(model).__name__}; "
                         "use method='jacobian' or 'ntvp' for other modules")
    params = _trainable(model)
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters; its NTK is zero")
    x1, x2 = _model_inputs(model, x1, x2)
    k = _output_dim(model, x1)
    itemsize = x1.element_size()
    n_params = sum(p.numel() for p in params.values())
    with torch.no_grad():
        if method == "structured":
            row_bytes = itemsize * sum(s.fan_in + k * s.fan_out for s in (l.scale for l in model.layers))
            features: Callable = lambda x: _structured_features(model, x)
            block: Callable = lambda f1, f2: _structured_block(model, f1, f2, k, outputs)
        elif method == "jacobian":
            row_bytes = 2 * itemsize * k * n_params  # the Jacobian and jacrev's work space
            features = lambda x: _jacobian(model, params, x)
            block = lambda j1, j2: _reduce_outputs(_contract_jacobians(j1, j2, k), outputs)
        else:
            row_bytes = 3 * itemsize * k * n_params  # tangents of the vmapped vjp and jvp
            features = lambda x: x
            block = lambda xa, xb: _reduce_outputs(_ntvp_block(model, params, xa, xb, k), outputs)
        chunk = max(1, memory_budget // (2 * row_bytes))
        shape = (k, k) if outputs == "full" else ()
        return _fill_blocks(features, block, x1, x2, chunk, shape)


def empirical_nngp(model: nn.Module, x1, x2=None, method: str = "auto", *,
                   outputs: str = "mean") -> Tensor:
    """Empirical NNGP of ``model`` between x1 (N1, d) and x2 (N2, d); x2=None means x1.

    Methods:
        "outputs": Σ̂(x, x')_{ij} = f_i(x) f_j(x'), the outputs' inner product (any module).
        "readout": for ntklab MLPs, the expectation of f_i(x) f_j(x') over the readout layer's
            initialisation given the net's last hidden features a^L,
            Σ̂(x, x') = (σ_w² / n_L) a^L(x)·a^L(x') + σ_b²  (times δ_ij).
            Unbiased for the NNGP like "outputs", but its error falls like width^(-1/2) instead of
            staying O(1), so Monte Carlo averages converge to the limit.
        "auto": "outputs".
    ``outputs`` as in :func:`empirical_ntk`.
    """
    if method not in NNGP_METHODS:
        raise ValueError(f"method must be one of {', '.join(NNGP_METHODS)}, got {method!r}")
    _check_outputs(outputs)
    x1, x2 = _model_inputs(model, x1, x2)
    with torch.no_grad():
        if method == "readout":
            if not isinstance(model, MLP):
                raise ValueError("method='readout' needs an ntklab MLP; use method='outputs'")
            readout = model.layers[-1].scale
            a1 = model.hidden(x1)[0][-1]
            a2 = a1 if x2 is None else model.hidden(x2)[0][-1]
            kernel = (readout.weight_variance / readout.fan_in) * (a1 @ a2.T) + readout.bias_variance
            return _identity_in_outputs(kernel, readout.fan_out, outputs)
        f1 = model(x1).reshape(x1.shape[0], -1)                                 # (N1, k)
        f2 = f1 if x2 is None else model(x2).reshape(x2.shape[0], -1)
        if outputs == "full":
            return f1[:, None, :, None] * f2[None, :, None, :]
        trace = f1 @ f2.T
        return trace / f1.shape[1] if outputs == "mean" else trace


# ----------------------------------------------------------------------------- helpers

def _check_outputs(outputs: str) -> None:
    if outputs not in OUTPUT_MODES:
        raise ValueError(f"outputs must be one of {', '.join(OUTPUT_MODES)}, got {outputs!r}")


def _trainable(model: nn.Module) -> Dict[str, Tensor]:
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _model_inputs(model: nn.Module, x1, x2) -> Tuple[Tensor, Optional[Tensor]]:
    reference = next(model.parameters(), None)
    dtype = None if reference is None else reference.dtype
    device = None if reference is None else reference.device
    return check_inputs(x1, x2, in_dim=getattr(model, "in_dim", None), dtype=dtype, device=device)


def _output_dim(model: nn.Module, x: Tensor) -> int:
    if isinstance(model, MLP):
        return model.spec.out_dim
    with torch.no_grad():
        out = model(x[:1])
    if out.dim() > 2 or out.shape[0] != 1:
        raise ValueError(f"model must map (N, d) to (N, k) or (N,); on (1, d) it gave {tuple(out.shape)}")
    return out.reshape(1, -1).shape[1]


def _reduce_outputs(full: Tensor, outputs: str) -> Tensor:
    """(N1, N2, k, k) → the requested output mode."""
    if outputs == "full":
        return full
    trace = torch.diagonal(full, dim1=-2, dim2=-1).sum(-1)
    return trace / full.shape[-1] if outputs == "mean" else trace


def _identity_in_outputs(kernel: Tensor, k: int, outputs: str) -> Tensor:
    """A kernel K (N1, N2) that is K·δ_ij across k outputs, in the requested output mode."""
    if outputs == "full":
        return kernel[:, :, None, None] * torch.eye(k, dtype=kernel.dtype, device=kernel.device)
    return kernel * k if outputs == "trace" else kernel


def _fill_blocks(features: Callable, block: Callable, x1: Tensor, x2: Optional[Tensor],
                 chunk: int, shape: Tuple[int, ...]) -> Tensor:
    """Assemble K[i, j] = block(features(x1 chunk i), features(x2 chunk j)) into one tensor.

    With x2 = None only blocks j >= i are computed and the rest mirrored (K(x', x) = K(x, x')ᵀ,
    output axes swapped too). x2's features are kept when they fit in one chunk and recomputed
    per row chunk otherwise, so working memory stays at about two chunks.
    """
    same = x2 is None
    x2 = x1 if same else x2
    n1, n2 = x1.shape[0], x2.shape[0]
    rows = [slice(s, min(s + chunk, n1)) for s in range(0, n1, chunk)]
    cols = [slice(s, min(s + chunk, n2)) for s in range(0, n2, chunk)]
    kept_cols = None
    out: Optional[Tensor] = None
    for i, r in enumerate(rows):
        f1 = features(x1[r])
        for j, c in enumerate(cols):
            if same and j < i:
                continue
            if same and j == i:
                f2 = f1
            elif kept_cols is not None:
                f2 = kept_cols
            else:
                f2 = features(x2[c])
                if len(cols) == 1:
                    kept_cols = f2
            value = block(f1, f2)
            if out is None:
                out = torch.empty((n1, n2) + shape, dtype=value.dtype, device=value.device)
            out[r, c] = value
            if same and j > i:
                out[c, r] = value.transpose(0, 1).transpose(-2, -1) if shape else value.T
    return out


def _structured_features(model: MLP, x: Tensor) -> List[Tuple[Tensor, Optional[Tensor]]]:
    """Per layer l: (a^{l-1} (N, n_{l-1}), δ^l (N, k, n_l)); δ is None for the readout (identity)."""
    inputs, preactivations = model.hidden(x)
    layers = model.layers
    deltas: List[Optional[Tensor]] = [None] * len(layers)
    delta: Optional[Tensor] = None
    for l in range(len(layers) - 2, -1, -1):
        upstream = layers[l + 1]
        if delta is None:       # δ^{L+1} = I_k: δ^L_i = mult · W^{L+1}_i ⊙ φ'(z^L)
            back = (upstream.weight * upstream.weight_mult).unsqueeze(0)            # (1, k, n_l)
        else:
            back = torch.matmul(delta, upstream.weight) * upstream.weight_mult       # (N, k, n_l)
        delta = back * model.activation.derivative(preactivations[l]).unsqueeze(1)  # (N, k, n_l)
        deltas[l] = delta
    return list(zip(inputs, deltas))


def _structured_block(model: MLP, feats1, feats2, k: int, outputs: str) -> Tensor:
    """Σ_l (c_l a1·a2 + c'_l) ⊙ (δ1·δ2) for one block, in the requested output mode."""
    total = None
    for layer, (a1, d1), (a2, d2) in zip(model.layers, feats1, feats2):
        scale = layer.scale
        gram = torch.mm(a1, a2.T).mul_(scale.weight_ntk_factor)                    # (b1, b2)
        if scale.bias_ntk_factor:
            gram.add_(scale.bias_ntk_factor)
        if d1 is None:           # readout: δ·δ' = δ_ij
            term = _identity_in_outputs(gram, k, outputs)
        elif outputs == "full":
            b1, b2 = d1.shape[0], d2.shape[0]
            delta_gram = torch.mm(d1.reshape(b1 * k, -1), d2.reshape(b2 * k, -1).T)
            term = gram[:, :, None, None] * delta_gram.reshape(b1, k, b2, k).permute(0, 2, 1, 3)
        else:
            delta_gram = torch.mm(d1.reshape(d1.shape[0], -1), d2.reshape(d2.shape[0], -1).T)
            term = gram.mul_(delta_gram)
            if outputs == "mean" and k > 1:
                term = term.div_(k)
        total = term if total is None else total.add_(term)
    return total


def _flat_outputs(model: nn.Module, params: Dict[str, Tensor], x: Tensor) -> Tensor:
    out = functional_call(model, params, (x,))
    return out.reshape(x.shape[0], -1)


def _jacobian(model: nn.Module, params: Dict[str, Tensor], x: Tensor) -> List[Tensor]:
    """J as one (N·k, P_p) block per parameter tensor: rows are (point, output).

    Per-sample Jacobians (``vmap`` over points of ``jacrev`` of one point), so the cost is linear
    in N; ``jacrev`` of the whole batch would run N·k backward passes over all N points.
    """
    def one_point(p: Dict[str, Tensor], point: Tensor) -> Tensor:
        return functional_call(model, p, (point.unsqueeze(0),)).reshape(-1)     # (k,)

    jac = vmap(jacrev(one_point), in_dims=(None, 0))(params, x)                   # name → (N, k, *shape)
    rows = x.shape[0] * jac[next(iter(jac))].shape[1]
    return [j.reshape(rows, -1) for j in jac.values()]       # views: no copy of J


def _contract_jacobians(j1: List[Tensor], j2: List[Tensor], k: int) -> Tensor:
    """Σ_p J1_p J2_pᵀ → (b1, b2, k, k)."""
    b1, b2 = j1[0].shape[0] // k, j2[0].shape[0] // k
    gram = torch.mm(j1[0], j2[0].T)
    for a, b in zip(j1[1:], j2[1:]):
        gram.addmm_(a, b.T)
    return gram.reshape(b1, k, b2, k).permute(0, 2, 1, 3)


def _ntvp_block(model: nn.Module, params: Dict[str, Tensor], x1: Tensor, x2: Tensor, k: int) -> Tensor:
    """(b1, b2, k, k) block from NTK-vector products with the b2·k output basis vectors on x2."""
    b1, b2 = x1.shape[0], x2.shape[0]
    _, vjp_fn = vjp(lambda p: _flat_outputs(model, p, x2), params)

    def ntk_vector_product(cotangent: Tensor) -> Tensor:
        (param_cotangent,) = vjp_fn(cotangent)                  # J2ᵀ v, shaped like params
        return jvp(lambda p: _flat_outputs(model, p, x1), (params,), (param_cotangent,))[1]

    basis = torch.eye(b2 * k, dtype=x1.dtype, device=x1.device).reshape(b2 * k, b2, k)
    products = vmap(ntk_vector_product)(basis)                    # (b2·k, b1, k)
    return products.reshape(b2, k, b1, k).permute(2, 0, 3, 1)
