"""The exactly invariant layer: canonicalize the scaling, pool with the complete basis of
invariant functionals, mix with one ``nn.Linear`` (docs/math.md section 4).

Checks: agreement with the slow reference (one einsum per pooling map), float64/float32
invariance under sampled group elements, sensitivity to transforms outside the group.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import torch
from torch import nn

from derive.codegen.invariant_view import invariant_view
from derive.derivation import Derivation
from derive.layers.kind import CheckOptions, LayerKind, LayerOptions, generated_class
from derive.plan.invariant import invariant_plan
from derive.verify.checklist import (
    VerifyReport,
    fitting_setting,
    group_checks,
    sensitivity_check,
    setting_note,
)
from derive.verify.reference import ReferenceInvariant
from derive.verify.sized import Setting, group_bytes
from nfn_runtime import random_weight_space

__all__ = ["INVARIANT"]


def _context(derivation: Derivation, options: LayerOptions) -> Mapping[str, object]:
    return {"view": invariant_view(invariant_plan(derivation.space))}


def _reference(derivation: Derivation, options: LayerOptions, c_in: int, c_out: int) -> nn.Module:
    return ReferenceInvariant(derivation.space, c_in, c_out)


def _checks(derivation: Derivation, report: VerifyReport, options: CheckOptions) -> None:
    cls = generated_class(derivation, "invariant")
    report.run("invariant matches reference", partial(_matches_reference, derivation, cls, report))
    layout = derivation.space.to_layout()
    generator = torch.Generator().manual_seed(options.seed)
    torch.manual_seed(options.seed)
    invariant = cls(2, 3)
    group_checks(
        report, "invariant layer ({dtype})", invariant, layout, options.samples, generator, True
    )
    slow = _reference(derivation, LayerOptions(), 2, 3)
    sensitivity_check(layout, invariant, slow, "invariant", report, generator, invariant=True)


def _matches_reference(derivation: Derivation, cls: type[nn.Module], report: VerifyReport) -> None:
    """The generated layer equals the reference with the same parameters (float64), on batch 2,
    2 -> 3 channels or the first smaller setting that fits the memory budget."""
    layout = derivation.space.to_layout()

    def need(setting: Setting) -> int:
        return group_bytes(layout, setting, torch.float64, invariant=True)

    name = "invariant matches reference"
    setting = fitting_setting(report, name, need)
    if setting is None:
        return
    module = cls(setting.c_in, setting.c_out).double()
    reference = ReferenceInvariant(derivation.space, setting.c_in, setting.c_out).double()
    module.load_state_dict(reference.state_dict(), strict=False)
    generator = torch.Generator().manual_seed(1)
    x = random_weight_space(layout, setting.batch, setting.c_in, torch.float64, generator)
    with torch.no_grad():
        got, want = module(x), reference(x)
    error = float((got - want).norm() / want.norm().clamp_min(1e-300))
    report.add(
        name,
        error <= 1e-12,
        f"relative difference {error:.2e} (one einsum per pooling map)"
        + setting_note(setting, need, report.limits),
    )


INVARIANT = LayerKind(
    name="invariant",
    help="the complete invariant layer (weight space -> vector), e.g. to predict accuracy",
    class_suffix="Invariant",
    template="invariant.py.jinja",
    context=_context,
    reference=_reference,
    checks=_checks,
)
