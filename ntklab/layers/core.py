"""What every layer shares: shapes, binding an architecture to an input, and the kernel state.

An architecture is a tree of :class:`Layer` descriptions (``serial`` and ``residual`` hold
children). Nothing in a description depends on the input: :func:`bind` walks the tree once for
a given input shape and returns a tree of :class:`Node` s, each knowing its input and output
shapes, its role ("input", "hidden", "readout" for parametrized layers, which fixes its
parametrization constants through :func:`ntklab.spec.parameter_scale`) and whether the kernel
rule needs the full spatial covariance of its input. The same bound tree serves the finite
network (:mod:`ntklab.layers.net`) and the analytic kernels (:func:`propagate`).

Kernel state. For image inputs (C, H, W) the NNGP and NTK of a pair of inputs are covariances
over pairs of positions: a (H, W, H, W) array per pair when something downstream mixes
positions (pooling), or only its spatial diagonal (H, W) when nothing does (conv, activation and
layer norm map the diagonal to the diagonal; flatten reads only the diagonal), which costs
O(H·W) per pair instead of O((H·W)²). Vectors have one number per pair.

A :class:`KernelState` holds up to three :class:`Part` s that travel through the layers together:

    block  the pairs (x1_i, x2_j) of a block, trailing axes (b1, b2)
    diag1  the pairs (x1_i, x1_i), trailing axis (b1,)     — their spatial diagonal gives Var u
    diag2  the pairs (x2_j, x2_j), trailing axis (b2,)     — and Var v, for activations and layer norm

so every layer sees the variances of its own input. :func:`ntklab.analytic_kernels` runs the self
pairs of all inputs once first, recording those variances (``recorder``), and then each block
alone, reading them back (:class:`Replay`): a block then costs no self-pair work of its own.

The spatial axes come first, e.g. (H, W, H, W, b1, b2), and the arrays are contiguous: the pairs
are the fastest axis, so the position shifts of conv and pooling move contiguous runs of all the
block's pairs at once (with positions last, an 8×8 image's shifts would move runs of 7 numbers).

The arrays of a state are its own: a rule may overwrite the NTK it is given, and the NNGP too
except in a recording pass (:attr:`KernelState.may_overwrite_nngp`), whose recorded variances are
views of NNGP arrays that an activation may pass on unchanged (the identity's dual returns its
input). Rules work in place where they can: on blocks of millions of entries every operation is a
pass through memory and every new array costs page faults besides.

Arrays are float64 (or float32) torch tensors, or numpy object arrays of mpmath numbers for the
high-precision recursion of :mod:`ntklab.spectra` (vector nets only); the rules use broadcasting
arithmetic that works on both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ntklab.spec import LayerScale, is_integer, is_finite_real

Shape = Tuple[int, ...]
"""A single input's shape: (d,) for vectors, (C, H, W) for images."""


