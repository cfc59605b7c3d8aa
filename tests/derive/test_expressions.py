"""Formulas and the symbolic proof of every map."""

from __future__ import annotations

import pytest

from derive.basis.expressions import formula_text, map_formula, verify_map
from derive.basis.linear import BasisMap, Block
from derive.frontend.spec import mlp_spec
from derive.pipeline import derive

SETTINGS = [
    ((2, 3, 3, 2), "relu", "hidden", "auto"),
    ((2, 3, 3, 2), "tanh", "hidden", "auto"),
    ((2, 3, 3, 2), "identity", "hidden", "auto"),
    ((2, 3, 3, 2), "relu", "hidden", "none"),
    ((2, 3, 3, 2), "relu", "all", "none"),
    ((2, 3, 4, 2), ["relu", "tanh"], "hidden", "auto"),
]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"{s[1]}-{s[2]}-{s[3]}")
def test_every_map_is_proved_symbolically(setting):
    widths, activation, permute, scaling = setting
    derivation = derive(mlp_spec(widths, activation, permute=permute, scaling=scaling))
    basis = derivation.basis
    for block in (*basis.blocks, *basis.constants, *basis.invariants):
        for basis_map in block.maps:
            check = verify_map(derivation.space, basis_map)
            assert check.ok, (block.key, check.detail)


def _space(activation="relu"):
    return derive(mlp_spec((2, 3, 3, 2), activation)).space


def test_proof_rejects_a_sum_over_a_positively_scaled_index():
    """b2'[i] += mean_p W3[x,p]... no: b2'[i] += mean_p W2[i,p] sums over h1 (scaled): not equivariant."""
    bad = BasisMap("b2", "W2", (Block("h2", (0,), (0,)), Block("h1", (), (1,))), (), (), 1)
    check = verify_map(_space("relu"), bad)
    assert not check.ok
    assert "scale factors differ" in check.detail


def test_proof_rejects_a_sign_map_under_positive_scaling_but_accepts_it_under_sign():
    """W3'[x,i] += theta[x] b2[i]: equivariant for sign flips only (d^-1 = d mod 2)."""
    candidate = BasisMap("W3", "b2", (Block("h2", (1,), (0,)),), (0,), (), 2)
    assert not verify_map(_space("relu"), candidate).ok
    assert verify_map(_space("tanh"), candidate).ok


def test_proof_rejects_mixing_spaces():
    bad = BasisMap("b1", "b2", (Block("h1", (0,), (0,)),), (), (), 1)
    assert not verify_map(_space("gelu"), bad).ok


def test_formula_text_and_latex():
    derivation = derive(mlp_spec((2, 3, 3, 2), scaling="none"))
    texts = {formula_text(derivation.space, m) for b in derivation.basis.blocks for m in b.maps}
    assert "W2'[i,j] += mean_p theta * W2[i,p]" in texts
    assert "W1'[i,x] += sum_u theta[x,u] * W1[i,u]" in texts
    block = derivation.basis.by_key["W2<-W2"]
    formula = map_formula(derivation.space, block.maps[0])
    assert formula.text == formula_text(derivation.space, block.maps[0])
    assert r"\mathrel{+}=" in formula.latex
    assert "W^{(2)}" in formula.latex
