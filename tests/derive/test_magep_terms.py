"""MAGEP terms: the family of the paper's layer, as proved index diagrams; coverage of the
complete family; the chain structure they need."""

from __future__ import annotations

import pytest

from derive.basis.magep import chain_of, magep_terms
from derive.basis.magep_diagrams import diagram_signature, magep_coverage, term_diagrams
from derive.basis.poly_formulas import poly_formula_text, verify_poly_map
from derive.basis.polynomial import enumerate_polynomial
from derive.errors import GenerationError
from derive.frontend.spec import mlp_spec
from derive.pipeline import derive


@pytest.mark.parametrize(
    "activation", ["relu", "tanh", "identity", "gelu", ["relu", "tanh", "sin"]], ids=str
)
@pytest.mark.parametrize("widths", [(2, 3, 2), (2, 3, 3, 2), (2, 3, 4, 3, 2)], ids=str)
def test_every_magep_term_is_proved_as_a_diagram(widths, activation):
    if isinstance(activation, list):
        activation = activation[: len(widths) - 2]
    space = derive(mlp_spec(widths, activation)).space
    for term in magep_terms(space):
        diagrams = term_diagrams(space, term)
        assert len(diagrams) == (len(term.degrees) if term.kind == "Wb" else 1)
        for diagram in diagrams:
            assert diagram.degree in term.degrees
            check = verify_poly_map(space, diagram)
            assert check.ok, (term.var, poly_formula_text(space, diagram), check.detail)


def test_term_family_of_the_paper():
    """For L = 3: W'(i) from [WW] and [bW]; b'(i) from [W](i,0) (i >= 2), [WW](i,0)(L,0),
    [bW](i)(L,0), sum_t [Wb](i,t) (i >= 2); b'(L) also from 2 x (L-1) invariants."""
    space = derive(mlp_spec((2, 3, 3, 2), "relu")).space
    kinds = [(t.output, t.kind) for t in magep_terms(space)]
    for i in (1, 2, 3):
        assert (f"W{i}", "WW") in kinds and (f"W{i}", "bW") in kinds
        assert (f"b{i}", "WW0") in kinds and (f"b{i}", "bW0") in kinds
    assert ("b1", "W") not in kinds and ("b2", "W") in kinds and ("b3", "W") in kinds
    assert [k for k in kinds if k[1] in ("trWW", "trbW")] == [("b3", "trWW"), ("b3", "trbW")] * 2
    degrees = {t.var: t.degrees for t in magep_terms(space)}
    assert degrees["ww_w2"] == (4,)  # L + 1
    assert degrees["bw_w2"] == (3,)  # L - i + 2
    assert degrees["ww0_b2"] == (5,)  # i + L
    assert degrees["wb_b3"] == (3, 2)  # i - t + 1 for t = 1, 2


def test_coverage_of_the_complete_family():
    space = derive(mlp_spec((2, 3, 3, 2), "relu")).space
    complete = [m for b in enumerate_polynomial(space, 2).blocks for m in b.maps]
    covered, lacking = magep_coverage(space, magep_terms(space, 2), complete)
    assert len(complete) == 13 and len(covered) == 4 and len(lacking) == 9
    lacking_text = {poly_formula_text(space, m) for m in lacking}
    assert "W1'[i,x] += sum_uv theta[x,u,v] * W1[i,u] * b3[v]" in lacking_text
    # every MAGEP degree-2 term is one of the complete terms
    signatures = {diagram_signature(m) for m in complete}
    for term in magep_terms(space, 2):
        for diagram in term_diagrams(space, term):
            assert diagram_signature(diagram) in signatures


def test_signature_ignores_relabelling_identical_factors():
    space = derive(mlp_spec((2, 3, 3, 2), "tanh")).space
    maps = [
        m
        for b in enumerate_polynomial(space, 2).blocks
        if b.factors[0] == b.factors[1]
        for m in b.maps
    ]
    assert maps
    for m in maps:
        flipped = type(m)(
            m.output,
            m.factors,
            tuple(
                type(b)(b.space, b.outputs, tuple(sorted((1 - f, p) for f, p in b.inputs)))
                for b in m.blocks
            ),
            m.out_fixed,
            m.in_fixed,
            m.num_params,
        )
        assert diagram_signature(flipped) == diagram_signature(m)


def test_chain_needs_fixed_ends_and_matrix_weights():
    with pytest.raises(GenerationError, match="NP setting"):
        chain_of(derive(mlp_spec((2, 3, 2), permute="all")).space)
    chain = chain_of(derive(mlp_spec((5, 4, 3, 2))).space)
    assert chain.spaces == ("in", "h1", "h2", "out") and chain.sizes == (5, 4, 3, 2)
