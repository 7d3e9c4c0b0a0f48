import math

import pytest
import torch

from ntklab import ACTIVATION_NAMES, ArchSpec
from ntklab.spec import layer_scales


@pytest.mark.parametrize("kwargs, field, allowed", [
    (dict(width=0), "width", ">= 1"),
    (dict(depth=2, width=(8,)), "width", "depth=2"),
    (dict(depth=-1), "depth", ">= 0"),
    (dict(activation="relu6"), "activation", "relu"),
    (dict(sigma_w=-1.0), "sigma_w", "> 0"),
    (dict(sigma_b=-0.1), "sigma_b", ">= 0"),
    (dict(sigma_w=float("nan")), "sigma_w", "finite"),
    (dict(parametrization="mf"), "parametrization", "ntk, standard, mup, meanfield"),
    (dict(parametrization="meanfield", depth=2), "meanfield", "depth=1"),
    (dict(out_dim=0), "out_dim", ">= 1"),
    (dict(bias="yes"), "bias", "True or False"),
])
def test_invalid_values_name_the_field_and_allowed_values(kwargs, field, allowed):
    with pytest.raises(ValueError) as err:
        ArchSpec(**kwargs)
    message = str(err.value)
    assert field in message and allowed in message


def test_unknown_activation_lists_every_allowed_name():
    with pytest.raises(ValueError) as err:
        ArchSpec(activation="swishy")
    assert all(name in str(err.value) for name in ACTIVATION_NAMES)


def test_widths_from_int_or_sequence():
    assert ArchSpec(depth=3, width=7).widths == (7, 7, 7)
    assert ArchSpec(depth=2, width=[5, 9]).widths == (5, 9)
    assert ArchSpec(depth=0, width=7).widths == ()


@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
def test_layer_scales_give_sigma_w_squared_per_unit_fan_in(parametrization):
    # Both parametrizations draw the same effective weights: Var(mult·W) · fan_in = σ_w².
    spec = ArchSpec(depth=2, width=(30, 50), sigma_w=1.7, sigma_b=0.3, parametrization=parametrization)
    scales = layer_scales(spec, in_dim=11)
    assert [(s.fan_in, s.fan_out) for s in scales] == [(11, 30), (30, 50), (50, 1)]
    for s in scales:
        assert math.isclose(s.weight_variance, 1.7 ** 2, rel_tol=1e-14)
        assert math.isclose(s.bias_variance, 0.3 ** 2, rel_tol=1e-14)
    expected_c = [1.7 ** 2 / n for n in (11, 30, 50)] if parametrization == "ntk" else [1.0] * 3
    assert [s.weight_ntk_factor for s in scales] == pytest.approx(expected_c, rel=1e-14)


def test_no_bias_means_no_bias_terms():
    scales = layer_scales(ArchSpec(depth=1, width=4, sigma_b=0.5, bias=False, parametrization="standard"), 3)
    assert all(s.bias_variance == 0.0 and s.bias_ntk_factor == 0.0 for s in scales)


def test_callable_activation_is_accepted():
    spec = ArchSpec(activation=torch.cos)
    assert spec.act.dual is None
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)
    assert torch.allclose(spec.act.derivative(x), -torch.sin(x), atol=1e-14)
