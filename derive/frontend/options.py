"""What every architecture spec shares: the symmetry options, their validation, and the
:class:`ArchitectureSpec` protocol the rest of the pipeline reads.

After the front end, nothing branches on the kind of spec: every spec builds an ``nn.Module``
that the tracer reads (an ``--mlp`` shorthand builds an ``nn.Sequential``), and reports only
ask it for its name, options and summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from derive.errors import SpecError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "PERMUTE_CHOICES",
    "SCALING_CHOICES",
    "ArchitectureSpec",
    "check_choice",
    "check_name",
]

PERMUTE_CHOICES = ("hidden", "all")
SCALING_CHOICES = ("auto", "none", "sign", "positive", "nonzero")


@runtime_checkable
class ArchitectureSpec(Protocol):
    """An architecture and the symmetry setting to derive for it."""

    @property
    def name(self) -> str: ...
    @property
    def permute(self) -> str: ...
    @property
    def scaling(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def build(self) -> nn.Module:
        """The network (a fresh module, or the one given)."""
        ...

    def summary(self) -> str:
        """One line: what the architecture is."""
        ...

    def options(self) -> str:
        """The command-line options that reproduce this spec."""
        ...

    def architecture_data(self) -> dict[str, Any]:
        """A JSON-ready description (for ``inspect --json``)."""
        ...

    def with_options(
        self, name: str | None = None, permute: str | None = None, scaling: str | None = None
    ) -> ArchitectureSpec:
        """The same architecture with other options."""
        ...

    def proxy(self, hidden: int, other: int) -> ArchitectureSpec | None:
        """A smaller architecture of the same kind whose weight space has the same kinds of
        blocks (widths capped at ``hidden`` / ``other``), or None if the spec cannot shrink
        itself (the weight space is then capped instead)."""
        ...


def check_choice(value: object, choices: Sequence[str], field: str, where: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise SpecError(f"field '{field}': {value!r} is not one of {', '.join(choices)}", where)
    return value


def check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise SpecError(f"field 'name': expected a non-empty string, got {name!r}", where)
    return name
