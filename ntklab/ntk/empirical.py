"""Empirical NTK and NNGP of a finite network.

    Θ̂(x, x')_{ij} = Σ_p ∂f_i(x)/∂θ_p · ∂f_j(x')/∂θ_p        (all trainable parameters θ)
    Σ̂(x, x')_{ij} = f_i(x) f_j(x')

Three ways to get Θ̂, equal up to rounding:

* ``structured`` (ntklab nets: :func:`ntklab.build_net`, :func:`ntklab.build_mlp`; docs/design.md):
  each parametrized layer's share from its input a(x) and δ(x) = ∂f/∂(its output), by the layer's own
  Gram rule (:meth:`ntklab.layers.Layer.ntk_gram`); a dense layer's is

      [c · a(x)·a(x') + c'] · δ_i(x)·δ_j(x'),      c = weight_mult², c' = bias_mult²,

  a conv layer's sums the same over pairs of positions, or contracts its per-input weight gradients
  Σ_s δ_s ⊗ patch_s when that is cheaper (its :meth:`~ntklab.layers.Layer.ntk_features`, which are all
  that is kept of an input: k·C_out·C_in·k_h·k_w numbers instead of δ's k·C_out·H·W). δ for every layer
  and output comes from one batched backward pass (autograd from the k outputs to the recorded layer
  outputs); the Jacobian is never formed. Cost: a forward and k backward passes plus Gram matrices, O(N·P + N²·Σ n_l) for
  an MLP. A net holding a layer without a Gram rule falls back to ``jacobian`` under ``auto``.
* ``jacobian``: ``torch.func.jacrev`` Jacobians J (N, k, P), contracted J1 J2ᵀ; any ``nn.Module``.
* ``ntvp``: NTK-vector products Θ̂ v = J1 (J2ᵀ v) by ``torch.func.vjp`` then ``jvp``, applied to
  the basis vectors of the outputs on x2; any ``nn.Module``, never stores J.

Nets whose output for one input depends on the rest of the batch (a ``batch_norm`` layer, or a torch
BatchNorm module in training mode) are functions of the whole batch, F(X) (N, k); their NTK is defined
on one batch, Θ̂(X)_{(n,i),(m,j)} = Σ_p ∂F_{n,i}(X)/∂θ_p ∂F_{m,j}(X)/∂θ_p (see
:mod:`ntklab.layers.batch_norm`). For them x2 must be None, the batch is never split into chunks,
``jacobian`` differentiates F(X) as a whole (N·k backward passes over the batch) and ``auto`` picks it.

Output modes (k outputs): "full" gives (N1, N2, k, k); "mean" gives the trace over outputs divided
by k, (N1, N2) — the per-output kernel that the analytic NTK predicts, and what neural-tangents
returns with ``trace_axes=(-1,)``; "trace" gives the plain sum over outputs. For k = 1 "mean"
and "trace" agree.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from ntklab import resources
from ntklab.tensor_checks import check_inputs
from ntklab.layers.dense import Dense
from ntklab.layers.net import LayerModule, Net

NTK_METHODS = ("auto", "structured", "jacobian", "ntvp")
NNGP_METHODS = ("auto", "outputs", "readout")
OUTPUT_MODES = ("mean", "trace", "full")
DEFAULT_MEMORY_BUDGET = 2 ** 30
"""Bytes of working memory (features, Jacobians or tangents) per chunk, excluding the result."""
KEPT_FRACTION = 4
"""The column set's features (x2's, or x1's where the kernel is computed transposed) are kept across row
chunks (computed once, not once per row chunk) when they fit in the memory budget or in 1/KEPT_FRACTION
of the memory the device has available; else as many chunks as fit there are kept at a time."""
GRAM_ROWS = 256
"""On the CPU, structured features whose pieces (:func:`_structured_features`) hold at least this many
inputs are used as they come, a piece per chunk, instead of being copied into larger chunks: a Gram
block of 256 × 256 inputs still does 128 multiply-adds per number it reads, enough for the matmul to run
at full speed, and the pieces' memory is not held twice."""


