"""The equivariant linear layer: every map of the complete basis, mixed per merged placement.

Checks (docs/math.md section 6): exact parameter count, agreement with the slow reference (one
einsum per basis map), float64/float32 equivariance under sampled group elements, sensitivity
to transforms outside the group, and numeric completeness block by block (on a proxy with the
same group when the weight space is large).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from derive.codegen.views import linear_view
from derive.derivation import Derivation, proxy_derivation, space_sizes
from derive.layers.kind import CheckOptions, LayerKind, LayerOptions, generated_class
from derive.plan.budget import (
    Budget,
    BudgetChoice,
    apply_budget,
    choose_budget,
    layer_parameters,
)
from derive.verify.checklist import VerifyReport, group_checks, sensitivity_check
from derive.verify.numeric import completeness_report, layer_jacobians
from derive.verify.reference import ReferenceLinear, load_into_generated
from nfn_runtime import random_weight_space

__all__ = ["LINEAR", "PROXY_LIMIT", "budget_choice"]

#: a weight space with more entries than this is checked for completeness on a proxy
PROXY_LIMIT = 80


def budget_choice(derivation: Derivation, budget: Budget) -> BudgetChoice:
    """What ``budget`` keeps of the linear layer of ``derivation`` (dense or rank per matmul)."""
    network_params = derivation.space.to_layout().num_params()
    return choose_budget(derivation.linear_plan, budget, network_params)


def _context(derivation: Derivation, options: LayerOptions) -> Mapping[str, object]:
    choice = budget_choice(derivation, options.budget)
    return {
        "title": "Equivariant linear layer",
        "family_note": "",
        "view": linear_view(apply_budget(derivation.linear_plan, choice)),
        "budget_lines": tuple(choice.lines()) if choice.factored else (),
    }


def _reference(derivation: Derivation, options: LayerOptions, c_in: int, c_out: int) -> nn.Module:
    return ReferenceLinear(derivation.basis, c_in, c_out)


def _reference_agreement(
    derivation: Derivation, cls: type[nn.Module], report: VerifyReport
) -> None:
    c_in, c_out = 2, 3
    module = cls(c_in, c_out).double()
    expected = c_in * c_out * derivation.basis.dim + c_out * derivation.basis.constant_dim
    count = sum(p.numel() for p in module.parameters())
    report.add(
        "parameter count",
        count == expected,
        f"{count} parameters, expected C_in*C_out*dim + C_out*constants = {expected}",
    )
    reference = ReferenceLinear(derivation.basis, c_in, c_out).double()
    load_into_generated(reference, derivation.linear_plan, module)
    layout = derivation.space.to_layout()
    generator = torch.Generator().manual_seed(0)
    x = random_weight_space(layout, 2, c_in, torch.float64, generator)
    with torch.no_grad():
        got, want = module(x), reference(x)
    error = max(
        float((a - b).norm() / b.norm().clamp_min(1e-300))
        for a, b in zip(got.tensors(), want.tensors())
    )
    report.add(
        "linear matches reference",
        error <= 1e-12,
        f"relative difference {error:.2e} (one einsum per basis map)",
    )


def _equivariance(
    derivation: Derivation, cls: type[nn.Module], report: VerifyReport, options: CheckOptions
) -> None:
    layout = derivation.space.to_layout()
    generator = torch.Generator().manual_seed(options.seed)
    torch.manual_seed(options.seed)
    linear = cls(2, 3)
    group_checks(
        report, "linear equivariance ({dtype})", linear, layout, options.samples, generator
    )
    slow = _reference(derivation, LayerOptions(), 2, 3)
    sensitivity_check(layout, linear, slow, "linear", report, generator)


def _completeness(
    derivation: Derivation, cls: type[nn.Module], report: VerifyReport, proxy_note: str
) -> None:
    counts = {b.key: b.dim for b in derivation.basis.blocks}
    module = cls(1, 1).double()

    def randomize() -> None:
        with torch.no_grad():
            for name, param in module.named_parameters():
                param.normal_() if name.endswith("_weight") else param.zero_()

    draws = max(counts.values(), default=0) + 3
    jacobians = layer_jacobians(derivation.space, module, draws, randomize)
    checks = completeness_report(derivation.space, counts, jacobians)
    bad = [c for c in checks if not c.ok]
    total = sum(c.null_space for c in checks)
    detail = (
        f"{len(checks)} blocks: null space {total} = symbolic {derivation.basis.dim}; "
        f"Jacobians span it{proxy_note}"
        if not bad
        else "; ".join(
            f"{c.key}: symbolic {c.symbolic}, null {c.null_space}, span {c.jacobian_span}"
            for c in bad[:3]
        )
    )
    report.add("completeness", not bad, detail)


def _budget_checks(derivation: Derivation, report: VerifyReport, options: CheckOptions) -> None:
    """The layer the size budget factors (when it factors anything): its parameter count,
    equivariance and sensitivity (completeness is the dense layer's, checked above)."""
    choice = budget_choice(derivation, options.budget)
    if not choice.factored:
        return
    cls = generated_class(derivation, "linear", LayerOptions(budget=options.budget))
    c_in, c_out = 2, 3
    torch.manual_seed(options.seed)
    module = cls(c_in, c_out)
    count = sum(p.numel() for p in module.parameters())
    expected = layer_parameters(apply_budget(derivation.linear_plan, choice), c_in, c_out)
    report.add(
        "linear budget parameter count",
        count == expected,
        f"{count} parameters at 2 -> 3 channels, expected {expected}: dimension "
        f"{choice.dense_dim} -> {choice.kept_dim} per channel pair, "
        f"{len(choice.factored)} matmul(s) factored",
    )
    layout = derivation.space.to_layout()
    generator = torch.Generator().manual_seed(options.seed)
    group_checks(
        report,
        "linear budget equivariance ({dtype})",
        module,
        layout,
        options.samples,
        generator,
    )
    slow = _reference(derivation, LayerOptions(), 2, 3)
    sensitivity_check(layout, module, slow, "linear budget", report, generator)


def _checks(derivation: Derivation, report: VerifyReport, options: CheckOptions) -> None:
    cls = generated_class(derivation, "linear", LayerOptions(budget="dense"))
    _reference_agreement(derivation, cls, report)
    _equivariance(derivation, cls, report, options)
    _budget_checks(derivation, report, options)
    if derivation.space.to_layout().num_params() <= PROXY_LIMIT:
        _completeness(derivation, cls, report, "")
    else:
        proxy = proxy_derivation(derivation)
        sizes = space_sizes(proxy.space)
        note = f" (on a proxy with sizes {sizes}, same group)"
        dense = LayerOptions(budget="dense")
        _completeness(proxy, generated_class(proxy, "linear", dense), report, note)


LINEAR = LayerKind(
    name="linear",
    help="the complete equivariant linear layer (weight space -> weight space)",
    class_suffix="Linear",
    template="linear.py.jinja",
    context=_context,
    reference=_reference,
    checks=_checks,
)
