"""Shared pieces of verification: the report, loading generated source, sensitivity."""

from __future__ import annotations

import copy
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TextIO

import torch
from torch import nn

from derive.verify.limits import (
    DeadlineReached,
    Limits,
    OutOfTime,
    is_out_of_memory,
    memory_text,
    out_of_memory_detail,
    release_memory,
)
from derive.verify.sized import (
    FULL,
    SETTINGS,
    Setting,
    choose_setting,
    group_bytes,
    group_error,
    sensitivity_bytes,
    sensitivity_errors,
    with_channels,
)
from nfn_runtime import outside_group_kinds, random_weight_space, sample_outside_group
from nfn_runtime.layout import WeightSpaceLayout
from nfn_runtime.outside import OutsideGroupTransform

__all__ = [
    "Check",
    "VerifyReport",
    "LINE_WIDTH",
    "line_writer",
    "DTYPE_BOUNDS",
    "load_generated",
    "layer_class",
    "group_checks",
    "sensitivity_check",
    "setting_note",
    "fitting_setting",
    "over_budget",
]


@dataclass(frozen=True)
class Check:
    """One line of a report: what was checked, whether it passed, and what was measured.

    ``resource`` marks a check that ran out of memory or time (a FAIL line) or was not run
    because ``--timeout`` was reached (``skipped``: a SKIP line)."""

    name: str
    ok: bool
    detail: str
    resource: bool = False
    skipped: bool = False

    @property
    def status(self) -> str:
        """``PASS``, ``FAIL`` or ``SKIP``: the line's first word."""
        if self.skipped:
            return "SKIP"
        return "PASS" if self.ok else "FAIL"

    def line(self, width: int = 0) -> str:
        """``  PASS  name  detail``, the name padded to ``width``."""
        return f"  {self.status}  {self.name.ljust(width)}  {self.detail}"


#: the name column of streamed lines (the longest usual name, a polynomial equivariance check)
LINE_WIDTH = 39


def line_writer(stream: TextIO, width: int = LINE_WIDTH) -> Callable[[Check], None]:
    """A report sink that writes each check's line to ``stream`` and flushes it at once."""

    def write(check: Check) -> None:
        stream.write(check.line(width) + "\n")
        stream.flush()

    return write


