"""Shared pieces of verification: the report, loading generated source, sensitivity."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from nfn_runtime import (
    equivariance_error,
    invariance_error,
    outside_group_kinds,
    sample_outside_group,
    sensitivity_error,
)
from nfn_runtime.layout import WeightSpaceLayout
from nfn_runtime.weight_space import WeightSpace

__all__ = [
    "Check",
    "VerifyReport",
    "DTYPE_BOUNDS",
    "load_generated",
    "layer_class",
    "group_checks",
    "sensitivity_check",
]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def text(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = [
            f"  {'PASS' if c.ok else 'FAIL'}  {c.name.ljust(width)}  {c.detail}"
            for c in self.checks
        ]
        verdict = (
            "all checks passed"
            if self.ok
            else f"{sum(not c.ok for c in self.checks)} check(s) FAILED"
        )
        return "\n".join([*lines, "", verdict]) + "\n"


def load_generated(source: str, name: str) -> types.ModuleType:
    """Execute generated source as a fresh module (not registered in ``sys.modules``)."""
    module = types.ModuleType(name)
    module.__file__ = f"<generated {name}>"
    code = compile(source, module.__file__, "exec")
    sys.modules[name] = module  # dataclasses and typing may look the module up while executing
    try:
        exec(code, module.__dict__)
    finally:
        del sys.modules[name]
    return module


def layer_class(module: types.ModuleType) -> type[nn.Module]:
    cls = getattr(module, module.__all__[0])
    assert isinstance(cls, type) and issubclass(cls, nn.Module)
    return cls


#: the numeric checks' dtypes and bounds on the relative error
DTYPE_BOUNDS = ((torch.float64, 1e-10), (torch.float32, 1e-4))


def group_checks(
    report: VerifyReport,
    name: str,
    layer: nn.Module,
    layout: WeightSpaceLayout,
    samples: int,
    generator: torch.Generator,
    invariant: bool = False,
) -> None:
    """Equivariance (or, with ``invariant``, invariance) of ``layer`` under ``samples`` sampled
    group elements, in float64 and float32; ``name`` formats ``{dtype}`` into the check name."""
    error_of = invariance_error if invariant else equivariance_error
    for dtype, bound in DTYPE_BOUNDS:
        err = error_of(
            layer, layout, n_samples=samples, channels=2, dtype=dtype, generator=generator
        )
        report.add(
            name.format(dtype=str(dtype).removeprefix("torch.")),
            err <= bound,
            f"max relative error {err:.2e} over {samples} group elements (bound {bound:g})",
        )


def sensitivity_check(
    layout: WeightSpaceLayout,
    layer: Callable[[WeightSpace], WeightSpace | Tensor],
    reference: Callable[[WeightSpace], WeightSpace | Tensor],
    label: str,
    report: VerifyReport,
    generator: torch.Generator,
) -> None:
    """``layer`` must not commute with outside transforms that the complete layer does not.

    The complete layer is the slow reference (one einsum per basis map) with random
    coefficients; a transform it commutes with is not detectable and is skipped.
    """
    broken = 0
    failures = []
    for kind in outside_group_kinds(layout):
        for space in layout.spaces:
            try:
                transform = sample_outside_group(layout, kind, generator, space=space.name)
            except ValueError:
                continue
            expected = sensitivity_error(
                reference, layout, transform, channels=2, generator=generator
            )
            if expected <= 1e-6:
                continue  # the complete layer commutes with this transform: not detectable
            error = sensitivity_error(layer, layout, transform, channels=2, generator=generator)
            if error > 1e-6:
                broken += 1
            else:
                failures.append(f"{kind} on {space.name}")
    ok = not failures and broken > 0
    detail = (
        f"changes under all {broken} detectable transform(s) outside the group"
        if ok
        else f"commutes with {', '.join(failures) or 'every tested transform'}"
    )
    report.add(f"{label} sensitivity", ok, detail)
