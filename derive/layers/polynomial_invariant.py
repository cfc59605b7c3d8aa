"""The polynomial invariant layer: the invariant layer's pooled features plus every MAGEP
invariant of degree 2..d (docs/math.md section 4.3), or with ``--family complete`` every
invariant monomial.

Checks (MAGEP family): agreement with the slow reference, float64/float32 invariance,
sensitivity to transforms outside the group.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from derive.codegen.invariant_view import invariant_view
from derive.derivation import Derivation
from derive.layers.kind import CheckOptions, LayerKind, LayerOptions, generated_class
from derive.layers.polynomial import chain_reason
from derive.plan.invariant import InvariantPlan, invariant_plan
from derive.verify.checklist import VerifyReport, group_checks, sensitivity_check
from derive.verify.polynomial import load_invariant_reference
from derive.verify.reference import ReferenceInvariant
from nfn_runtime import random_weight_space

__all__ = ["POLYNOMIAL_INVARIANT"]


def _plan(derivation: Derivation, options: LayerOptions) -> InvariantPlan:
    return invariant_plan(
        derivation.space,
        True,
        options.degree,
        options.trainable_psi,
        options.family,
        options.max_terms,
    )


def _context(derivation: Derivation, options: LayerOptions) -> Mapping[str, object]:
    return {"view": invariant_view(_plan(derivation, options))}


def _reference(derivation: Derivation, options: LayerOptions, c_in: int, c_out: int) -> nn.Module:
    return ReferenceInvariant(derivation.space, c_in, c_out, _plan(derivation, options).magep)


def _checks(derivation: Derivation, report: VerifyReport, options: CheckOptions) -> None:
    if options.family != "magep":
        detail = f"not applicable: the {options.family} family has no invariant layer (MAGEP only)"
        report.add("polynomial invariant layer", True, detail)
        return
    reason = chain_reason(derivation)
    if reason is not None:
        report.add("polynomial invariant layer", True, f"not applicable: {reason}")
        return
    layer_options = LayerOptions(degree=options.degree)
    plan = _plan(derivation, layer_options)
    cls = generated_class(derivation, "polynomial-invariant", layer_options)
    layout = derivation.space.to_layout().without_heads()
    generator = torch.Generator().manual_seed(options.seed)

    def matches_reference() -> None:
        generated = cls(2, 3).double()
        reference = ReferenceInvariant(derivation.space, 2, 3, plan.magep).double()
        load_invariant_reference(reference, generated)
        x = random_weight_space(layout, 2, 2, torch.float64, generator)
        with torch.no_grad():
            got, want = generated(x), reference(x)
        error = float((got - want).norm() / want.norm().clamp_min(1e-300))
        count = len(plan.magep.terms) if plan.magep else 0
        report.add(
            "polynomial invariant matches reference",
            error <= 1e-10,
            f"relative difference {error:.2e} ({count} MAGEP invariants beside the pooled "
            "features)",
        )

    report.run("polynomial invariant matches reference", matches_reference)
    name = "polynomial invariant ({dtype})"
    group_checks(report, name, cls(2, 3), layout, options.samples, generator, invariant=True)
    reference_check = ReferenceInvariant(derivation.space, 2, 3, plan.magep)
    label = "polynomial invariant"
    sensitivity_check(layout, cls(2, 3), reference_check, label, report, generator, invariant=True)


POLYNOMIAL_INVARIANT = LayerKind(
    name="polynomial-invariant",
    help="the invariant layer plus polynomial invariants (MAGEP; --family, --degree)",
    class_suffix="PolynomialInvariant",
    template="invariant.py.jinja",
    context=_context,
    reference=_reference,
    checks=_checks,
    applies=chain_reason,
    head_permutations=False,
)
