"""The checkers themselves: they pass correct layers and catch broken ones."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from nfn_runtime import (
    WeightSpace,
    WeightSpaceLayout,
    assert_equivariant,
    assert_invariant,
    assert_sensitive,
    default_tolerances,
    equivariance_error,
    invariance_error,
    random_weight_space,
    sample_outside_group,
    sensitivity_error,
)


class HiddenPositiveLinear(nn.Module):
    """A hand-derived equivariant linear layer for HNP MLPs (3, 4, 2) with positive scaling.

    ``W1' = A W1 + W1 M`` (mixing the fixed input axis), ``b1' = C b1 + W1 v``,
    ``W2' = E W2 + N W2`` (mixing the fixed output axis), ``b2' = N b2 + const``; ``A, C, E``
    mix channels. No term sums over the hidden index, which positive scaling forbids.
    """

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(channels, channels))
        self.c = nn.Parameter(torch.randn(channels, channels))
        self.e = nn.Parameter(torch.randn(channels, channels))
        self.m = nn.Parameter(torch.randn(3, 3))
        self.v = nn.Parameter(torch.randn(3))
        self.n = nn.Parameter(torch.randn(2, 2))
        self.const = nn.Parameter(torch.randn(2))

    def forward(self, ws: WeightSpace) -> WeightSpace:
        (w1, w2), (b1, b2) = ws.weights, ws.biases
        assert b1 is not None and b2 is not None
        mix = "oc,bc...->bo..."
        w1_out = torch.einsum(mix, self.a, w1) + w1 @ self.m
        b1_out = torch.einsum(mix, self.c, b1) + w1 @ self.v
        w2_out = torch.einsum(mix, self.e, w2) + torch.einsum("pq,bcqj->bcpj", self.n, w2)
        b2_out = b2 @ self.n.T + self.const
        return WeightSpace((w1_out, w2_out), (b1_out, b2_out))


def broken_mean_into_bias(ws: WeightSpace) -> WeightSpace:
    """Adds the mean of all of W1 to b1: a sum over a scaled index."""
    (w1, w2), (b1, b2) = ws.weights, ws.biases
    assert b1 is not None
    return WeightSpace((w1, w2), (b1 + w1.mean(dim=(2, 3))[:, :, None], b2))


def broken_roll(ws: WeightSpace) -> WeightSpace:
    """Rolls the hidden axis of b1: not permutation-equivariant."""
    b1 = ws.biases[0]
    assert b1 is not None
    return WeightSpace(ws.weights, (torch.roll(b1, 1, dims=2), *ws.biases[1:]))


def output_bias_sum(ws: WeightSpace) -> Tensor:
    """Invariant in HNP: the output bias is never moved."""
    bias = ws.biases[-1]
    assert bias is not None
    return bias.sum(dim=2)


def hidden_bias_sum(ws: WeightSpace) -> Tensor:
    """Permutation-invariant but not scaling-invariant."""
    bias = ws.biases[0]
    assert bias is not None
    return bias.sum(dim=2)


@pytest.fixture
def relu_layout(zoo: Any) -> WeightSpaceLayout:
    layout: WeightSpaceLayout = zoo.mlp((3, 4, 2), ["relu"])
    return layout


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_correct_layer_passes(relu_layout: WeightSpaceLayout, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = HiddenPositiveLinear().float()
    error = assert_equivariant(layer, relu_layout, dtype=dtype)
    assert error < default_tolerances(dtype)[0]
    assert layer.a.dtype == torch.float32  # the caller's module is not cast


@pytest.mark.parametrize(
    "layer, where",
    [(broken_mean_into_bias, "tensor 'b1'"), (broken_roll, "tensor 'b1'")],
    ids=["sum-over-scaled-index", "roll-hidden-axis"],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_broken_layer_is_caught(
    relu_layout: WeightSpaceLayout, layer: Any, where: str, dtype: torch.dtype
) -> None:
    with pytest.raises(AssertionError, match=f"not equivariant in {dtype}.*{where}"):
        assert_equivariant(layer, relu_layout, dtype=dtype)
    assert equivariance_error(layer, relu_layout) > 1e-3


def test_permutation_only_layout_accepts_sum_over_hidden(zoo: Any) -> None:
    """With GELU (no scaling) the mean over W1 is equivariant; the checker must agree."""
    layout = zoo.mlp((3, 4, 2), ["gelu"])
    assert_equivariant(broken_mean_into_bias, layout)
    with pytest.raises(AssertionError):
        assert_equivariant(broken_roll, layout)


def test_invariant_layers(relu_layout: WeightSpaceLayout, zoo: Any) -> None:
    assert_invariant(output_bias_sum, relu_layout)
    assert invariance_error(output_bias_sum, relu_layout) == 0.0
    with pytest.raises(AssertionError, match=r"not invariant in torch\.float64"):
        assert_invariant(hidden_bias_sum, relu_layout)
    assert_invariant(hidden_bias_sum, zoo.mlp((3, 4, 2), ["gelu"]), dtype=torch.float32)


@pytest.mark.parametrize("kind", ["decoupled_permutation", "decoupled_scale", "permute_fixed"])
def test_sensitivity_of_a_correct_layer(relu_layout: WeightSpaceLayout, kind: str) -> None:
    torch.manual_seed(0)
    transform = sample_outside_group(relu_layout, kind, torch.Generator().manual_seed(0))
    assert_sensitive(HiddenPositiveLinear(), relu_layout, transform, min_error=1e-3)


def test_sensitivity_flags_an_over_constrained_layer(relu_layout: WeightSpaceLayout) -> None:
    """Scalar multiplication commutes with everything: sensitivity is zero."""
    transform = sample_outside_group(relu_layout, "decoupled_permutation")
    assert sensitivity_error(lambda ws: 2.0 * ws, relu_layout, transform) == 0.0
    with pytest.raises(AssertionError, match="over-constrained"):
        assert_sensitive(lambda ws: 2.0 * ws, relu_layout, transform)
    assert sensitivity_error(output_bias_sum, relu_layout, transform) == 0.0


def test_channel_changing_layer(relu_layout: WeightSpaceLayout) -> None:
    def widen(ws: WeightSpace) -> WeightSpace:
        return ws.map(lambda t: torch.cat([t, -2.0 * t, torch.relu(t)], dim=1))

    assert widen(random_weight_space(relu_layout, channels=2)).channels == 6
    assert assert_equivariant(widen, relu_layout, channels=2) < 1e-14
    transform = sample_outside_group(relu_layout, "negative_scale")
    assert sensitivity_error(widen, relu_layout, transform) > 1e-2


def test_custom_tolerances(relu_layout: WeightSpaceLayout) -> None:
    assert_equivariant(broken_mean_into_bias, relu_layout, rtol=1e6, atol=0.0)
    with pytest.raises(ValueError, match="no default tolerances"):
        default_tolerances(torch.int64)