class Layer:
    """A layer description. Subclasses override what applies to them.

    ``parametrized`` layers own weights; they implement :meth:`init`, :meth:`ntk_gram` (and
    :meth:`ntk_features` where they keep less than their input and δ) and their parametrization
    constants come from :meth:`scale`.
    """

    name = "layer"
    parametrized = False
    needs_variances = False          # the kernel rule reads Var u, Var v of its input (activations, layer norm)

    # -- shapes
    def output_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def children(self) -> Sequence["Layer"]:
        return ()

    def full_input_needed(self, full_output_needed: bool) -> bool:
        """Whether the kernel rule needs its input's covariance between different positions,
        given whether its output's is needed downstream (pointwise layers pass it through)."""
        return full_output_needed

    def scale(self, in_shape: Shape, out_shape: Shape, role: str) -> Optional[LayerScale]:
        return None

    # -- finite network
    def init(self, node: "Node", generator: torch.Generator) -> dict:
        """Initial parameters, float64 on the CPU, drawn in a fixed order from ``generator``."""
        return {}

    def forward(self, module, x: Tensor) -> Tensor:
        raise NotImplementedError

    # -- infinite width
    def kernel(self, node: "Node", state: "KernelState") -> "KernelState":
        """The kernel rule applied to every part of the state (pair layout is transparent to it)."""
        def apply(part: "Part", q1, q2) -> "Part":
            return self.rule(node, part, q1, q2, state)
        return state.map(apply, with_variances=self.needs_variances)

    def rule(self, node: "Node", part: "Part", q1, q2, state: "KernelState") -> "Part":
        raise NotImplementedError(f"{node.describe()} has no infinite-width rule")

    @property
    def has_analytic_rule(self) -> bool:
        """Whether the layer has an infinite-width kernel rule (it overrides :meth:`kernel` or :meth:`rule`);
        :func:`ntklab.kernels.limit_problem` names the first layer of a net that has none."""
        return type(self).rule is not Layer.rule or type(self).kernel is not Layer.kernel

    # -- structured empirical NTK
    def ntk_features(self, module, a: Tensor, d: Tensor, full: bool) -> Tuple[Tensor, ...]:
        """What :meth:`ntk_gram` needs of a block of inputs, from the layer's input a (b, *in_shape) and
        δ = ∂f/∂(its output) (b, k, *out_shape): tensors whose first axis is the input, so the features
        of row chunks concatenate. By default (a, δ) themselves; a layer whose term contracts per-input
        weight gradients returns those, which can be far smaller than δ (a conv's Σ_s δ_s ⊗ patch_s has
        k·C_out·C_in·k_h·k_w numbers per input, δ has k·C_out·H·W), so many inputs' features fit in memory."""
        return (a, d)

    def ntk_feature_numel(self, node: "Node", k: int, full: bool) -> int:
        """Numbers per input in :meth:`ntk_features` (the empirical NTK sizes its row chunks by it)."""
        return math.prod(node.in_shape) + k * math.prod(node.out_shape)

    def ntk_gram(self, module, features1: Tuple[Tensor, ...], features2: Tuple[Tensor, ...], full: bool) -> Tensor:
        """Σ_p ∂f_i(x)/∂θ_p ∂f_j(x')/∂θ_p over this layer's parameters, from the :meth:`ntk_features` of
        two blocks of inputs (b1 and b2 of them; the same tuple object for a block with itself):
        (b1, b2, k, k) if ``full``, else the sum over i = j (b1, b2)."""
        raise NotImplementedError

    has_structured_ntk = True
    couples_batch = False            # the output for one input depends on the others in the batch (batch_norm)

    def describe(self) -> str:
        return self.name


@dataclass
class Node:
    """A layer bound to an input shape (see module docstring)."""

    layer: Layer
    in_shape: Shape
    out_shape: Shape
    path: str                                  # position in the tree, e.g. "2" or "3.branch.0", for messages
    scale: Optional[LayerScale] = None         # parametrized layers only
    children: List["Node"] = field(default_factory=list)
    full_in: bool = False                      # its kernel rule receives the full spatial covariance
    full_out: bool = False                     # its output's full covariance is needed downstream

    def describe(self) -> str:
        return f"layer {self.path} ({self.layer.describe()})"

    def leaves(self) -> Iterator["Node"]:
        if not self.children:
            yield self
        for child in self.children:
            yield from child.leaves()

    def parametrized(self) -> List["Node"]:
        return [leaf for leaf in self.leaves() if leaf.layer.parametrized]


def bind(arch: Layer, in_shape: Shape) -> Node:
    """Bind ``arch`` to inputs of shape ``in_shape``: shapes, roles and scales of every layer.

    Raises ValueError naming the layer whose input does not fit it.
    """
    if not isinstance(arch, Layer):
        raise ValueError(f"an architecture must be an ntklab.layers Layer (e.g. nl.serial(...)), got "
                         f"{type(arch).__name__}")
    in_shape = tuple(int(n) for n in in_shape)
    if len(in_shape) not in (1, 3) or min(in_shape) < 1:
        raise ValueError(f"inputs must be vectors (d,) or images (C, H, W) with positive sizes, got shape {in_shape}")
    count = [0]
    root = _bind(arch, in_shape, "0" if not arch.children() else "", count)
    total = count[0]
    if total == 0:
        raise ValueError("the architecture has no dense or conv layer: it has nothing to train")
    order = [0]

    def assign_roles(node: Node) -> None:
        if node.layer.parametrized:
            index = order[0]
            order[0] += 1
            role = "readout" if index == total - 1 else ("input" if index == 0 else "hidden")
            node.scale = node.layer.scale(node.in_shape, node.out_shape, role)
        for child in node.children:
            assign_roles(child)

    assign_roles(root)
    _annotate_spatial(root, full_output_needed=False)
    return root


