"""Completeness: numeric null spaces equal the symbolic counts block by block, and the Jacobians
of the generated layer span them (docs/math.md section 6)."""

from __future__ import annotations

import pytest
import torch

from derive.frontend.spec import mlp_spec
from derive.pipeline import derive
from derive.verify.numeric import (
    completeness_report,
    equivariant_dimension,
    generators,
    layer_jacobians,
)

SETTINGS = {
    "perm-2332": ((2, 3, 3, 2), "relu", "hidden", "none"),
    "relu-2332": ((2, 3, 3, 2), "relu", "hidden", "auto"),
    "tanh-2332": ((2, 3, 3, 2), "tanh", "hidden", "auto"),
    "identity-2332": ((2, 3, 3, 2), "identity", "hidden", "auto"),
    "np-2332": ((2, 3, 3, 2), "relu", "all", "none"),
    "np-tanh-232": ((2, 3, 2), "tanh", "all", "auto"),
    "mixed-2232": ((2, 2, 3, 2), ["tanh", "relu"], "hidden", "auto"),
    "width1-2112": ((2, 1, 1, 2), "relu", "hidden", "none"),
    "width2-2222": ((2, 2, 2, 2), "relu", "hidden", "none"),
    "L1-32": ((3, 2), "relu", "hidden", "auto"),
    "L1-np-32": ((3, 2), "relu", "all", "none"),
    "L4-perm-22222": ((2, 2, 2, 2, 2), "gelu", "hidden", "auto"),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_null_space_equals_symbolic_count_and_jacobians_span_it(build, name):
    widths, activation, permute, scaling = SETTINGS[name]
    derivation, linear_cls, _ = build(widths, activation, permute, scaling)
    module = linear_cls(1, 1).double()

    def randomize():
        with torch.no_grad():
            for param_name, param in module.named_parameters():
                param.normal_() if param_name.endswith("_weight") else param.zero_()

    counts = {b.key: b.dim for b in derivation.basis.blocks}
    jacobians = layer_jacobians(derivation.space, module, max(counts.values()) + 3, randomize)
    for check in completeness_report(derivation.space, counts, jacobians):
        assert check.null_space == check.symbolic, check
        assert check.jacobian_span == check.symbolic, check
        assert check.residual is not None and check.residual < 1e-8, check


@pytest.mark.parametrize("name", ["perm-2332", "relu-2332", "tanh-2332", "np-2332"])
def test_constants_and_invariants_match_null_spaces(name):
    widths, activation, permute, scaling = SETTINGS[name]
    derivation = derive(mlp_spec(widths, activation, permute=permute, scaling=scaling))
    space, basis = derivation.space, derivation.basis
    for tensor in space.tensors:
        assert equivariant_dimension(space, tensor, None) == basis.by_key[f"{tensor.name}<-1"].dim
        assert equivariant_dimension(space, None, tensor) == basis.by_key[f"inv<-{tensor.name}"].dim


def test_generators_cover_each_kind():
    space = derive(mlp_spec((2, 3, 3, 2), ["relu", "identity"])).space
    gens = generators(space)
    assert any(g.space == "h1" and g.lie is not None for g in gens)
    assert not any(g.space == "h1" and g.scale is not None for g in gens)  # no sign flips on ReLU
    assert any(g.space == "h2" and g.scale is not None for g in gens)  # identity: sign flips too
    assert any(g.space == "h2" and g.lie is not None for g in gens)
    assert not any(g.space in ("in", "out") for g in gens)  # HNP: fixed input and output


def test_a_missing_map_is_detected():
    """Dropping one basis map from the generated layer leaves the Jacobian span short."""
    derivation = derive(mlp_spec((2, 3, 3, 2), "tanh"))
    from derive.verify.reference import ReferenceLinear

    reference = ReferenceLinear(derivation.basis, 1, 1).double()
    dropped = next(i for i, m in enumerate(reference.maps) if m.key == "W3<-b2")

    def randomize():
        with torch.no_grad():
            for k, coefficient in enumerate(reference.coefficients):
                coefficient.normal_() if k != dropped else coefficient.zero_()
            for constant in reference.constants:
                constant.zero_()

    counts = {b.key: b.dim for b in derivation.basis.blocks}
    jacobians = layer_jacobians(derivation.space, reference, 8, randomize)
    report = {c.key: c for c in completeness_report(derivation.space, counts, jacobians)}
    assert not report["W3<-b2"].ok
    assert report["W3<-b2"].jacobian_span == 0
    assert report["W1<-W1"].ok
