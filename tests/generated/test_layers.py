"""Generated linear and invariant layers: exact equivariance, agreement with the slow
reference, sensitivity, for every group, HNP and NP, shallow and deep, narrow and mixed."""

from __future__ import annotations

import pytest
import torch

from derive.verify.reference import ReferenceInvariant, ReferenceLinear, load_into_generated
from nfn_runtime import (
    assert_equivariant,
    assert_invariant,
    equivariance_error,
    random_weight_space,
    sample_outside_group,
    sensitivity_error,
)

CASES = {
    # name: (widths, activation, permute, scaling)
    "L1-hnp-relu": ((3, 2), "relu", "hidden", "auto"),
    "L1-np": ((3, 2), "relu", "all", "none"),
    "L2-hnp-relu": ((3, 4, 2), "relu", "hidden", "auto"),
    "L2-hnp-tanh": ((3, 4, 2), "tanh", "hidden", "auto"),
    "L2-hnp-perm": ((3, 4, 2), "gelu", "hidden", "auto"),
    "L2-np-perm": ((3, 4, 2), "relu", "all", "none"),
    "L3-hnp-relu": ((2, 3, 3, 2), "relu", "hidden", "auto"),
    "L3-hnp-tanh": ((2, 3, 3, 2), "tanh", "hidden", "auto"),
    "L3-hnp-sin": ((2, 3, 3, 2), "sin", "hidden", "auto"),
    "L3-hnp-identity": ((2, 3, 3, 2), "identity", "hidden", "auto"),
    "L3-hnp-perm": ((2, 3, 3, 2), "relu", "hidden", "none"),
    "L3-np-perm": ((2, 3, 3, 2), "relu", "all", "none"),
    "L3-np-relu": ((2, 3, 3, 2), "relu", "all", "auto"),
    "L3-mixed": ((2, 3, 4, 2), ["relu", "tanh"], "hidden", "auto"),
    "L4-mixed": ((3, 4, 3, 5, 2), ["tanh", "identity", "relu"], "hidden", "auto"),
    "L3-width1": ((2, 1, 1, 2), "relu", "hidden", "none"),
    "L3-width1-tanh": ((2, 1, 3, 2), "tanh", "hidden", "auto"),
    "L3-width1-np": ((1, 1, 2, 1), "relu", "all", "none"),
    # a fixed space of size 1 (a SIREN's output, a scalar input) under HNP
    "L3-out1-hnp-perm": ((2, 4, 4, 1), "sin", "hidden", "none"),
    "L3-in1-hnp-perm": ((1, 3, 4, 2), "relu", "hidden", "none"),
    "L6-hnp-perm": ((3, 4, 3, 4, 3, 4, 2), "relu", "hidden", "none"),
    "L6-hnp-relu": ((3, 4, 3, 4, 3, 4, 2), "relu", "hidden", "auto"),
    "L5-np-tanh": ((2, 3, 2, 3, 2, 3), "tanh", "all", "auto"),
}

CHANNELS = [(1, 1), (3, 2)]


def _case(build, name):
    widths, activation, permute, scaling = CASES[name]
    return build(widths, activation, permute, scaling)


@pytest.mark.parametrize("channels", CHANNELS, ids=lambda c: f"C{c[0]}to{c[1]}")
@pytest.mark.parametrize("name", list(CASES))
def test_linear_equivariant_float64(build, name, channels):
    derivation, linear_cls, _ = _case(build, name)
    layer = linear_cls(*channels)
    error = assert_equivariant(
        layer, derivation.space.to_layout(), dtype=torch.float64, channels=channels[0], n_samples=4
    )
    assert error <= 1e-10


@pytest.mark.parametrize("name", list(CASES))
def test_linear_equivariant_float32(build, name):
    derivation, linear_cls, _ = _case(build, name)
    error = equivariance_error(
        linear_cls(3, 2), derivation.space.to_layout(), dtype=torch.float32, channels=3
    )
    assert error <= 1e-4


@pytest.mark.parametrize("name", list(CASES))
def test_invariant_layer_invariant(build, name):
    derivation, _, invariant_cls = _case(build, name)
    layout = derivation.space.to_layout()
    assert (
        assert_invariant(invariant_cls(3, 4), layout, dtype=torch.float64, channels=3, n_samples=4)
        <= 1e-10
    )
    assert assert_invariant(invariant_cls(3, 4), layout, dtype=torch.float32, channels=3) <= 1e-4