def _bind(layer: Layer, in_shape: Shape, path: str, count: List[int]) -> Node:
    if not isinstance(layer, Layer):
        raise ValueError(f"layer {path or 0}: expected an ntklab.layers Layer, got {type(layer).__name__}")
    from ntklab.layers.combinators import Residual, Serial

    if isinstance(layer, Serial):
        children, shape = [], in_shape
        for i, child in enumerate(layer.layers):
            node = _bind(child, shape, f"{path}.{i}" if path else str(i), count)
            children.append(node)
            shape = node.out_shape
        return Node(layer, in_shape, shape, path or "net", children=children)
    if isinstance(layer, Residual):
        branch = _bind(layer.branch, in_shape, f"{path}.branch" if path else "branch", count)
        if branch.out_shape != in_shape:
            raise ValueError(f"layer {path} (residual): the branch maps {in_shape} to {branch.out_shape}; "
                             "x + branch(x) needs the same shape (stride-1 'same' convs, as many channels out as in)")
        return Node(layer, in_shape, in_shape, path, children=[branch])
    try:
        out_shape = layer.output_shape(in_shape)
    except ValueError as err:
        raise ValueError(f"layer {path} ({layer.describe()}): {err}") from None
    if layer.parametrized:
        count[0] += 1
    return Node(layer, in_shape, tuple(out_shape), path)


def variance_prefix(root: Node) -> Optional[Node]:
    """A copy of the bound tree ``root`` that stops after the last top-level layer reading variances
    (activations, layer norm; None if there is none), annotated for its own end.

    Run over the self pairs with a recorder, it records every variance the whole net reads, and
    where no pooling lies before those layers it carries only spatial diagonals: O(H·W) per input
    instead of the O((H·W)²) of the whole net's self pairs before a global average pool.
    """
    from ntklab.layers.combinators import Serial

    reads = lambda node: any(leaf.layer.needs_variances for leaf in node.leaves())
    if not reads(root):
        return None
    if isinstance(root.layer, Serial):
        last = max(i for i, child in enumerate(root.children) if reads(child))
        prefix = replace(root, out_shape=root.children[last].out_shape,
                         children=[_copy_tree(child) for child in root.children[: last + 1]])
    else:
        prefix = _copy_tree(root)
    _annotate_spatial(prefix, full_output_needed=False)
    return prefix


def _copy_tree(node: Node) -> Node:
    return replace(node, children=[_copy_tree(child) for child in node.children])


def _annotate_spatial(node: Node, full_output_needed: bool) -> bool:
    """Set full_in/full_out on every node, output to input; returns node.full_in."""
    from ntklab.layers.combinators import Residual, Serial

    node.full_out = full_output_needed
    if isinstance(node.layer, Serial):
        need = full_output_needed
        for child in reversed(node.children):
            need = _annotate_spatial(child, need)
        node.full_in = need
    elif isinstance(node.layer, Residual):
        node.full_in = _annotate_spatial(node.children[0], full_output_needed) or full_output_needed
    else:
        node.full_in = node.layer.full_input_needed(full_output_needed)
    if len(node.in_shape) == 1:
        node.full_in = False
    return node.full_in


# ----------------------------------------------------------------------------- kernel state

@dataclass
class Part:
    """NNGP and NTK of a set of input pairs: the spatial axes (if any), then the pair axes.

    ntk_is_zero marks the input's NTK (no parameters below it: an array of zeros), so that the first
    dense or conv layer can skip the passes over it; a rule that makes a new Part leaves it False.
    """

    nngp: Any
    ntk: Any
    ntk_is_zero: bool = False

    def clone(self) -> "Part":
        copy = (lambda a: a.clone()) if isinstance(self.nngp, Tensor) else (lambda a: a.copy())
        return Part(copy(self.nngp), copy(self.ntk))


