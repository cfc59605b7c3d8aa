"""The complete equivariant polynomial terms: Burnside counts, canonical representatives,
symbolic proofs, agreement with the linear basis at degree 1, speed and formulas."""

from __future__ import annotations

import itertools
import time

import pytest

from derive.basis.linear import linear_basis
from derive.basis.poly_formulas import (
    poly_formula_latex,
    poly_formula_text,
    scaling_signature,
    verify_poly_map,
)
from derive.basis.polynomial import (
    PolyBlock,
    PolyMap,
    count_block,
    count_polynomial,
    enumerate_block_poly,
    enumerate_polynomial,
)
from derive.errors import GenerationError
from derive.frontend.spec import mlp_spec
from derive.pipeline import derive

SETTINGS = {
    "relu-2332": ((2, 3, 3, 2), "relu", "hidden", "auto"),
    "tanh-2332": ((2, 3, 3, 2), "tanh", "hidden", "auto"),
    "identity-2332": ((2, 3, 3, 2), "identity", "hidden", "auto"),
    "perm-2332": ((2, 3, 3, 2), "relu", "hidden", "none"),
    "np-232": ((2, 3, 2), "relu", "all", "none"),
    "mixed-2342": ((2, 3, 4, 2), ["relu", "tanh"], "hidden", "auto"),
    "width1-2112": ((2, 1, 1, 2), "tanh", "hidden", "auto"),
}
DEEP = (8, *(16,) * 15, 4)


def _space(name_or_setting):
    setting = SETTINGS.get(name_or_setting, name_or_setting)
    widths, activation, permute, scaling = setting
    return derive(mlp_spec(widths, activation, permute=permute, scaling=scaling)).space


def _orbit(m: PolyMap) -> set[frozenset[tuple[str, tuple[int, ...], frozenset[tuple[int, int]]]]]:
    """Every relabelling of identical factors applied to the diagram of ``m``."""
    images = set()
    for perm in itertools.permutations(range(m.degree)):
        if any(m.factors[k] != m.factors[perm[k]] for k in range(m.degree)):
            continue
        images.add(
            frozenset(
                (b.space, b.outputs, frozenset((perm[k], a) for k, a in b.inputs)) for b in m.blocks
            )
        )
    return images


@pytest.mark.parametrize("degree", [1, 2, 3], ids=lambda d: f"degree{d}")
@pytest.mark.parametrize("name", list(SETTINGS))
def test_materialized_terms_match_burnside_counts_block_by_block(name, degree):
    space = _space(name)
    basis = enumerate_polynomial(space, degree, limit=None)
    counts = count_polynomial(space, degree)
    assert {b.key: (b.count, b.dim) for b in basis.blocks} == counts
    assert (basis.count, basis.dim) == (
        sum(c for c, _ in counts.values()),
        sum(d for _, d in counts.values()),
    )
    for block in basis.blocks:
        assert count_block(space, block.output, block.factors) == (block.count, block.dim)


@pytest.mark.parametrize("degree", [2, 3], ids=lambda d: f"degree{d}")
@pytest.mark.parametrize("name", list(SETTINGS))
def test_canonical_representatives_are_unique(name, degree):
    space = _space(name)
    for block in enumerate_polynomial(space, degree, limit=None).blocks:
        seen: set[frozenset[tuple[str, tuple[int, ...], frozenset[tuple[int, int]]]]] = set()
        for m in block.maps:
            orbit = _orbit(m)
            assert not (orbit & seen), (block.key, poly_formula_text(space, m))
            seen |= orbit


@pytest.mark.parametrize("name", list(SETTINGS))
def test_every_term_is_proved_symbolically(name):
    space = _space(name)
    degrees = (1, 2, 3) if name in ("relu-2332", "tanh-2332", "width1-2112") else (1, 2)
    for degree in degrees:
        for block in enumerate_polynomial(space, degree, limit=None).blocks:
            for m in block.maps:
                check = verify_poly_map(space, m)
                assert check.ok, (block.key, poly_formula_text(space, m), check.detail)


