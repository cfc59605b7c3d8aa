"""Generated polynomial layers (MAGEP and complete families) and polynomial invariant layers:
exact equivariance, agreement with a reference that evaluates every term separately,
sensitivity, stable scale at initialization, shared path products, options."""

from __future__ import annotations

import re
from functools import cache

import pytest
import torch

from derive.basis.magep import magep_terms
from derive.errors import GenerationError
from derive.frontend.spec import mlp_spec
from derive.pipeline import derive, generate
from derive.plan.invariant import invariant_plan
from derive.plan.polynomial import polynomial_plan
from derive.verify.checklist import load_generated
from derive.verify.polynomial import load_invariant_reference, output_scale
from derive.verify.reference import ReferenceInvariant, load_into_generated
from derive.verify.reference_magep import magep_term_value
from derive.verify.reference_poly import ReferencePolynomial
from nfn_runtime import (
    assert_equivariant,
    assert_invariant,
    equivariance_error,
    random_weight_space,
    sample_outside_group,
    sensitivity_error,
)

CASES = {
    # name: (widths, activation, scaling, family, degree)
    "L1-relu": ((3, 2), "relu", "auto", "magep", None),
    "L2-relu": ((3, 4, 2), "relu", "auto", "magep", None),
    "L2-tanh": ((3, 4, 2), "tanh", "auto", "magep", None),
    "L3-relu": ((2, 3, 3, 2), "relu", "auto", "magep", None),
    "L3-tanh": ((2, 3, 3, 2), "tanh", "auto", "magep", None),
    "L3-sin": ((2, 3, 3, 2), "sin", "auto", "magep", None),
    "L3-identity": ((2, 3, 3, 2), "identity", "auto", "magep", None),
    "L3-perm": ((2, 3, 3, 2), "relu", "none", "magep", None),
    "L3-width1": ((2, 1, 1, 2), "relu", "auto", "magep", None),
    "L4-mixed": ((3, 4, 3, 5, 2), ["tanh", "identity", "relu"], "auto", "magep", None),
    "L5-relu-deg3": ((2, 3, 2, 3, 2, 2), "relu", "auto", "magep", 3),
    "L8-tanh": ((2, 3, 3, 3, 3, 3, 3, 3, 2), "tanh", "auto", "magep", None),
    "L3-relu-complete2": ((2, 3, 3, 2), "relu", "auto", "complete", 2),
    "L3-tanh-complete2": ((2, 3, 3, 2), "tanh", "auto", "complete", 2),
    "L2-tanh-complete3": ((2, 2, 2), "tanh", "auto", "complete", 3),
    "L2-np-complete2": ((2, 2, 2), "gelu", "auto", "complete", 2),
}


@cache
def _case(name: str):
    widths, activation, scaling, family, degree = CASES[name]
    act = tuple(activation) if isinstance(activation, list) else activation
    permute = "all" if "np" in name else "hidden"
    derivation = derive(mlp_spec(widths, act, permute=permute, scaling=scaling, name="case"))
    source = generate(derivation, "polynomial", family=family, degree=degree)
    module = load_generated(source, "case_polynomial")
    return derivation, getattr(module, module.__all__[0]), source


@pytest.mark.parametrize("channels", [(1, 1), (3, 2)], ids=lambda c: f"C{c[0]}to{c[1]}")
@pytest.mark.parametrize("name", list(CASES))
def test_polynomial_equivariant(name, channels):
    derivation, cls, _ = _case(name)
    layout = derivation.space.to_layout()
    assert assert_equivariant(cls(*channels), layout, torch.float64, n_samples=3) <= 1e-10
    assert equivariance_error(cls(*channels), layout, dtype=torch.float32) <= 1e-4


