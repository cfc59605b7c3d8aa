"""Ground truth for the group: ``f(x; g.theta) = f(x; theta)`` on real networks, in float64,
and transforms outside the group change the function."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from nfn_runtime import (
    apply_group_element,
    network_symmetry_error,
    outside_group_kinds,
    sample_group_element,
    sample_outside_group,
    state_dicts_from_weight_space,
    weight_space_from_state_dicts,
)

MLP_CASES = {
    "relu-positive": ((3, 5, 4, 2), ["relu", "relu"]),
    "tanh-sign": ((3, 5, 4, 2), ["tanh", "tanh"]),
    "sin-sign": ((3, 4, 2), ["sin"]),
    "identity-nonzero": ((3, 5, 4, 2), ["identity", "identity"]),
    "gelu-permutation": ((3, 5, 2), ["gelu"]),
    "mixed-width1": ((3, 1, 4, 1, 2), ["relu", "identity", "tanh"]),
}


@pytest.mark.parametrize("case", sorted(MLP_CASES))
def test_group_preserves_mlp_function(zoo: Any, case: str) -> None:
    widths, activations = MLP_CASES[case]
    torch.manual_seed(0)
    model = zoo.mlp_network(widths, activations)
    layout = zoo.mlp(widths, activations)
    inputs = torch.randn(16, widths[0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        assert network_symmetry_error(model, layout, inputs, generator=gen) < 1e-10


def test_group_preserves_conv_flatten_function(zoo: Any) -> None:
    torch.manual_seed(0)
    model, layout = zoo.conv_network(), zoo.conv()
    inputs = torch.randn(8, 2, 4, 4, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        assert network_symmetry_error(model, layout, inputs, generator=gen) < 1e-10


@pytest.mark.parametrize("activation, scaling", [("relu", "positive"), ("tanh", "sign")])
def test_group_preserves_residual_function(zoo: Any, activation: str, scaling: str) -> None:
    """A tied space: ``W2`` carries the same space on both axes."""
    torch.manual_seed(0)
    model = zoo.residual_network(activation).double()
    layout = zoo.tied(scaling)
    inputs = torch.randn(16, 3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        assert network_symmetry_error(model, layout, inputs, generator=gen) < 1e-10


def test_np_setting_permutes_inputs_and_outputs(zoo: Any) -> None:
    """In the NP setting, permuting input/output neurons permutes the network's features."""
    widths, activations = (3, 5, 4), ["relu"]
    torch.manual_seed(0)
    model = zoo.mlp_network(widths, activations)
    layout = zoo.mlp(widths, activations, setting="np")
    theta = weight_space_from_state_dicts(model.state_dict(), layout)
    g = sample_group_element(layout, torch.Generator().manual_seed(4))
    moved = state_dicts_from_weight_space(apply_group_element(theta, layout, g), layout)[0]
    x = torch.randn(16, 3, dtype=torch.float64)
    x_moved = torch.empty_like(x)
    x_moved[:, g.permutations["in"]] = x
    expected = torch.empty(16, 4, dtype=torch.float64)
    expected[:, g.permutations["out"]] = model(x).detach()
    output = torch.func.functional_call(model, moved, (x_moved,))
    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "case, kind",
    [
        ("relu-positive", "negative_scale"),
        ("relu-positive", "decoupled_permutation"),
        ("relu-positive", "decoupled_scale"),
        ("relu-positive", "permute_fixed"),
        ("tanh-sign", "scale_on_sign_space"),
        ("identity-nonzero", "decoupled_scale"),
    ],
)
def test_outside_group_changes_mlp_function(zoo: Any, case: str, kind: str) -> None:
    widths, activations = MLP_CASES[case]
    torch.manual_seed(0)
    model = zoo.mlp_network(widths, activations)
    layout = zoo.mlp(widths, activations)
    assert kind in outside_group_kinds(layout)
    inputs = torch.randn(16, widths[0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        transform = sample_outside_group(layout, kind, gen)
        assert network_symmetry_error(model, layout, inputs, transform) > 1e-3


@pytest.mark.parametrize("network", ["conv-flatten", "residual-relu"])
def test_outside_group_changes_conv_and_residual_function(zoo: Any, network: str) -> None:
    torch.manual_seed(0)
    if network == "conv-flatten":
        model, layout = zoo.conv_network(), zoo.conv()
        inputs = torch.randn(8, 2, 4, 4, dtype=torch.float64)
    else:
        model, layout = zoo.residual_network("relu").double(), zoo.tied("positive")
        inputs = torch.randn(16, 3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(6)
    kinds = outside_group_kinds(layout)
    assert {"decoupled_permutation", "decoupled_scale", "permute_fixed"} <= set(kinds)
    for kind in kinds:
        transform = sample_outside_group(layout, kind, gen)
        assert network_symmetry_error(model, layout, inputs, transform) > 1e-3, transform


def test_negative_scale_on_relu_space_changes_function(zoo: Any) -> None:
    widths, activations = (3, 5, 2), ["relu"]
    torch.manual_seed(0)
    model = zoo.mlp_network(widths, activations)
    layout = zoo.mlp(widths, activations)
    transform = sample_outside_group(layout, "negative_scale", space="h1")
    inputs = torch.randn(16, 3, dtype=torch.float64)
    assert network_symmetry_error(model, layout, inputs, transform) > 1e-2
