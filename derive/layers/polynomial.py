"""The equivariant polynomial layer: the complete linear layer plus polynomial terms of degree
2 and higher (docs/math.md section 5), family ``magep`` (MAGEP-NFN terms on chain weight
spaces) or ``complete`` (every equivariant monomial up to the degree).

Where the group permutes attention heads as wholes (docs/math.md 8.6), the complete family's
coefficients are tied across heads: one block per orbit of maps and of terms.

Checks: agreement with a slow reference that evaluates every term separately (tied like the
layer), float64/float32 equivariance under sampled group elements (head relabellings included),
the output scale at initialization, sensitivity to transforms outside the group, and for the
complete family the numeric dimension of Sym^2(U) -> U against the enumeration (with head
relabellings: against the tied count).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import torch
from torch import nn

from derive.basis.magep import chain_of
from derive.codegen.polynomial_view import polynomial_view
from derive.derivation import Derivation, space_sizes
from derive.errors import GenerationError
from derive.layers.kind import CheckOptions, LayerKind, LayerOptions, generated_class
from derive.plan.polynomial import PolynomialPlan, polynomial_plan
from derive.verify.checklist import VerifyReport, group_checks, sensitivity_check
from derive.verify.polynomial import (
    CHECK_PARAMS_LIMIT,
    degree2_completeness,
    output_scale,
    polynomial_proxy,
)
from derive.verify.reference import load_into_generated
from derive.verify.reference_poly import ReferencePolynomial
from nfn_runtime import random_weight_space

__all__ = ["POLYNOMIAL", "chain_reason"]


def _plan(derivation: Derivation, options: LayerOptions) -> PolynomialPlan:
    return polynomial_plan(
        derivation.basis,
        options.family,
        options.degree,
        options.trainable_psi,
        options.max_terms,
        options.max_params,
    )


def chain_reason(derivation: Derivation) -> str | None:
    """Why the default (MAGEP) family has no layer for this weight space, or None."""
    try:
        chain_of(derivation.space)
    except GenerationError as exc:
        return str(exc)
    return None


def _context(derivation: Derivation, options: LayerOptions) -> Mapping[str, object]:
    bound = f"degree <= {options.degree}" if options.degree is not None else "all degrees"
    return {
        "title": f"Equivariant polynomial layer ({options.family} family, {bound})",
        "family_note": f"{options.family} family, {bound}",
        "view": polynomial_view(_plan(derivation, options)),
    }


def _reference(derivation: Derivation, options: LayerOptions, c_in: int, c_out: int) -> nn.Module:
    return ReferencePolynomial(_plan(derivation, options), derivation.basis, c_in, c_out)


def _checks(derivation: Derivation, report: VerifyReport, options: CheckOptions) -> None:
    """The complete family's dense parameters over fixed axes grow with their sizes (e.g.
    784 x 784 x 10 for ``W1'[i,x] += theta[x,u,v] W1[i,u] b3[v]``), so its layer is checked on
    the polynomial proxy (same group, small widths) when its terms carry more than
    :data:`CHECK_PARAMS_LIMIT` parameters per channel pair."""
    family, degree = options.family, options.degree
    label = f"polynomial {family}" + (f" degree<={degree}" if degree is not None else "")
    layer_options = LayerOptions(family=family, degree=degree, max_params=None)
    try:
        if family == "magep":
            chain_of(derivation.space)
        pplan = _plan(derivation, layer_options)
    except GenerationError as exc:
        report.add(f"{label} layer", True, f"not applicable: {exc}")
        return
    if family == "complete" and sum(m.num_params for m in pplan.terms) > CHECK_PARAMS_LIMIT:
        derivation = polynomial_proxy(derivation)
        layer_options = LayerOptions(family=family, degree=degree)
        pplan = _plan(derivation, layer_options)
        label += f" (proxy {space_sizes(derivation.space)})"
    cls = generated_class(derivation, "polynomial", LayerOptions(family=family, degree=degree))
    layout = derivation.space.to_layout()
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)

    def matches_reference() -> None:
        generated = cls(2, 3).double()
        reference = ReferencePolynomial(pplan, derivation.basis, 2, 3).double()
        reference.tie_heads()
        load_into_generated(reference, pplan.plan, generated)
        x = random_weight_space(layout, 2, 2, torch.float64, generator)
        with torch.no_grad():
            got, want = generated(x), reference(x)
        error = max(
            float((a - b).norm() / b.norm().clamp_min(1e-300))
            for a, b in zip(got.tensors(), want.tensors())
        )
        report.add(
            f"{label} matches reference",
            error <= 1e-10,
            f"relative difference {error:.2e} over {len(pplan.terms)} terms, each evaluated "
            "separately",
        )

    def scale_at_init() -> None:
        scales = output_scale(cls(4, 4), derivation)
        low, high = min(scales.values()), max(scales.values())
        report.add(
            f"{label} scale at init",
            0.05 <= low and high <= 20.0,
            f"output std per tensor in [{low:.2f}, {high:.2f}] for unit-normal input "
            "(bounds 0.05..20)",
        )

    report.run(f"{label} matches reference", matches_reference)
    name = label + " equivariance ({dtype})"
    group_checks(report, name, cls(2, 3), layout, options.samples, generator)
    report.run(f"{label} scale at init", scale_at_init)
    sensitivity_check(
        layout,
        cls(2, 3),
        ReferencePolynomial(pplan, derivation.basis, 2, 3),
        label,
        report,
        generator,
    )
    if family == "complete":
        name = "polynomial degree-2 completeness"
        report.run(name, partial(degree2_completeness, derivation, report))


POLYNOMIAL = LayerKind(
    name="polynomial",
    help="the linear layer plus polynomial terms (--family magep|complete, --degree)",
    class_suffix="Polynomial",
    template="linear.py.jinja",
    context=_context,
    reference=_reference,
    checks=_checks,
    applies=chain_reason,
)