@pytest.mark.parametrize("name", list(CASES))
def test_linear_matches_slow_reference(build, name):
    derivation, linear_cls, _ = _case(build, name)
    reference = ReferenceLinear(derivation.basis, 3, 2).double()
    module = linear_cls(3, 2).double()
    load_into_generated(reference, derivation.linear_plan, module)
    x = random_weight_space(derivation.space.to_layout(), 4, 3, torch.float64)
    with torch.no_grad():
        for got, want in zip(module(x).tensors(), reference(x).tensors()):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    count = sum(p.numel() for p in module.parameters())
    assert count == 3 * 2 * derivation.basis.dim + 2 * derivation.basis.constant_dim


@pytest.mark.parametrize("name", list(CASES))
def test_invariant_matches_slow_reference(build, name):
    derivation, _, invariant_cls = _case(build, name)
    reference = ReferenceInvariant(derivation.space, 3, 2).double()
    module = invariant_cls(3, 2).double()
    module.load_state_dict(reference.state_dict(), strict=False)
    x = random_weight_space(derivation.space.to_layout(), 4, 3, torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), reference(x), rtol=1e-12, atol=1e-12)


SENSITIVITY = [
    # (case, outside-group kind, space): transforms the complete basis does not commute with
    ("L3-hnp-perm", "decoupled_permutation", "h1"),
    ("L3-hnp-perm", "decoupled_permutation", "h2"),
    ("L3-hnp-perm", "permute_fixed", "in"),
    ("L3-hnp-perm", "negative_scale", "h1"),
    ("L3-hnp-relu", "decoupled_scale", "h1"),
    ("L3-hnp-relu", "decoupled_permutation", "h1"),
    ("L3-hnp-relu", "permute_fixed", "out"),
    ("L3-hnp-tanh", "decoupled_scale", "h2"),
    ("L3-hnp-tanh", "scale_on_sign_space", "h2"),
    ("L3-np-perm", "decoupled_permutation", "h1"),
    ("L3-np-perm", "decoupled_permutation", "out"),
    ("L3-np-perm", "negative_scale", "out"),
    ("L3-mixed", "decoupled_permutation", "h2"),
    ("L2-hnp-perm", "decoupled_permutation", "h1"),
]


@pytest.mark.parametrize(("name", "kind", "space"), SENSITIVITY, ids=lambda v: str(v))
def test_linear_sensitive_outside_group(build, name, kind, space):
    """A transform outside the group must break the layer (catches over-constrained layers)."""
    derivation, linear_cls, _ = _case(build, name)
    layout = derivation.space.to_layout()
    transform = sample_outside_group(layout, kind, torch.Generator().manual_seed(1), space=space)
    assert sensitivity_error(linear_cls(2, 2), layout, transform, channels=2) > 1e-3


@pytest.mark.parametrize(
    ("name", "kind", "space"),
    [
        ("L3-hnp-perm", "permute_fixed", "in"),
        ("L3-hnp-relu", "negative_scale", "h1"),
        ("L3-hnp-tanh", "scale_on_sign_space", "h1"),
        ("L3-np-perm", "negative_scale", "h1"),
    ],
    ids=lambda v: str(v),
)
def test_invariant_sensitive_outside_group(build, name, kind, space):
    derivation, _, invariant_cls = _case(build, name)
    layout = derivation.space.to_layout()
    transform = sample_outside_group(layout, kind, torch.Generator().manual_seed(1), space=space)
    assert sensitivity_error(invariant_cls(2, 3), layout, transform, channels=2) > 1e-3


def test_positive_layer_is_not_sign_equivariant_when_it_should_not_be(build):
    """The sign-flip layer has maps (W3 <- b2) that the ReLU layer must not have: the sign
    layer breaks under positive scalings of h2, the ReLU layer does not."""
    relu, relu_cls, _ = _case(build, "L3-hnp-relu")
    tanh, tanh_cls, _ = _case(build, "L3-hnp-tanh")
    assert relu.basis.by_key["W3<-b2"].dim == 0
    assert tanh.basis.by_key["W3<-b2"].dim == 2
    relu_layout = relu.space.to_layout()
    # evaluate the tanh layer under the ReLU group: it must fail (positive scales are outside)
    assert equivariance_error(tanh_cls(2, 2), relu_layout, channels=2) > 1e-3
    assert equivariance_error(relu_cls(2, 2), relu_layout, channels=2) <= 1e-10