@pytest.mark.parametrize("name", list(CASES))
def test_polynomial_matches_per_term_reference(name):
    derivation, cls, _ = _case(name)
    _, _, _, family, degree = CASES[name]
    pplan = polynomial_plan(derivation.basis, family, degree)
    reference = ReferencePolynomial(pplan, derivation.basis, 3, 2).double()
    module = cls(3, 2).double()
    load_into_generated(reference, pplan.plan, module)
    x = random_weight_space(derivation.space.to_layout(), 4, 3, torch.float64)
    with torch.no_grad():
        for got, want in zip(module(x).tensors(), reference(x).tensors()):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "kind", "space"),
    [
        ("L3-relu", "decoupled_scale", "h1"),
        ("L3-relu", "decoupled_permutation", "h2"),
        ("L3-tanh", "scale_on_sign_space", "h2"),  # W3 <- b2 is a sign-only map
        ("L3-perm", "negative_scale", "h2"),
        ("L3-relu-complete2", "permute_fixed", "out"),
    ],
    ids=str,
)
def test_polynomial_sensitive_outside_group(name, kind, space):
    derivation, cls, _ = _case(name)
    layout = derivation.space.to_layout()
    transform = sample_outside_group(layout, kind, torch.Generator().manual_seed(2), space=space)
    assert sensitivity_error(cls(2, 2), layout, transform, channels=2) > 1e-3


def test_sign_group_has_more_polynomial_terms():
    """Characters balance mod 2 under sign flips, in Z under positive scalings: the tanh twin of
    a ReLU network has strictly more degree-2 equivariant terms."""
    relu, relu_cls, _ = _case("L3-relu-complete2")
    tanh, _, _ = _case("L3-tanh-complete2")
    assert equivariance_error(relu_cls(2, 2), relu.space.to_layout()) <= 1e-10
    tanh_terms = len(polynomial_plan(tanh.basis, "complete", 2).terms)
    relu_terms = len(polynomial_plan(relu.basis, "complete", 2).terms)
    assert tanh_terms > relu_terms  # sign flips allow more (mod 2) index diagrams