def test_proof_rejects_unbalanced_terms():
    relu, tanh = _space("relu-2332"), _space("tanh-2332")
    # W2'[i,j] += theta * W2[i,j] * W2[i,j]: gains d_h2(i)^2 / d_h1(j)^2, needs d_h2(i) / d_h1(j)
    square = PolyMap(
        "W2",
        ("W2", "W2"),
        (PolyBlock("h2", (0,), ((0, 0), (1, 0))), PolyBlock("h1", (1,), ((0, 1), (1, 1)))),
        (),
        (),
        1,
    )
    assert not verify_poly_map(relu, square).ok
    assert "scale factors differ" in verify_poly_map(tanh, square).detail
    # b1'[i] += mean_p theta * W2[p,i] * b2[p]: h2 gains d^2, balanced for sign flips only
    sign_only = PolyMap(
        "b1",
        ("W2", "b2"),
        (PolyBlock("h1", (0,), ((0, 1),)), PolyBlock("h2", (), ((0, 0), (1, 0)))),
        (),
        (),
        1,
    )
    assert verify_poly_map(tanh, sign_only).ok
    assert not verify_poly_map(relu, sign_only).ok
    # an index shared by two spaces, and a position left out
    mixed = PolyMap("b1", ("b2", "b2"), (PolyBlock("h1", (0,), ((0, 0), (1, 0))),), (), (), 1)
    assert "mixes spaces" in verify_poly_map(_space("perm-2332"), mixed).detail
    partial = PolyMap("b1", ("b1", "b1"), (PolyBlock("h1", (0,), ((0, 0),)),), (), (), 1)
    assert not verify_poly_map(_space("perm-2332"), partial).ok


@pytest.mark.parametrize(
    "setting",
    [
        ((2, 3, 3, 2), "relu", "hidden", "auto"),
        ((2, 3, 3, 2), "tanh", "hidden", "auto"),
        ((2, 3, 3, 2), "relu", "hidden", "none"),
        ((2, 3, 2), "relu", "all", "none"),
        ((2, 1, 1, 2), "identity", "hidden", "auto"),
        ((3, 2), "relu", "all", "none"),
    ],
    ids=lambda s: f"{s[1]}-{s[2]}-{s[3]}-{''.join(map(str, s[0]))}",
)
def test_degree_one_reproduces_the_linear_basis(setting):
    space = _space(setting)
    linear = linear_basis(space)
    degree1 = count_polynomial(space, 1)
    for block in (*linear.blocks, *linear.invariants):
        assert degree1.get(block.key, (0, 0)) == (len(block.maps), block.dim), block.key
    degree0 = count_polynomial(space, 0)
    for block in linear.constants:
        assert degree0.get(block.key, (0, 0)) == (len(block.maps), block.dim), block.key


def test_enumeration_is_deterministic():
    space = _space("perm-2332")
    first, second = enumerate_polynomial(space, 2), enumerate_polynomial(space, 2)
    assert first == second
    assert list(count_polynomial(space, 2)) == [b.key for b in first.blocks]
    keys = [b.key for b in first.blocks]
    assert keys[0] == "W1<-W1*W1" and keys[-1] == "inv<-b3*b3"  # (output, factors) order
    texts = [poly_formula_text(space, m) for b in first.blocks for m in b.maps]
    assert texts == [poly_formula_text(space, m) for b in second.blocks for m in b.maps]


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_sixteen_layer_mlp_enumerates_fast(activation):
    space = derive(mlp_spec(DEEP, activation)).space
    start = time.perf_counter()
    basis = enumerate_polynomial(space, 2)
    counts3 = count_polynomial(space, 3)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0
    assert basis.count == sum(c for c, _ in count_polynomial(space, 2).values())
    assert {"relu": (52, 592), "tanh": (151, 1095)}[activation] == (basis.count, basis.dim)
    assert sum(c for c, _ in counts3.values()) == {"relu": 105, "tanh": 1669}[activation]