@dataclass
class VerifyReport:
    """The checks of a run, in the order they finished.

    A ``sink`` sees every check the moment it is added (the command line prints it); ``limits``
    are the run's memory budget and deadline, which checks plan their work within (see
    :meth:`run`)."""

    checks: list[Check] = field(default_factory=list)
    sink: Callable[[Check], None] | None = field(default=None, repr=False, compare=False)
    limits: Limits = field(default_factory=Limits, compare=False)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        """Checks that ran to the end and failed."""
        return [c for c in self.checks if not c.ok and not c.resource]

    @property
    def exhausted(self) -> list[Check]:
        """Checks that ran out of memory or time, or were not run (``--timeout``)."""
        return [c for c in self.checks if c.resource]

    @property
    def exit_code(self) -> int:
        """0 if every check passed; 1 if a check failed; else 3 if a check ran out of memory
        or time or was not run."""
        if self.failed:
            return 1
        return 3 if self.exhausted else 0

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.record(Check(name, ok, detail))

    def record(self, check: Check) -> None:
        """Add ``check`` and hand it to the sink."""
        self.checks.append(check)
        if self.sink is not None:
            self.sink(check)

    def skip(self, name: str, detail: str) -> None:
        """A SKIP line: ``name`` was not run (``detail`` says why)."""
        self.record(Check(name, False, detail, resource=True, skipped=True))

    def run(self, name: str, check: Callable[[], object]) -> None:
        """Run ``check``, which adds its own line(s), as the check ``name`` within the limits.

        After the deadline it does not start: :class:`DeadlineReached` tells the caller that the
        rest of its group is not run. If it runs out of memory, or runs past the deadline, it
        gets a FAIL line saying so, and the run goes on with the next check."""
        if self.limits.expired():
            raise DeadlineReached(name)
        failure = ""
        release_memory()
        try:
            check()
        except Exception as exc:
            failure = self._exhausted(exc)
        if failure:
            release_memory()  # what the failed check held is garbage now
            self.record(Check(name, False, failure, resource=True))

    def run_group(self, group: str, checks: Callable[[], object]) -> None:
        """Run a group of checks (``symbolic``, ``network``, a layer kind) within the limits.

        After the deadline, the group (or the rest of it) gets one SKIP line. What runs out of
        memory or time outside a single check (:meth:`run`) fails the group with a FAIL line;
        the run goes on with the next group."""
        done = len(self.checks)
        reached = False
        failure = ""
        try:
            if self.limits.expired():
                raise DeadlineReached(group)
            checks()
        except DeadlineReached:
            reached = True
        except Exception as exc:
            failure = self._exhausted(exc)
        if failure:
            release_memory()
            self.record(Check(group, False, failure, resource=True))
        if reached:
            name = group + (" (rest)" if len(self.checks) > done else "")
            self.skip(name, "not run: --timeout reached")

    def _exhausted(self, error: Exception) -> str:
        """The FAIL detail of a check or group that ran out of time or memory; any other
        error is re-raised (from the ``except`` block that caught it)."""
        if isinstance(error, OutOfTime):
            return f"out of time ({error} while it ran)"
        if is_out_of_memory(error):
            return out_of_memory_detail(error, self.limits)
        raise error

    def verdict(self) -> str:
        """The summary line: ``all checks passed``, or what failed, ran out or was not run."""
        if self.ok:
            return "all checks passed"
        skipped = [c for c in self.exhausted if c.skipped]
        parts = [
            f"{count} {what}"
            for count, what in (
                (len(self.failed), "check(s) FAILED"),
                (len(self.exhausted) - len(skipped), "check(s) ran out of memory or time"),
                (len(skipped), "group(s) of checks not run"),
            )
            if count
        ]
        return ", ".join(parts)

    def text(self) -> str:
        width = max((len(c.name) for c in self.checks), default=0)
        lines = [c.line(width) for c in self.checks]
        return "\n".join([*lines, "", self.verdict()]) + "\n"


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
    group elements, in float64 and float32; ``name`` formats ``{dtype}`` into the check name.

    ``layer`` has 2 -> 3 channels. Each check runs on batch 2 when that fits the report's memory
    budget, else on the first smaller setting that does (:data:`SETTINGS`: batch 1, then fewer
    channels, for which the layer is rebuilt by :func:`with_channels`), said in its line; when
    none fits, its line is a FAIL for the budget."""
    for dtype, bound in DTYPE_BOUNDS:
        check = name.format(dtype=str(dtype).removeprefix("torch."))
        run = partial(
            _group_check, report, check, layer, layout, samples, generator, invariant, dtype, bound
        )
        report.run(check, run)


def _group_check(
    report: VerifyReport,
    name: str,
    layer: nn.Module,
    layout: WeightSpaceLayout,
    samples: int,
    generator: torch.Generator,
    invariant: bool,
    dtype: torch.dtype,
    bound: float,
) -> None:
    """One dtype of :func:`group_checks`."""

    def need(setting: Setting) -> int:
        return group_bytes(layout, setting, dtype, invariant)

    setting = fitting_setting(report, name, need)
    if setting is None:
        return
    module = copy.deepcopy(with_channels(layer, setting.c_in, setting.c_out)).to(dtype)
    error = group_error(module, layout, samples, setting, dtype, generator, invariant)
    report.add(
        name,
        error <= bound,
        f"max relative error {error:.2e} over {samples} group elements (bound {bound:g})"
        + setting_note(setting, need, report.limits),
    )


def setting_note(setting: Setting, need: Callable[[Setting], int], limits: Limits) -> str:
    """``; on batch 1, ...: batch 2, ... needs ~X GB, more than the Y GB left of --memory 8 GB``
    for a check that ran on a smaller setting than the usual one; else nothing."""
    if setting == FULL:
        return ""
    left = limits.available()
    return (
        f"; on {setting.text()}: {FULL.text()} needs ~{memory_text(need(FULL))}, more than the "
        f"{memory_text(left or 0)} left of {limits.budget_text()}"
    )


def fitting_setting(
    report: VerifyReport, name: str, need: Callable[[Setting], int]
) -> Setting | None:
    """The first of :data:`SETTINGS` whose estimated ``need`` fits the report's memory budget;
    None, with the check ``name``'s FAIL line for the budget recorded, when none does."""
    setting = choose_setting(SETTINGS, need, report.limits.fits)
    if setting is None:
        report.record(over_budget(name, need, report.limits))
    return setting


