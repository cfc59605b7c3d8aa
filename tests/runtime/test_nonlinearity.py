"""Pointwise nonlinearities: per-tensor rules, equivariance, refusals, the gated map."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from nfn_runtime import (
    EquivariantNonlinearity,
    WeightSpaceLayout,
    allowed_nonlinearities,
    assert_equivariant,
    assert_sensitive,
    gated_nonlinearity,
    random_weight_space,
    sample_outside_group,
)


def test_auto_rules_per_tensor(zoo: Any) -> None:
    layout = zoo.mlp((2, 3, 4, 3, 2), ["relu", "tanh", "identity"])
    layer = EquivariantNonlinearity(layout)
    assert layer.kinds == {
        "W1": "relu",  # positive x none
        "b1": "relu",
        "W2": "gated",  # sign x positive
        "b2": "tanh",
        "W3": "gated",  # nonzero
        "b3": "gated",
        "W4": "gated",
        "b4": "relu",  # output bias: unscaled
    }
    assert allowed_nonlinearities(layout, "b2") == ("tanh", "gated", "identity")
    assert "W2=gated" in repr(layer)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_auto_nonlinearity_is_equivariant(
    any_layout: WeightSpaceLayout, dtype: torch.dtype
) -> None:
    layer = EquivariantNonlinearity(any_layout)
    assert_equivariant(layer, any_layout, dtype=dtype, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["gated", "identity"])
def test_gated_and_identity_are_always_equivariant(
    any_layout: WeightSpaceLayout, kind: Any
) -> None:
    layer = EquivariantNonlinearity(any_layout, kind)
    assert_equivariant(layer, any_layout, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "case, kind, tensor, space",
    [
        ("hnp-L2-relu", "tanh", "W1", "h1"),
        ("np-L2-tanh", "relu", "W1", "h1"),
        ("hnp-L3-identity-gelu", "relu", "W1", "h1"),
        ("hnp-L3-relu-tanh", "relu", "W2", "h2"),
    ],
    ids=["tanh-on-positive", "relu-on-sign", "relu-on-nonzero", "relu-on-sign-after-positive"],
)
def test_forcing_a_breaking_kind_is_refused(
    zoo: Any, case: str, kind: str, tensor: str, space: str
) -> None:
    with pytest.raises(ValueError, match=f"tensor '{tensor}': its space '{space}'"):
        EquivariantNonlinearity(zoo.case(case), kind)  # type: ignore[arg-type]


def test_forced_relu_where_allowed(zoo: Any) -> None:
    layout = zoo.case("hnp-L2-relu")
    layer = EquivariantNonlinearity(layout, "relu")
    assert set(layer.kinds.values()) == {"relu"}
    with pytest.raises(ValueError, match="unknown nonlinearity kind 'softplus'"):
        EquivariantNonlinearity(layout, "softplus")  # type: ignore[arg-type]


def test_gated_map_values_and_gradient() -> None:
    x = torch.tensor([[[0.0, 1.0, -2.0]], [[0.0, 3.0, 2.0]]], dtype=torch.float64)
    x = x.reshape(1, 2, 3).requires_grad_(True)  # channels on axis 1
    y = gated_nonlinearity(x)
    assert y[0, :, 0].tolist() == [0.0, 0.0]  # zero channel vector -> 0
    (gradient,) = torch.autograd.grad(y.sum(), x)
    assert bool(torch.isfinite(gradient).all())
    single = torch.randn(2, 1, 5, dtype=torch.float64)
    torch.testing.assert_close(gated_nonlinearity(single), 0.5 * single)
    d = torch.tensor([-1e3, 1e-3, 7.0], dtype=torch.float64)
    torch.testing.assert_close(
        gated_nonlinearity(x.detach() * d), d * gated_nonlinearity(x.detach())
    )


@pytest.mark.parametrize(
    "case, kind",
    [("hnp-L2-relu", "negative_scale"), ("np-L2-tanh", "scale_on_sign_space")],
    ids=["relu-negative-scale", "tanh-scale-2"],
)
def test_nonlinearity_is_sensitive_outside_the_group(zoo: Any, case: str, kind: str) -> None:
    layout = zoo.case(case)
    transform = sample_outside_group(layout, kind, torch.Generator().manual_seed(0))
    assert_sensitive(EquivariantNonlinearity(layout), layout, transform, min_error=1e-2)


def test_forward_checks_the_layout(zoo: Any) -> None:
    layer = EquivariantNonlinearity(zoo.mlp((3, 4, 2), ["relu"]))
    with pytest.raises(ValueError, match="tensor 'W1'"):
        layer(random_weight_space(zoo.mlp((3, 5, 2), ["relu"])))