def test_limit_reports_the_exact_count_and_how_to_raise_it():
    space = derive(mlp_spec(DEEP, "relu", scaling="none")).space
    total = sum(c for c, _ in count_polynomial(space, 2).values())
    assert total == 26454
    with pytest.raises(GenerationError) as caught:
        enumerate_polynomial(space, 2)
    message = str(caught.value)
    assert "\n" not in message
    assert "26454 terms" in message and "20000" in message
    assert "limit=" in message and "--max-terms N" in message
    with pytest.raises(GenerationError, match="2500 terms"):
        enumerate_polynomial(_space("perm-2332"), 3, limit=2499)
    assert enumerate_polynomial(_space("perm-2332"), 3, limit=2500).count == 2500


def test_degree_two_totals_at_2332():
    totals = {
        name: tuple(map(sum, zip(*count_polynomial(_space(name), 2).values())))
        for name in ("relu-2332", "tanh-2332", "perm-2332")
    }
    assert totals == {"relu-2332": (13, 48), "tanh-2332": (37, 113), "perm-2332": (428, 1102)}


def _texts(space, degree=2):
    basis = enumerate_polynomial(space, degree, limit=None)
    return {b.key: [poly_formula_text(space, m) for m in b.maps] for b in basis.blocks}


def test_formula_text_examples():
    relu = _texts(_space("relu-2332"))
    assert relu["W2<-W2*b3"] == ["W2'[i,j] += sum_u theta[u] * W2[i,j] * b3[u]"]
    assert relu["b2<-b1*W2"] == ["b2'[i] += mean_p theta * b1[p] * W2[i,p]"]
    assert relu["b2<-W1*W2"] == ["b2'[i] += mean_p sum_u theta[u] * W1[p,u] * W2[i,p]"]
    assert relu["inv<-b3*b3"] == ["y += sum_uv theta[u,v] * b3[u] * b3[v]"]
    tanh = _texts(_space("tanh-2332"))
    assert tanh["b3<-W2*W2"] == ["b3'[x] += mean_pq theta[x] * W2[p,q] * W2[p,q]"]
    perm = _texts(_space("perm-2332"))
    assert perm["b2<-b2*b2"] == [
        "b2'[i] += theta * b2[i] * b2[i]",
        "b2'[i] += mean_p theta * b2[p] * b2[p]",
        "b2'[i] += mean_p theta * b2[p] * b2[i]",
        "b2'[i] += mean_pq theta * b2[p] * b2[q]",
    ]
    assert "W2'[i,j] += mean_p theta * b1[p] * W2[i,p]" in perm["W2<-b1*W2"]


def test_stabilizers_share_parameters_and_signatures_balance():
    relu = _space("relu-2332")
    (square,) = enumerate_block_poly(relu, None, ["b3", "b3"])
    assert square.num_params == 3  # a symmetric 2 x 2 theta
    assert square.key == "inv<-b3*b3" and square.degree == 2
    (pair,) = enumerate_block_poly(relu, "b3", ["b3", "b3"])
    assert pair.num_params == 6
    (path,) = enumerate_block_poly(relu, "b2", ["W2", "b1"])  # factors sorted in tensor order
    assert path.factors == ("b1", "W2")
    assert [b.role for b in path.blocks] == ["matched", "reduced"]
    assert scaling_signature(relu, path) == (("h2", 1, 1), ("h1", 0, 0))
    tanh = _space("tanh-2332")
    (norm,) = enumerate_block_poly(tanh, "b3", ["W2", "W2"])
    assert scaling_signature(tanh, norm) == (("h2", 2, 0), ("h1", -2, 0))
    latex = poly_formula_latex(tanh, norm)
    assert latex.startswith("{b^{(3)}'}_{x} \\mathrel{+}= ") and "\\theta" in latex
