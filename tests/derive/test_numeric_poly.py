"""Completeness of the polynomial terms: the Burnside dimension of every block equals the numeric
dimension of equivariant maps from the symmetrized product of its factors (docs/math.md sections 5-6)."""

from __future__ import annotations

import itertools

import pytest
import torch

from derive.basis.polynomial import count_block
from derive.frontend.spec import mlp_spec
from derive.pipeline import derive
from derive.verify.numeric_poly import product_action, sym_power_dimension, symmetric_basis

SETTINGS = {
    "relu-232": ((2, 3, 2), "relu", "hidden", "auto"),
    "tanh-232": ((2, 3, 2), "tanh", "hidden", "auto"),
    "identity-222": ((2, 2, 2), "identity", "hidden", "auto"),
    "perm-232": ((2, 3, 2), "relu", "hidden", "none"),
    "np-232": ((2, 3, 2), "relu", "all", "none"),
    "np-tanh-121": ((1, 2, 1), "tanh", "all", "auto"),
    "np-identity-212": ((2, 1, 2), "identity", "all", "auto"),
    "mixed-2222": ((2, 2, 2, 2), ["tanh", "relu"], "hidden", "auto"),
    "perm-2222": ((2, 2, 2, 2), "gelu", "hidden", "auto"),
    "width1-perm-212": ((2, 1, 2), "relu", "hidden", "none"),
    "width1-tanh-2112": ((2, 1, 1, 2), "tanh", "hidden", "auto"),
    "width1-relu-2112": ((2, 1, 1, 2), "relu", "hidden", "auto"),
}


def _space(setting):
    widths, activation, permute, scaling = setting
    return derive(mlp_spec(widths, activation, permute=permute, scaling=scaling)).space


def _blocks(space, degree):
    for output in (*space.tensors, None):
        for factors in itertools.combinations_with_replacement(space.tensors, degree):
            yield output, factors


def _name(output, factors):
    return f"{output.name if output else 'inv'}<-{'*'.join(f.name for f in factors)}"


@pytest.mark.parametrize("name", list(SETTINGS))
def test_degree_two_dimension_equals_null_space_for_every_block(name):
    space = _space(SETTINGS[name])
    mismatches, nonzero = [], 0
    for output, factors in _blocks(space, 2):
        symbolic = count_block(space, output, factors)[1]
        numeric = sym_power_dimension(space, output, factors)
        nonzero += symbolic > 0
        if symbolic != numeric:
            mismatches.append((_name(output, factors), symbolic, numeric))
    assert not mismatches
    assert nonzero > 0


REPORTED_2332 = {"relu": (13, 48), "tanh": (37, 113)}


@pytest.mark.parametrize("activation", list(REPORTED_2332))
def test_degree_two_totals_at_the_reported_widths_2332(activation):
    """The reported term counts and dimensions (symbolic only; the numeric check per block runs at
    the smaller widths above, and at these widths in the slow tier)."""
    space = _space(((2, 3, 3, 2), activation, "hidden", "auto"))
    counts = [count_block(space, output, factors) for output, factors in _blocks(space, 2)]
    assert tuple(map(sum, zip(*counts))) == REPORTED_2332[activation]


@pytest.mark.slow
@pytest.mark.parametrize("activation", list(REPORTED_2332))
def test_degree_two_at_the_reported_widths_2332(activation):
    space = _space(((2, 3, 3, 2), activation, "hidden", "auto"))
    totals = [0, 0]
    for output, factors in _blocks(space, 2):
        terms, dim = count_block(space, output, factors)
        assert dim == sym_power_dimension(space, output, factors), _name(output, factors)
        totals = [totals[0] + terms, totals[1] + dim]
    assert tuple(totals) == REPORTED_2332[activation]


@pytest.mark.parametrize("name", ["relu-222", "tanh-222", "np-222"])
def test_degree_three_dimension_for_every_block_at_width_two(name):
    setting = {
        "relu-222": ((2, 2, 2), "relu", "hidden", "auto"),
        "tanh-222": ((2, 2, 2), "tanh", "hidden", "auto"),
        "np-222": ((2, 2, 2), "relu", "all", "none"),
    }[name]
    space = _space(setting)
    for output, factors in _blocks(space, 3):
        symbolic = count_block(space, output, factors)[1]
        assert symbolic == sym_power_dimension(space, output, factors), _name(output, factors)


DEGREE_THREE = {
    # three identical factors: fixed axes only (Sym^3 of R^2 has dimension 4)
    "relu-222-inv<-b2^3": (((2, 2, 2), "relu", "hidden", "auto"), None, ("b2", "b2", "b2"), 4),
    # three identical factors with a permuted and a fixed axis
    "perm-222-W1<-W1^3": (((2, 2, 2), "relu", "hidden", "none"), "W1", ("W1",) * 3, None),
    # three identical factors, no fixed axis
    "perm-2222-W2<-W2^3": (((2, 2, 2, 2), "gelu", "hidden", "auto"), "W2", ("W2",) * 3, None),
    # fixed axes on repeated factors (theta symmetric in the two W3 slots)
    "tanh-2222-b3<-W3*W3*b3": (
        ((2, 2, 2, 2), "tanh", "hidden", "auto"),
        "b3",
        ("W3", "W3", "b3"),
        None,
    ),
    "identity-2222-W3<-W3*b3*b3": (
        ((2, 2, 2, 2), "identity", "hidden", "auto"),
        "W3",
        ("W3", "b3", "b3"),
        None,
    ),
    "width1-tanh-2112-b3<-W3*W3*b3": (
        ((2, 1, 1, 2), "tanh", "hidden", "auto"),
        "b3",
        ("W3", "W3", "b3"),
        None,
    ),
    "np-121-b1<-W1*W1*W2": (((1, 2, 1), "tanh", "all", "auto"), "b1", ("W1", "W1", "W2"), None),
}


@pytest.mark.parametrize("name", list(DEGREE_THREE))
def test_selected_degree_three_blocks(name):
    setting, output, factors, expected = DEGREE_THREE[name]
    space = _space(setting)
    symbolic = count_block(space, output, factors)[1]
    assert symbolic == sym_power_dimension(space, output, factors)
    assert symbolic > 0
    if expected is not None:
        assert symbolic == expected


def test_symmetric_basis_is_orthonormal_and_symmetric():
    basis = symmetric_basis([3, 3, 2], [0, 0, 2])
    assert basis.shape == (18, 12)  # Sym^2(R^3) x R^2
    assert torch.allclose(basis.T @ basis, torch.eye(12, dtype=torch.float64))
    swapped = basis.reshape(3, 3, 2, 12).transpose(0, 1).reshape(18, 12)
    assert torch.allclose(swapped, basis)


def test_lie_generators_act_as_derivations_not_kronecker_products():
    x = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    derivation = product_action([x, x], lie=True)
    assert torch.allclose(torch.diag(derivation), torch.tensor([2.0, 0.0, 0.0, -2.0]).double())
    assert torch.allclose(product_action([x, x], lie=False), torch.kron(x, x))