@dataclass(frozen=True)
class KernelOptions:
    """How activations' Gaussian expectations are computed: ``method`` "auto" | "closed_form" |
    "quadrature", ``quadrature_degree``; ``precise`` selects the mpmath duals (object arrays)."""

    method: str = "auto"
    quadrature_degree: int = 20
    precise: bool = False


@dataclass
class KernelState:
    """The parts of module docstring, their spatial layout and the options of the rules.

    spatial: () for vectors, else (H, W); full: the spatial axes are (H, W, H, W) rather than (H, W).
    """

    block: Optional[Part]
    diag1: Optional[Part]
    diag2: Optional[Part]
    spatial: Tuple[int, ...]
    full: bool
    options: KernelOptions
    recorder: Optional[List] = None          # a first pass over the self pairs appends the variances here
    replay: Optional["Replay"] = None        # a block without self pairs reads them back from here

    def parts(self):
        return [(name, getattr(self, name)) for name in ("block", "diag1", "diag2") if getattr(self, name) is not None]

    @property
    def may_overwrite_nngp(self) -> bool:
        """Whether rules may overwrite the NNGP arrays they are given (see the module docstring)."""
        return self.recorder is None

    def map(self, fn: Callable[[Part, Any, Any], Part], with_variances: bool = False,
            spatial: Optional[Tuple[int, ...]] = None, full: Optional[bool] = None) -> "KernelState":
        """Apply ``fn(part, q1, q2)`` to every part. With ``with_variances``, q1 and q2 are the
        variances Var u, Var v at each position, shaped to broadcast against the part's arrays."""
        new = {}
        for name, part in self.parts():
            q1 = q2 = None
            if with_variances:
                q1, q2 = self.variances(name)
            new[name] = fn(part, q1, q2)
        return KernelState(new.get("block"), new.get("diag1"), new.get("diag2"),
                           self.spatial if spatial is None else spatial, self.full if full is None else full,
                           self.options, self.recorder, self.replay)

    def variances(self, name: str):
        """(q1, q2) of part ``name``, broadcastable against its arrays (see :meth:`map`); the
        position variances q are (…, n): (H, W, n) for images, (n,) for vectors."""
        ones = (1,) * len(self.spatial)
        if name == "block":
            if self.replay is not None:
                q1, q2 = self.replay.next()
            else:
                q1 = _position_variances(self.diag1.nngp, self.full)
                q2 = _position_variances((self.diag2 or self.diag1).nngp, self.full)
            if self.full:     # (H, W, 1, 1, b1, 1) and (1, 1, H, W, 1, b2)
                return (_reshape(q1, q1.shape[:-1] + ones + (q1.shape[-1], 1)),
                        _reshape(q2, ones + q2.shape[:-1] + (1, q2.shape[-1])))
            return _reshape(q1, q1.shape + (1,)), _reshape(q2, q2.shape[:-1] + (1, q2.shape[-1]))
        part = getattr(self, name)
        q = _position_variances(part.nngp, self.full)
        if self.recorder is not None:
            self.recorder.append(q)
        if self.full:         # (H, W, 1, 1, n) and (1, 1, H, W, n)
            return _reshape(q, q.shape[:-1] + ones + q.shape[-1:]), _reshape(q, ones + q.shape)
        return q, q

    def clone(self) -> "KernelState":
        return KernelState(*(None if p is None else p.clone() for p in (self.block, self.diag1, self.diag2)),
                           self.spatial, self.full, self.options, self.recorder, self.replay)

    def to_diagonal(self) -> "KernelState":
        """Drop the covariances between different positions: (H, W, H, W, …) → (H, W, …)."""
        if not self.full:
            return self
        return self.map(lambda part, q1, q2: Part(spatial_diagonal(part.nngp), spatial_diagonal(part.ntk)),
                        full=False)


