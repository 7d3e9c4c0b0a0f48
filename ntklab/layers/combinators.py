"""Composition: ``serial`` (one layer after another) and ``residual`` (x + branch(x)).

Their kernel rules compose their children's: serial applies them in order (dropping the
covariance between different positions as soon as nothing downstream needs it), residual adds
the skip's kernels to the branch's, Σ' = Σ + Σ_branch and Θ' = Θ + Θ_branch. That sum is the
limit when the branch's output is independent of its input in the limit: the branch must contain
a dense or conv layer and its output must have zero mean over channels (a dense or conv layer, or
odd functions of one, last); :func:`check_limit` checks it.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ntklab.layers.core import KernelState, Layer, Node, Part


class Serial(Layer):
    """Layers applied one after the other."""

    name = "serial"

    def __init__(self, layers: Sequence[Layer]):
        layers = list(layers)
        if not layers:
            raise ValueError("serial needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ValueError(f"serial: item {i} is not an ntklab.layers Layer but {type(layer).__name__} "
                                 f"({layer!r}); build layers with nl.dense, nl.conv, nl.activation, ...")
        self.layers = layers

    def children(self):
        return self.layers

    def describe(self) -> str:
        return "serial(" + ", ".join(layer.describe() for layer in self.layers) + ")"

    def forward(self, module, x: Tensor) -> Tensor:
        for child in module.children_modules:
            x = child(x)
        return x

    def kernel(self, node: Node, state: KernelState) -> KernelState:
        for child in node.children:
            if state.full and not child.full_in:
                state = state.to_diagonal()
            state = child.layer.kernel(child, state)
        return state


class Residual(Layer):
    """x + branch(x); the branch must keep the shape."""

    name = "residual"

    def __init__(self, branch: Layer):
        if not isinstance(branch, Layer):
            raise ValueError(f"residual: the branch must be an ntklab.layers Layer, got {type(branch).__name__}")
        self.branch = branch

    def children(self):
        return [self.branch]

    def describe(self) -> str:
        return f"residual({self.branch.describe()})"

    def forward(self, module, x: Tensor) -> Tensor:
        return x + module.children_modules[0](x)

    def kernel(self, node: Node, state: KernelState) -> KernelState:
        branch_node = node.children[0]
        branch = branch_node.layer.kernel(branch_node, state.clone())
        if state.full != branch.full:
            state, branch = state.to_diagonal(), branch.to_diagonal()
        summed = {name: Part(part.nngp + getattr(branch, name).nngp, part.ntk + getattr(branch, name).ntk)
                  for name, part in state.parts()}
        return KernelState(summed.get("block"), summed.get("diag1"), summed.get("diag2"), state.spatial, state.full,
                           state.options, state.recorder, state.replay)


def serial(*layers: Layer) -> Serial:
    """Compose layers: ``serial(conv(...), activation("relu"), ...)``; nested serials are fine."""
    if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
        layers = tuple(layers[0])
    return Serial(layers)


def residual(branch: Layer) -> Residual:
    """A residual block x + branch(x) (e.g. ``residual(serial(conv(C, 3), activation("relu"), conv(C, 3)))``)."""
    return Residual(branch)


def check_limit(root: Node) -> None:
    """Refuse compositions whose kernel rules would not be the infinite-width limit (see the module
    docstrings of :mod:`ntklab.layers.combinators` and :mod:`ntklab.layers.elementwise`)."""
    _centred(root, False)


def _centred(node: Node, centred: bool) -> bool:
    """Whether the output has zero mean over channels in the limit, given whether the input has."""
    from ntklab.layers.elementwise import ActivationLayer, LayerNorm
    from ntklab.layers.pooling import Unflatten

    layer = node.layer
    if isinstance(layer, Serial):
        for child in node.children:
            centred = _centred(child, centred)
        return centred
    if isinstance(layer, Residual):
        branch = node.children[0]
        if not branch.parametrized() or not _centred(branch, centred):
            raise ValueError(f"{node.describe()}: x + branch(x) has the summed kernels as its limit only when the "
                             "branch holds a dense or conv layer and ends with one (or with odd functions of "
                             "one): then branch and skip are independent")
        return centred
    if layer.parametrized:
        return True
    if isinstance(layer, ActivationLayer):
        return centred and layer.odd
    if isinstance(layer, LayerNorm):
        if not centred:
            raise ValueError(f"{node.describe()}: its input does not have zero mean over channels (it follows an "
                             "activation such as relu, or the raw input), so the limit is not Σ(s,s')/√(Σ(s,s)Σ'(s',s'));"
                             " put layer_norm right after a dense or conv layer")
        return True
    if isinstance(layer, Unflatten) and not centred:
        raise ValueError(f"{node.describe()}: its input does not have zero mean (it follows an activation such as "
                         "relu, or the raw input), so features at different positions share a mean and the limit "
                         "is not δ(s, s')·Σ; put unflatten right after a dense layer")
    return centred