@pytest.mark.parametrize("family", ["magep", "complete"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_polynomial_invariant_layer(family, activation):
    derivation = derive(mlp_spec((2, 3, 3, 2), activation, name="case"))
    degree = 2 if family == "complete" else None
    source = generate(derivation, "polynomial-invariant", family=family, degree=degree)
    module = load_generated(source, "case_poly_inv")
    cls = getattr(module, module.__all__[0])
    layout = derivation.space.to_layout()
    assert assert_invariant(cls(2, 3), layout, torch.float64, channels=2) <= 1e-10
    assert assert_invariant(cls(2, 3), layout, torch.float32, channels=2) <= 1e-4
    if family == "magep":
        _assert_matches_invariant_reference(derivation, cls, degree)
        transform = sample_outside_group(
            layout, "permute_fixed", torch.Generator().manual_seed(0), space="out"
        )
        assert sensitivity_error(cls(2, 3), layout, transform, channels=2) > 1e-3


def _assert_matches_invariant_reference(derivation, cls, degree) -> None:
    """The generated polynomial invariant layer equals the reference (each MAGEP invariant from
    its definition) with the same parameters, in float64 on 3 weight spaces, 2 -> 3 channels."""
    plan = invariant_plan(derivation.space, True, degree)
    reference = ReferenceInvariant(derivation.space, 2, 3, plan.magep).double()
    generated = cls(2, 3).double()
    load_invariant_reference(reference, generated)
    x = random_weight_space(derivation.space.to_layout(), 3, 2, torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(generated(x), reference(x), rtol=1e-10, atol=1e-12)


INVARIANT_CASES = ["L1-relu", "L2-tanh", "L3-identity", "L3-width1", "L4-mixed", "L5-relu-deg3"]


@pytest.mark.parametrize("name", INVARIANT_CASES)
def test_polynomial_invariant_matches_reference_at_every_depth(name):
    """The suffix-only route, sum_t q_t b_t and the cyclic-trace identity agree with the
    reference (each term from its definition) in float64, and the layer is invariant."""
    widths, activation, scaling, _, degree = CASES[name]
    act = tuple(activation) if isinstance(activation, list) else activation
    derivation = derive(mlp_spec(widths, act, scaling=scaling, name="case"))
    module = load_generated(
        generate(derivation, "polynomial-invariant", degree=degree), "case_poly_inv_depth"
    )
    cls = getattr(module, module.__all__[0])
    layout = derivation.space.to_layout()
    _assert_matches_invariant_reference(derivation, cls, degree)
    assert assert_invariant(cls(2, 3), layout, torch.float64, channels=2) <= 1e-10


def test_invariant_path_products_take_the_cheaper_side():
    """With few outputs, [W](L,0) ends the suffix chain (n_L rows): no prefix product, and no
    matrix-vector product with a hidden weight; the equivariant layer keeps its prefix chain and
    carries sum_t [Wb](i,t) in it."""
    derivation = derive(mlp_spec((64, 128, 128, 128, 10), "relu"))
    invariant = generate(derivation, "polynomial-invariant")
    assert "p2 = " not in invariant and "p3 = " not in invariant
    assert "q0 = torch.matmul(q1, w1)" in invariant
    assert "torch.matmul(w2" not in invariant and "torch.matmul(w3" not in invariant
    equivariant = generate(derivation, "polynomial")
    assert "pb2 = torch.matmul(w2, pcol1)" in equivariant
    assert "torch.matmul(w2, b1" not in equivariant


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("depth", [1, 2, 4, 6, 8])
def test_scale_at_init_is_stable_with_depth(activation, depth):
    """Unit-normal input: every MAGEP term (up to degree L+1 + 1) has unit-order entries and
    every output tensor of the layer has a standard deviation of order one."""
    widths = (16,) + (32,) * (depth - 1) + (8,)
    derivation = derive(mlp_spec(widths, activation, name="deep"))
    pplan = polynomial_plan(derivation.basis, "magep")
    layout = derivation.space.to_layout()
    x = random_weight_space(layout, 16, 4, torch.float64, torch.Generator().manual_seed(1))
    named = x.named(layout)
    torch.manual_seed(0)
    psi = {p.name: torch.randn(4, *p.shape, dtype=torch.float64) * p.std for p in pplan.psis}
    assert pplan.magep is not None
    for term in pplan.magep.terms:
        std = float(magep_term_value(term, pplan.magep.chain, named, psi).std())
        assert 0.3 <= std <= 3.0, (term.var, term.degree, std)
    module = load_generated(generate(derivation, "polynomial"), "deep_polynomial")
    scales = output_scale(getattr(module, module.__all__[0])(4, 4), derivation)
    assert all(0.1 <= s <= 3.0 for s in scales.values()), scales


def test_path_products_grow_linearly_with_depth():
    """Each [W](s,0) and [W](L,t) is one matmul in the generated code: O(L) matmuls, not O(L^2)."""
    counts = {}
    for depth in (4, 8, 16):
        widths = (8,) + (6,) * (depth - 1) + (4,)
        source = generate(derive(mlp_spec(widths, "relu")), "polynomial")
        counts[depth] = len(re.findall(r"torch\.matmul\(", source))
    assert counts[16] - counts[8] == 2 * (counts[8] - counts[4]), counts
    assert counts[16] < 16 * 16, counts


def test_degree_bound():
    derivation = derive(mlp_spec((2, 3, 3, 3, 2), "relu"))
    for bound in (2, 3, 4):
        terms = magep_terms(derivation.space, bound)
        assert terms and all(max(t.degrees) <= bound for t in terms)
    assert len(magep_terms(derivation.space, 2)) < len(magep_terms(derivation.space, None))
    source = generate(derivation, "polynomial", degree=2)
    assert "psi_ww_" not in source  # glued terms have degree L + 1 = 5


def test_psi_trainable_or_fixed():
    derivation = derive(mlp_spec((2, 3, 2), "relu"))
    trainable = load_generated(generate(derivation, "polynomial"), "psi_t")
    fixed = load_generated(generate(derivation, "polynomial", trainable_psi=False), "psi_f")
    layer_t = getattr(trainable, trainable.__all__[0])(2, 2)
    layer_f = getattr(fixed, fixed.__all__[0])(2, 2)
    names_t = {n for n, _ in layer_t.named_parameters()}
    names_f = {n for n, _ in layer_f.named_parameters()}
    psi = {n for n in names_t if n.startswith("psi_")}
    assert psi and not (psi & names_f)
    assert psi <= {n for n, _ in layer_f.named_buffers()}


def test_magep_needs_fixed_input_and_output():
    derivation = derive(mlp_spec((2, 3, 2), "relu", permute="all", scaling="none"))
    with pytest.raises(GenerationError, match="NP setting"):
        generate(derivation, "polynomial")
    generate(derivation, "polynomial", family="complete", degree=2)  # the complete family works


def test_complete_family_refuses_past_the_limit():
    derivation = derive(mlp_spec((3, 4, 4, 4, 2), "relu", scaling="none"))
    with pytest.raises(GenerationError, match="more than the limit"):
        generate(derivation, "polynomial", family="complete", degree=2, max_terms=50)
