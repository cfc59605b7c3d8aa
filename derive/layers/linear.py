"""The equivariant linear layer: every map of the complete basis, mixed per merged placement.

Checks (docs/math.md section 6): exact parameter count, agreement with the slow reference (one
einsum per basis map), float64/float32 equivariance under sampled group elements, sensitivity
to transforms outside the group, and numeric completeness block by block (on a proxy with the
same group when the weight space is large).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import torch
from torch import nn

from derive.basis.head_orbits import head_orbits, tied_dims
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
from derive.verify.checklist import (
    VerifyReport,
    fitting_setting,
    group_checks,
    sensitivity_check,
    setting_note,
)
from derive.verify.numeric import BlockCheck, completeness_report, layer_jacobians
from derive.verify.numeric_heads import head_completeness, tied_null_total
from derive.verify.reference import ReferenceLinear, load_into_generated
from derive.verify.sized import Setting, agreement_bytes
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
    report.run("parameter count", partial(_parameter_count, derivation, cls, report))
    report.run("linear matches reference", partial(_matches_reference, derivation, cls, report))


def _parameter_count(derivation: Derivation, cls: type[nn.Module], report: VerifyReport) -> None:
    c_in, c_out = 2, 3
    module = cls(c_in, c_out)
    dim, constants, _ = tied_dims(derivation.basis, head_orbits(derivation.space))
    expected = c_in * c_out * dim + c_out * constants
    count = sum(p.numel() for p in module.parameters())
    tied = (
        " (one per orbit under whole-head permutations)" if derivation.space.permuted_heads else ""
    )
    report.add(
        "parameter count",
        count == expected,
        f"{count} parameters, expected C_in*C_out*dim + C_out*constants = {expected}{tied}",
    )


def _matches_reference(derivation: Derivation, cls: type[nn.Module], report: VerifyReport) -> None:
    """The generated layer equals the reference with the same coefficients (float64), compared
    one output tensor at a time: the reference computes each alone, map by map. Batch 2,
    2 -> 3 channels, or the first smaller setting that fits the memory budget."""
    layout = derivation.space.to_layout()

    def need(setting: Setting) -> int:
        return agreement_bytes(layout, setting)

    name = "linear matches reference"
    setting = fitting_setting(report, name, need)
    if setting is None:
        return
    module = cls(setting.c_in, setting.c_out).double()
    reference = ReferenceLinear(derivation.basis, setting.c_in, setting.c_out).double()
    reference.tie_heads()
    load_into_generated(reference, derivation.linear_plan, module)
    generator = torch.Generator().manual_seed(0)
    x = random_weight_space(layout, setting.batch, setting.c_in, torch.float64, generator)
    error = 0.0
    with torch.no_grad():
        got = module(x).named(layout)
        inputs = x.named(layout)
        for tensor, value in got.items():
            want = reference.output(inputs, tensor)
            error = max(error, float((value - want).norm() / want.norm().clamp_min(1e-300)))
            del want
    report.add(
        name,
        error <= 1e-12,
        f"relative difference {error:.2e} (one einsum per basis map)"
        + setting_note(setting, need, report.limits),
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
    if derivation.space.permuted_heads and not bad:
        ok, detail = _head_completeness(derivation, counts, checks, jacobians, proxy_note)
        report.add("completeness", ok, detail)
        return
    report.add("completeness", not bad, detail)


def _head_completeness(
    derivation: Derivation,
    counts: dict[str, int],
    checks: list[BlockCheck],
    jacobians: dict[tuple[str, str], torch.Tensor],
    proxy_note: str,
) -> tuple[bool, str]:
    """With whole-head permutations: the null space of the constraints of every generator,
    head relabellings included, against the tied basis, and the tied layer's Jacobians."""
    orbits = head_completeness(derivation.space, counts, jacobians)
    bad = [o for o in orbits if not o.ok]
    nulls = {c.key: c.null_space for c in checks}
    total = tied_null_total(derivation.space, nulls, orbits)
    tied, _, _ = tied_dims(derivation.basis, head_orbits(derivation.space))
    if bad or total != tied:
        detail = (
            "; ".join(
                f"{o.key}: symbolic {o.symbolic}, null {o.null_space}, span {o.jacobian_span}"
                for o in bad[:3]
            )
            or f"null space with head relabellings {total} != tied basis {tied}"
        )
        return False, detail
    detail = (
        f"{len(checks)} blocks in {len(orbits)} coupled orbits under head relabellings: null "
        f"space {total} = tied basis {tied} (per-space group: {sum(nulls.values())}); "
        f"Jacobians span it, tied across heads{proxy_note}"
    )
    return True, detail


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
    report.run("completeness", partial(_completeness_here_or_on_proxy, derivation, cls, report))


def _completeness_here_or_on_proxy(
    derivation: Derivation, cls: type[nn.Module], report: VerifyReport
) -> None:
    """Completeness on the weight space itself when it is small, else on a proxy."""
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