def over_budget(name: str, need: Callable[[Setting], int], limits: Limits) -> Check:
    """The FAIL line of a check that does not fit the budget even on its smallest setting."""
    smallest = SETTINGS[-1]
    return Check(
        name,
        False,
        f"out of the memory budget: needs ~{memory_text(need(smallest))} on {smallest.text()}, "
        f"{memory_text(limits.available() or 0)} left of {limits.budget_text()}",
        resource=True,
    )


#: an outside transform must change the output by more than this (relative) to count
SENSITIVITY_THRESHOLD = 1e-6


def sensitivity_check(
    layout: WeightSpaceLayout,
    layer: nn.Module,
    reference: nn.Module,
    label: str,
    report: VerifyReport,
    generator: torch.Generator,
    invariant: bool = False,
) -> None:
    """``layer`` must not commute with outside transforms that the complete layer does not.

    The complete layer is the slow reference (one einsum per basis map) with random
    coefficients; a transform it commutes with is not detectable and is skipped. Float64, on
    one random input (batch 2, 2 channels in, the layers' channels out) or, when that does not
    fit the memory budget, the first smaller setting that does, as :func:`group_checks` (said
    in the line); ``invariant``: the layers return a vector (which needs less memory).
    """
    name = f"{label} sensitivity"
    run = partial(_sensitivity, report, name, layout, layer, reference, generator, invariant)
    report.run(name, run)


def _sensitivity(
    report: VerifyReport,
    name: str,
    layout: WeightSpaceLayout,
    layer: nn.Module,
    reference: nn.Module,
    generator: torch.Generator,
    invariant: bool,
) -> None:
    """:func:`sensitivity_check`'s work."""

    def need(setting: Setting) -> int:
        return sensitivity_bytes(layout, setting, invariant)

    setting = fitting_setting(report, name, need)
    if setting is None:
        return
    transforms = [
        (f"{kind} on {space.name}", transform)
        for kind in outside_group_kinds(layout)
        for space in layout.spaces
        if (transform := _outside(layout, kind, space.name, generator)) is not None
    ]
    x = random_weight_space(layout, setting.batch, setting.c_in, torch.float64, generator)
    complete = copy.deepcopy(with_channels(reference, setting.c_in, setting.c_out)).double()
    expected = sensitivity_errors(complete, layout, [t for _, t in transforms], x)
    del complete
    # a transform the complete layer commutes with cannot be detected: skipped
    detectable = [entry for entry, e in zip(transforms, expected) if e > SENSITIVITY_THRESHOLD]
    module = copy.deepcopy(with_channels(layer, setting.c_in, setting.c_out)).double()
    errors = sensitivity_errors(module, layout, [t for _, t in detectable], x)
    failures = [what for (what, _), e in zip(detectable, errors) if not e > SENSITIVITY_THRESHOLD]
    ok = not failures and bool(detectable)
    detail = (
        f"changes under all {len(detectable)} detectable transform(s) outside the group"
        if ok
        else f"commutes with {', '.join(failures) or 'every tested transform'}"
    )
    report.add(name, ok, detail + setting_note(setting, need, report.limits))


def _outside(
    layout: WeightSpaceLayout, kind: str, space: str, generator: torch.Generator
) -> OutsideGroupTransform | None:
    """An outside transform of ``kind`` on ``space``, or None where the kind does not apply."""
    try:
        return sample_outside_group(layout, kind, generator, space=space)
    except ValueError:
        return None