def empirical_ntk(model: nn.Module, x1, x2=None, method: str = "auto", *, outputs: str = "mean",
                  memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Tensor:
    """Empirical NTK Θ̂ of ``model`` between x1 (N1, d) and x2 (N2, d); x2=None means x1.

    Args:
        model: maps (N, d) to (N, k) or (N,); inputs are cast to its parameters' dtype and device.
        method: "structured" (ntklab nets whose layers all have a Gram rule), "jacobian", "ntvp", or
            "auto" (structured where it applies, else jacobian).
        outputs: "mean" → (N1, N2), "trace" → (N1, N2), "full" → (N1, N2, k, k); see module docstring.
        memory_budget: bytes of working memory per chunk; inputs are split into row chunks to stay
            within it (the returned kernel itself is not counted). x2's chunk features are computed
            once and kept when all of them fit in this budget or in 1/:data:`KEPT_FRACTION` of the
            memory the device has available (:func:`ntklab.resources.available_bytes`); else as
            many chunks as fit are kept at a time and x1's recomputed for each such group (or
            Θ̂(x2, x1) computed so and transposed, where that computes fewer features).

    Returns:
        Θ̂ in the model's dtype, on the model's device.
    """
    if method not in NTK_METHODS:
        raise ValueError(f"method must be one of {', '.join(NTK_METHODS)}, got {method!r}")
    _check_outputs(outputs)
    if _couples_batch(model):
        return _batch_ntk(model, x1, x2, method, outputs, memory_budget)
    if method == "auto":
        method = "structured" if _has_structured_rule(model) else "jacobian"
    if method == "structured" and not isinstance(model, Net):
        raise ValueError(f"method='structured' needs an ntklab net (build_net, build_mlp), got "
                         f"{type(model).__name__}; use method='jacobian' or 'ntvp' for other modules")
    if method == "structured" and not _has_structured_rule(model):
        missing = [leaf.describe() for leaf in model.root.leaves() if not leaf.layer.has_structured_ntk]
        raise ValueError(f"method='structured': {', '.join(missing)} has no structured NTK rule; use method='jacobian'")
    params = _trainable(model)
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters; its NTK is zero")
    x1, x2 = _model_inputs(model, x1, x2)
    k = _output_dim(model, x1)
    itemsize = x1.element_size()
    n_params = sum(p.numel() for p in params.values())
    with torch.no_grad():
        if method == "structured":
            full = outputs == "full"
            modules = model.parametrized_modules()
            # computing the features holds every layer's input and δ for the inputs at hand; what is
            # kept per input (ntk_features) can be far smaller (a conv's weight gradient), so blocks
            # are sized by the kept features and their computation by the transient arrays
            row_bytes = itemsize * sum(m.layer.ntk_feature_numel(m.node, k, full) for m in modules)
            transient_bytes = itemsize * sum(math.prod(m.node.in_shape) + k * math.prod(m.node.out_shape)
                                             for m in modules)
            feature_chunk = max(1, memory_budget // (2 * transient_bytes))
            if x1.device.type == "cpu":
                # as the training step's passes: the k δ of the largest layer output within CHUNK_BYTES,
                # since larger arrays come from fresh, zeroed pages every time (2–4.5× faster for 1024-
                # and 256-channel flatten CNNs on MNIST-sized images; README "Speed")
                largest_delta = k * itemsize * max(math.prod(m.node.out_shape) for m in modules)
                feature_chunk = resources.rows_within_chunk_bytes(feature_chunk, largest_delta)
            features: Callable = lambda x: _structured_features(model, x, full, feature_chunk)
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
        if method == "structured" and x1.device.type == "cpu" and feature_chunk >= GRAM_ROWS:
            # pieces copied into larger chunks leave their freed memory with the CPU allocator (an MLP of
            # width 4096 on 4096 inputs: 10.1–10.5 s and a 888–920 MiB peak so, 7.0–8.1 s and 664–919 MiB
            # a piece per chunk; README "Speed")
            chunk = min(chunk, feature_chunk)
        shape = (k, k) if outputs == "full" else ()
        transposed, kept_chunks = _column_plan(x1.shape[0], None if x2 is None else x2.shape[0], chunk, row_bytes,
                                               memory_budget, x1.device)
        if transposed:
            return _fill_blocks(features, block, x2, x1, chunk, shape, kept_chunks, transposed=True)
        return _fill_blocks(features, block, x1, x2, chunk, shape, kept_chunks)


def _column_plan(n1: int, n2: Optional[int], chunk: int, row_bytes: int, memory_budget: int,
                 device: torch.device) -> Tuple[bool, int]:
    """How :func:`_fill_blocks` takes Θ̂(x1, x2) for N1 and N2 inputs (n2 None: x2 = x1) in chunks of
    ``chunk`` inputs of ``row_bytes`` features each: (transposed, kept_chunks).

    kept_chunks: how many column chunks' features are held at once; all of them where they fit in the
    budget or in 1/KEPT_FRACTION of the device's available memory, else as many as fit there.
    transposed: compute Θ̂(x2, x1) instead (then transpose), where x1 as the columns computes fewer
    features (as when x1's fit the memory kept and x2's do not); the columns' features are computed
    once, the rows' once per group of kept chunks.
    """
    available: List[int] = []

    def kept_chunks(n_columns: int) -> int:
        all_chunks = math.ceil(n_columns / chunk)
        # the budget first: the device's available memory is a query (a synchronisation on CUDA)
        if n_columns * row_bytes <= memory_budget:
            return all_chunks
        if not available:
            available.append(resources.available_bytes(device))
        kept_bytes = max(memory_budget, available[0] // KEPT_FRACTION)
        if n_columns * row_bytes <= kept_bytes:      # the last chunk may be partial
            return all_chunks
        return max(1, kept_bytes // (chunk * row_bytes))

    def computations(n_rows: int, n_columns: int) -> int:
        return n_columns + math.ceil(math.ceil(n_columns / chunk) / kept_chunks(n_columns)) * n_rows

    if n2 is None:
        return False, kept_chunks(n1)
    if computations(n2, n1) < computations(n1, n2):
        return True, kept_chunks(n1)
    return False, kept_chunks(n2)


def _batch_ntk(model: nn.Module, x1, x2, method: str, outputs: str, memory_budget: int) -> Tensor:
    """Θ̂(X) of a batch-coupled net on the batch X = x1, in one piece (module docstring)."""
    if x2 is not None:
        raise ValueError(_ONE_BATCH.format(name=type(model).__name__))
    if method == "structured":
        raise ValueError("method='structured' needs per-input gradients, which a batch-norm net does not have (its "
                         "outputs couple the batch); use method='jacobian' or 'ntvp'")
    params = _trainable(model)
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters; its NTK is zero")
    x, _ = _model_inputs(model, x1, None)
    with torch.no_grad(), _running_statistics_frozen(model):
        # on the whole batch: a batch of one may not be normalisable
        k = model.out_dim if isinstance(model, Net) else model(x).reshape(x.shape[0], -1).shape[1]
        n_params = sum(p.numel() for p in params.values())
        needed = (2 if method in ("auto", "jacobian") else 3) * x.element_size() * x.shape[0] * k * n_params
        if needed > memory_budget:
            raise ValueError(f"the NTK of this batch-norm net on {x.shape[0]} inputs needs about "
                             f"{needed / 2**30:.2g} GiB of Jacobians at once (the batch cannot be split: its outputs "
                             f"are coupled), more than memory_budget={memory_budget / 2**30:.2g} GiB; raise "
                             "memory_budget or use fewer inputs")
        if method == "ntvp":
            full = _ntvp_block(model, params, x, x, k)
        else:
            jacobian = jacrev(lambda p: _flat_outputs(model, p, x).reshape(-1))(params)      # name → (N·k, *shape)
            blocks = [j.reshape(j.shape[0], -1) for j in jacobian.values()]
            full = _contract_jacobians(blocks, blocks, k)
    return _reduce_outputs(full, outputs)


@contextlib.contextmanager
def _running_statistics_frozen(model: nn.Module):
    """torch BatchNorm modules in training mode normalise with the batch statistics but also update their
    running averages in place, which torch.func transforms refuse (and which computing a kernel must not
    do): stop the tracking for the duration, which leaves the batch-statistics forward unchanged."""
    tracking = [m for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    for m in tracking:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in tracking:
            m.track_running_stats = True


_ONE_BATCH = ("{name} normalises over the batch (batch norm), so its outputs and kernels are defined on one "
              "batch: pass the batch as x1 with x2=None (for two sets, take the blocks of the kernel of "
              "torch.cat([x1, x2]))")


def _couples_batch(model: nn.Module) -> bool:
    """Whether the model's outputs couple the inputs of a batch: an ntklab batch_norm layer, or a torch
    BatchNorm module that normalises with batch statistics (training mode, or no running statistics)."""
    if isinstance(model, Net):
        return model.couples_batch
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats)
               for m in model.modules())


def empirical_nngp(model: nn.Module, x1, x2=None, method: str = "auto", *,
                   outputs: str = "mean") -> Tensor:
    """Empirical NNGP of ``model`` between x1 (N1, d) and x2 (N2, d); x2=None means x1.

    Methods:
        "outputs": Σ̂(x, x')_{ij} = f_i(x) f_j(x'), the outputs' inner product (any module).
        "readout": for ntklab nets that end with a dense layer, the expectation of f_i(x) f_j(x') over
            the readout layer's initialisation given its input features a^L,
            Σ̂(x, x') = (σ_w² / n_L) a^L(x)·a^L(x') + σ_b²  (times δ_ij).
            Unbiased for the NNGP like "outputs", but its error falls like width^(-1/2) instead of
            staying O(1), so Monte Carlo averages converge to the limit.
        "auto": "outputs".
    ``outputs`` as in :func:`empirical_ntk`.
    """
    if method not in NNGP_METHODS:
        raise ValueError(f"method must be one of {', '.join(NNGP_METHODS)}, got {method!r}")
    _check_outputs(outputs)
    if x2 is not None and _couples_batch(model):
        raise ValueError(_ONE_BATCH.format(name=type(model).__name__))
    x1, x2 = _model_inputs(model, x1, x2)
    with torch.no_grad(), _running_statistics_frozen(model):
        if method == "readout":
            readout = _readout_module(model)
            a1 = _layer_input(model, readout, x1)
            a2 = a1 if x2 is None else _layer_input(model, readout, x2)
            scale = readout.scale
            kernel = (scale.weight_variance / scale.fan_in) * (a1 @ a2.T) + scale.bias_variance
            return _identity_in_outputs(kernel, scale.fan_out, outputs)
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
    return check_inputs(x1, x2, in_dim=getattr(model, "in_dim", None), in_shape=getattr(model, "in_shape", None),
                        dtype=dtype, device=device)


def _output_dim(model: nn.Module, x: Tensor) -> int:
    if isinstance(model, Net):
        return model.out_dim
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
                 chunk: int, shape: Tuple[int, ...], kept_chunks: int, transposed: bool = False) -> Tensor:
    """Assemble K[i, j] = block(features(x1 chunk i), features(x2 chunk j)) into one tensor, or its
    transpose K(x2, x1) if ``transposed`` (each block written swapped, input and output axes).

    The column chunks go in groups of ``kept_chunks``, whose features are held while every row chunk
    meets them: each column chunk's features are computed once, each row chunk's once per group (all
    of them at once where they fit: every input's features once). Working memory: kept_chunks + 1
    chunks of features. With x2 = None only blocks j >= i are computed and the rest mirrored
    (K(x', x) = K(x, x')ᵀ, output axes swapped too); a row chunk that is also a column of the group
    takes that column's features, which no later row needs.
    """
    same = x2 is None
    x2 = x1 if same else x2
    n1, n2 = x1.shape[0], x2.shape[0]
    rows = [slice(s, min(s + chunk, n1)) for s in range(0, n1, chunk)]
    cols = [slice(s, min(s + chunk, n2)) for s in range(0, n2, chunk)]
    out: Optional[Tensor] = None
    for start in range(0, len(cols), kept_chunks):
        group = range(start, min(start + kept_chunks, len(cols)))
        held: Dict[int, object] = {}
        for i, r in enumerate(rows):
            if same and i > group[-1]:
                break
            f1 = held.pop(i) if same and i in held else features(x1[r])
            for j in group:
                if same and j < i:
                    continue
                if not (same and j == i) and j not in held:
                    held[j] = features(x2[cols[j]])
                value = block(f1, f1 if same and j == i else held[j])
                if out is None:
                    size = (n2, n1) if transposed else (n1, n2)
                    out = torch.empty(size + shape, dtype=value.dtype, device=value.device)
                if not transposed:
                    out[r, cols[j]] = value
                if transposed or (same and j > i):      # the swapped block: the result's, or the mirror
                    out[cols[j], r] = _swap_inputs(value)
            f1 = None        # before the next row's features are computed
    return out


def _swap_inputs(kernel: Tensor) -> Tensor:
    """K(x, x') (N1, N2[, k, k]) → K(x', x) (N2, N1[, k, k]), a view: the input axes and the output axes
    swapped."""
    return kernel.transpose(0, 1).transpose(2, 3) if kernel.dim() == 4 else kernel.T


def _has_structured_rule(model: nn.Module) -> bool:
    return isinstance(model, Net) and all(leaf.layer.has_structured_ntk for leaf in model.root.leaves())


def _readout_module(model: nn.Module) -> LayerModule:
    """The net's last layer when it is dense (the layer "readout" takes the expectation over)."""
    if not isinstance(model, Net):
        raise ValueError(f"method='readout' needs an ntklab net, got {type(model).__name__}; use method='outputs'")
    last = list(model.root.leaves())[-1]
    if not isinstance(last.layer, Dense):
        raise ValueError(f"method='readout' needs a net that ends with a dense layer, this one ends with "
                         f"{last.describe()}; use method='outputs'")
    return model.parametrized_modules()[-1]


def _layer_input(model: Net, module: LayerModule, x: Tensor) -> Tensor:
    """The input ``module`` receives in a forward pass of ``model`` on x."""
    seen = []
    handle = module.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[-1].flatten(1)


def _structured_features(model: Net, x: Tensor, full: bool, chunk: int) -> List[Tuple[Tensor, ...]]:
    """Per parametrized layer, its :meth:`~ntklab.layers.core.Layer.ntk_features` of x (N, ...), computed
    ``chunk`` inputs at a time (each chunk holds every layer's input and δ at once) into one array each."""
    modules = model.parametrized_modules()
    n = x.shape[0]
    first = _structured_features_of(model, modules, x[:chunk], full)
    if chunk >= n:
        return first
    # written into their place piece by piece: concatenating the pieces would hold every feature twice
    features = [tuple(t.new_empty((n,) + t.shape[1:]) for t in of_layer) for of_layer in first]
    _write_rows(features, first, 0)
    del first        # each piece is dropped once written, before the next is computed
    for start in range(chunk, n, chunk):
        _write_rows(features, _structured_features_of(model, modules, x[start: start + chunk], full), start)
    return features


def _write_rows(features: List[Tuple[Tensor, ...]], piece: List[Tuple[Tensor, ...]], start: int) -> None:
    """Copy a piece's features (per layer, per array) into rows start, start + 1, ... of ``features``."""
    for whole, part in zip(features, piece):
        for target, values in zip(whole, part):
            target[start: start + values.shape[0]] = values


def _structured_features_of(model: Net, modules: List[LayerModule], x: Tensor, full: bool) -> List[Tuple[Tensor, ...]]:
    """The features of one chunk: each layer's input a (N, *in_shape) and δ = ∂f/∂(its output)
    (N, k, *out_shape) from one forward and one batched backward pass, reduced by the layer."""
    records: Dict[LayerModule, Tuple[Tensor, Tensor]] = {}
    handles = [m.register_forward_hook(lambda mod, args, out: records.__setitem__(mod, (args[0].detach(), out)))
               for m in modules]
    try:
        with torch.enable_grad():
            f = model(x).reshape(x.shape[0], -1)                                        # (N, k)
            n, k = f.shape
            outputs = [records[m][1] for m in modules]
            basis = torch.eye(k, dtype=f.dtype, device=f.device).unsqueeze(1).expand(k, n, k)   # e_i at every point
            try:
                deltas = torch.autograd.grad(f, outputs, grad_outputs=basis, is_grads_batched=True)
            except RuntimeError:      # an op without a batching rule: one backward pass per output
                per_output = [torch.autograd.grad(f, outputs, grad_outputs=basis[i], retain_graph=i < k - 1)
                              for i in range(k)]
                deltas = [torch.stack(parts) for parts in zip(*per_output)]
    finally:
        for handle in handles:
            handle.remove()
    return [m.layer.ntk_features(m, records[m][0], d.detach().transpose(0, 1), full)      # δ: (N, k, ...)
            for m, d in zip(modules, deltas)]


def _structured_block(model: Net, feats1, feats2, k: int, outputs: str) -> Tensor:
    """Σ over parametrized layers of their Gram rules, in the requested output mode."""
    full = outputs == "full"
    total = None
    for module, features1, features2 in zip(model.parametrized_modules(), feats1, feats2):
        term = module.layer.ntk_gram(module, features1, features2, full)
        total = term if total is None else total.add_(term)
    if outputs == "mean" and k > 1:
        total = total.div_(k)
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