@dataclass
class Replay:
    """Variances recorded by a pass over all self pairs, read back in the same order by the blocks.

    recorded1[i], recorded2[i]: the i-th variance lookup's (…, n) position variances of x1's and x2's
    self pairs; rows, cols: the block's slices of them. Layers ask for variances in the order of the
    architecture, the same in both passes, so the i-th lookup of a block is the i-th recorded.
    """

    recorded1: List
    recorded2: List
    rows: slice
    cols: slice
    index: int = 0

    def next(self):
        q1, q2 = self.recorded1[self.index][..., self.rows], self.recorded2[self.index][..., self.cols]
        self.index += 1
        return q1, q2


def spatial_diagonal(kernel: Tensor) -> Tensor:
    """(H, W, H, W, …) → (H, W, …): the entries at equal positions (a view)."""
    h, w, pairs = kernel.shape[0], kernel.shape[1], kernel.shape[4:]
    flat = kernel.reshape((h * w, h * w) + pairs)
    return flat.diagonal(dim1=0, dim2=1).movedim(-1, 0).reshape((h, w) + pairs)


def _position_variances(nngp, full):
    """Var at each position of the pairs (x, x) of a diagonal part: (n,) or (H, W, n)."""
    return spatial_diagonal(nngp) if full else nngp


def _reshape(array, shape):
    return array.reshape(shape)


# ----------------------------------------------------------------------------- padding and windows

PADDINGS = ("same", "valid")


def window_padding(size: int, window: int, stride: int, padding: str) -> Tuple[int, int, int]:
    """(left, right, output size) of a window sliding over ``size`` positions.

    "valid": no padding, output ⌊(size − window)/stride⌋ + 1. "same" (TensorFlow's and
    neural-tangents'): output ⌈size/stride⌉, total padding max((out − 1)·stride + window − size, 0),
    its smaller half on the left.
    """
    if padding == "valid":
        if window > size:
            raise ValueError(f"a window of {window} does not fit {size} positions with padding 'valid'")
        return 0, 0, (size - window) // stride + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2, out


def window_sum(values: Tensor, axes, window: int, stride: int, before: int, after: int) -> Tensor:
    """out[…, i, …] = Σ_{o < window} values[…, stride·i + o − before, …], moving every axis of
    ``axes`` at once (entries outside count as 0): a new array, ⌊(size + before + after − window)/stride⌋
    + 1 long along them. One strided slice per offset, summed: no im2col."""
    size = values.shape[axes[0]]
    padded = values
    if before or after:
        shape, inner = list(values.shape), [slice(None)] * values.dim()
        for axis in axes:
            shape[axis], inner[axis] = size + before + after, slice(before, before + size)
        padded = values.new_zeros(shape)
        padded[tuple(inner)] = values
    out_size = (size + before + after - window) // stride + 1
    pieces = []
    for offset in range(window):
        index = [slice(None)] * values.dim()
        for axis in axes:
            index[axis] = slice(offset, offset + stride * (out_size - 1) + 1, stride)
        pieces.append(padded[tuple(index)])
    return _sum_of(pieces)


def _sum_of(pieces) -> Tensor:
    """((p0 + p1) + p2) + …, a new array (the first addition allocates it: no copy of p0)."""
    if len(pieces) == 1:
        return pieces[0].clone(memory_format=torch.contiguous_format)
    out = torch.add(pieces[0], pieces[1])
    for piece in pieces[2:]:
        out.add_(piece)
    return out


def check_int(value, name: str, minimum: int = 1) -> int:
    if not is_integer(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_pair(value, name: str) -> Tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an integer or a pair of integers, got {value!r}")
        return check_int(value[0], name), check_int(value[1], name)
    value = check_int(value, name)
    return value, value


def check_real(value, name: str, minimum: float, strict: bool) -> float:
    if not is_finite_real(value) or value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return float(value)


def is_tensor(array) -> bool:
    return isinstance(array, Tensor)


__all__ = ["Layer", "Node", "bind", "variance_prefix", "Part", "KernelState", "KernelOptions", "Replay", "Shape",
           "spatial_diagonal", "window_padding", "window_sum", "PADDINGS"]
