"""The architecture description shared by the analytic kernels and the finite networks.

A fully connected net with ``depth`` hidden layers of widths n_1..n_L, input dim n_0 and
``out_dim`` = k outputs. Layer l (1..L+1) maps its input a^{l-1} (a^0 = x) to

    z^l = weight_mult_l · W^l a^{l-1} + bias_mult_l · b^l,   W^l ~ N(0, weight_std_l²),  b^l ~ N(0, bias_std_l²)

and the parametrization fixes the four constants (docs/design.md):

    "ntk":      weight_std = 1,             weight_mult = σ_w/√n_{l-1},  bias_std = 1,    bias_mult = σ_b
    "standard": weight_std = σ_w/√n_{l-1},  weight_mult = 1,             bias_std = σ_b,  bias_mult = 1

Both give the same function at initialisation; they differ in what gradient descent moves.

"mup", the maximal-update parametrization for SGD (Yang & Hu 2021, its abc-parametrization
with a = (−1/2, 0, …, 0, 1/2), b = 1/2, c = 0: W^l = n^{-a_l} w^l, w^l ~ N(0, n^{-2b}), one
learning rate for every layer), with n the layer's hidden width:

    input  (l = 1):    weight_std = 1/√n_1,        weight_mult = σ_w √n_1/√n_0
    hidden (1 < l ≤ L): weight_std = σ_w/√n_{l-1}, weight_mult = 1
    readout (L + 1):   weight_std = 1/√n_L,        weight_mult = σ_w/√n_L      (effective variance σ_w²/n_L²)
    biases of hidden layers: bias_std = 1/√n_l, bias_mult = σ_b √n_l;  readout bias as under "ntk"

By the abc symmetry (a, b, c) → (a + θ, b − θ, c − 2θ) this is the same training as Yang & Hu's
table for SGD with per-layer learning rates — input weights and biases η·n, hidden η, readout
η/n, with the multipliers folded into the learning rate — but here every parameter shares η, so
Σ_p ∂f/∂θ_p ∂f/∂θ_p is the kernel that drives gradient descent and every NTK method agrees.
The readout makes f(x) = O(1/√n) at initialisation; the NTK stays O(1) and moves O(1) in training.

"meanfield" (one hidden layer only): f(x) = (σ_w/n) Σ_i a_i φ(z_i) + (σ_b/√n) b, i.e. the "ntk"
input layer and a readout with weight_std = bias_std = 1, weight_mult = σ_w/n, bias_mult = σ_b/√n (Mei, Montanari & Nguyen 2018; Chizat &
Bach 2018). Its NTK is O(1/n), so η_max = 2Nk/λ_max grows like n: train it at a fraction of η_max.
:func:`parameter_scale` is the single place these constants live: the network's forward pass,
the structured empirical NTK (c_l = weight_mult², c'_l = bias_mult²) and the analytic kernel
recursion all read them from here (:func:`layer_scales` lists them for every layer of an ArchSpec).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Sequence, Tuple, Union

from ntklab.activations import ACTIVATION_NAMES, Activation, ActivationLike, get_activation

PARAMETRIZATIONS = ("ntk", "standard", "mup", "meanfield")


@dataclass(frozen=True)
class ArchSpec:
    """A fully connected architecture.

    Args:
        depth: number of hidden layers L (0 gives a linear model).
        width: hidden width n, or a sequence of L per-layer widths (n_1, ..., n_L).
        activation: a name from ``ntklab.activations.ACTIVATION_NAMES``, an ``Activation`` or an
            elementwise callable (kernels of callables use quadrature).
        sigma_w: weight scale σ_w > 0.
        sigma_b: bias scale σ_b >= 0 (ignored when ``bias`` is False).
        bias: whether layers have biases. Under "standard" a bias is trainable and adds 1 to
            the NTK per layer even when σ_b = 0.
        parametrization: "ntk", "standard", "mup" or "meanfield" (depth 1); see the module docstring.
        out_dim: number of outputs k.
    """

    depth: int = 2
    width: Union[int, Tuple[int, ...]] = 512
    activation: ActivationLike = "relu"
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    bias: bool = True
    parametrization: str = "ntk"
    out_dim: int = 1
    _act: Activation = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not is_integer(self.depth) or self.depth < 0:
            raise ValueError(f"depth must be an integer >= 0, got {self.depth!r}")
        if is_integer(self.width):
            if self.width < 1:
                raise ValueError(f"width must be an integer >= 1, got {self.width!r}")
        elif isinstance(self.width, Sequence) and not isinstance(self.width, str):
            widths = tuple(self.width)
            if len(widths) != self.depth or not all(is_integer(n) and n >= 1 for n in widths):
                raise ValueError(
                    f"width must be an integer >= 1 or a sequence of depth={self.depth} integers "
                    f">= 1, got {self.width!r}")
            object.__setattr__(self, "width", tuple(int(n) for n in widths))
        else:
            raise ValueError(f"width must be an integer >= 1 or a sequence of integers, got {self.width!r}")
        if not is_finite_real(self.sigma_w) or not self.sigma_w > 0:
            raise ValueError(f"sigma_w must be a finite number > 0, got {self.sigma_w!r}")
        if not is_finite_real(self.sigma_b) or self.sigma_b < 0:
            raise ValueError(f"sigma_b must be a finite number >= 0, got {self.sigma_b!r}")
        if not isinstance(self.bias, bool):
            raise ValueError(f"bias must be True or False, got {self.bias!r}")
        if self.parametrization == "meanfield" and self.depth != 1:
            raise ValueError(f"parametrization 'meanfield' is defined for one hidden layer (depth=1), got depth={self.depth}")
        if self.parametrization not in PARAMETRIZATIONS:
            raise ValueError(
                f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}, got {self.parametrization!r}")
        if not is_integer(self.out_dim) or self.out_dim < 1:
            raise ValueError(f"out_dim must be an integer >= 1, got {self.out_dim!r}")
        try:
            act = get_activation(self.activation)
        except ValueError as err:
            raise ValueError(str(err)) from None
        object.__setattr__(self, "_act", act)

    @property
    def widths(self) -> Tuple[int, ...]:
        """Hidden widths (n_1, ..., n_L)."""
        if isinstance(self.width, tuple):
            return self.width
        return (int(self.width),) * self.depth

    @property
    def act(self) -> Activation:
        """The resolved :class:`~ntklab.activations.Activation`."""
        return self._act


@dataclass(frozen=True)
class LayerScale:
    """Constants of one dense layer z = weight_mult · W a + bias_mult · b (see module docstring)."""

    fan_in: int
    fan_out: int
    weight_std: float
    weight_mult: float
    bias_std: float
    bias_mult: float
    has_bias: bool

    @property
    def weight_variance(self) -> float:
        """Variance of one effective weight times fan-in: (weight_std · weight_mult)² · n_{l-1}
        (σ_w² except for the readout of "mup", σ_w²/n_L, and of "meanfield", σ_w²/n)."""
        return (self.weight_std * self.weight_mult) ** 2 * self.fan_in

    @property
    def bias_variance(self) -> float:
        """Variance of the effective bias: (bias_std · bias_mult)² = σ_b² (0 without bias)."""
        return (self.bias_std * self.bias_mult) ** 2 if self.has_bias else 0.0

    @property
    def weight_ntk_factor(self) -> float:
        """c_l = weight_mult²: the weights' NTK term is c_l (a·a')(δ·δ')."""
        return self.weight_mult ** 2

    @property
    def bias_ntk_factor(self) -> float:
        """c'_l = bias_mult² (0 without bias): the bias's NTK term is c'_l (δ·δ')."""
        return self.bias_mult ** 2 if self.has_bias else 0.0


ROLES = ("input", "hidden", "readout")
"""A parametrized layer's role: the first of a net ("input"), the last ("readout"), or any other."""


def parameter_scale(parametrization: str, role: str, fan_in: int, fan_out: int, sigma_w: float, sigma_b: float,
                    bias: bool) -> LayerScale:
    """The constants of one parametrized layer (dense or conv): the one table of the module docstring.

    Args:
        parametrization: one of :data:`PARAMETRIZATIONS`.
        role: one of :data:`ROLES`; a net with a single parametrized layer gives it "readout".
        fan_in: inputs per output unit (n_{l-1} for dense, C_in·k_h·k_w for conv).
        fan_out: output units (features or channels): the hidden width n of "mup"'s input layer.
    """
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}, got {parametrization!r}")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    sigma_b = sigma_b if bias else 0.0
    if parametrization == "standard":
        constants = (sigma_w / math.sqrt(fan_in), 1.0, sigma_b, 1.0)
    elif parametrization == "mup" and role == "readout":
        constants = (1.0 / math.sqrt(fan_in), sigma_w / math.sqrt(fan_in), 1.0, sigma_b)
    elif parametrization == "mup" and role == "input":
        constants = (1.0 / math.sqrt(fan_out), sigma_w * math.sqrt(fan_out / fan_in),
                     1.0 / math.sqrt(fan_out), sigma_b * math.sqrt(fan_out))
    elif parametrization == "mup":
        constants = (sigma_w / math.sqrt(fan_in), 1.0, 1.0 / math.sqrt(fan_out), sigma_b * math.sqrt(fan_out))
    elif parametrization == "meanfield" and role == "readout":
        # bias multiplier σ_b/√n: its NTK term σ_b²/n is of the order of the rest of the O(1/n)
        # kernel (with σ_b it would swamp it), so the bias trains on the same time scale
        constants = (1.0, sigma_w / fan_in, 1.0, sigma_b / math.sqrt(fan_in))
    else:  # "ntk", and the input layer of "meanfield"
        constants = (1.0, sigma_w / math.sqrt(fan_in), 1.0, sigma_b)
    return LayerScale(int(fan_in), int(fan_out), *constants, bool(bias))


def layer_scales(spec: ArchSpec, in_dim: int) -> Tuple[LayerScale, ...]:
    """The L+1 dense layers of ``spec`` on inputs of dimension ``in_dim``, input layer first."""
    if not is_integer(in_dim) or in_dim < 1:
        raise ValueError(f"in_dim must be an integer >= 1, got {in_dim!r}")
    dims = (int(in_dim),) + spec.widths + (spec.out_dim,)
    last = len(dims) - 1
    return tuple(parameter_scale(spec.parametrization,
                                 "readout" if layer == last else ("input" if layer == 1 else "hidden"),
                                 fan_in, fan_out, spec.sigma_w, spec.sigma_b, spec.bias)
                 for layer, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:]), start=1))


def is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_real(value: object) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(float(value)))


__all__ = ["ArchSpec", "LayerScale", "layer_scales", "parameter_scale", "PARAMETRIZATIONS", "ROLES",
           "ACTIVATION_NAMES"]
