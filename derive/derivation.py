"""A derivation: the front end, then the group (the basis and the linear plan follow lazily).

:func:`derive` traces any architecture spec into its typed weight space and decides the group;
:class:`Derivation` holds every intermediate value, printable on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import networkx as nx

from derive.basis.linear import LinearBasis, linear_basis
from derive.errors import SpecError
from derive.frontend.options import ArchitectureSpec
from derive.frontend.torch_spec import torch_spec
from derive.frontend.trace import trace_network
from derive.plan.linear import LinearPlan, linear_plan
from derive.plan.tying import tied_plan
from derive.symmetry.group import derive_group
from derive.weightspace.graph import weight_space_graph
from derive.weightspace.model import WeightSpaceSpec

__all__ = ["Derivation", "derive", "trace_spec", "proxy_derivation", "space_sizes"]


@dataclass(frozen=True)
class Derivation:
    """The inspectable intermediate values of one run of the pipeline."""

    spec: ArchitectureSpec
    space: WeightSpaceSpec

    @cached_property
    def graph(self) -> nx.MultiDiGraph:
        """The networkx view of the weight space."""
        return weight_space_graph(self.space)

    @cached_property
    def basis(self) -> LinearBasis:
        return linear_basis(self.space)

    @cached_property
    def linear_plan(self) -> LinearPlan:
        """The linear layer's plan; its matmuls are tied across heads where the group permutes
        attention heads as wholes."""
        return tied_plan(linear_plan(self.basis))

    def __str__(self) -> str:
        return f"Derivation of {self.spec.name} ({self.spec.summary()}): {self.space}"

    def __repr__(self) -> str:
        return f"<{self}>"


def trace_spec(spec: ArchitectureSpec) -> WeightSpaceSpec:
    """The front end: build the spec's module and trace it into its weight space (no group)."""
    return trace_network(spec.build(), spec.input_shape, spec.source, spec.name)


def derive(
    spec: ArchitectureSpec | Any,
    input_shape: Sequence[int] | None = None,
    permute: str = "hidden",
    scaling: str = "auto",
    name: str | None = None,
) -> Derivation:
    """Trace the architecture into its weight space and decide its group (the basis follows
    lazily).

    ``spec`` is an architecture spec (:func:`derive.frontend.spec.mlp_spec`,
    :func:`derive.frontend.torch_spec.torch_spec`, a spec file), or an ``nn.Module`` to trace
    on inputs of shape ``(batch, *input_shape)`` (then ``permute``, ``scaling`` and ``name``
    apply; specs carry their own).
    """
    if not isinstance(spec, ArchitectureSpec):
        if input_shape is None:
            raise SpecError("pass input_shape (one input without the batch axis)", "derive()")
        spec = torch_spec(spec, input_shape, permute, scaling, name)
    space = derive_group(trace_spec(spec), spec.permute, spec.scaling)
    return Derivation(spec=spec, space=space)


def _capped(space: WeightSpaceSpec, hidden: int, other: int, name: str) -> WeightSpaceSpec:
    spaces = tuple(
        replace(s, size=min(s.size, hidden if s.role == "hidden" else other)) for s in space.spaces
    )
    return replace(
        space,
        name=name,
        spaces=spaces,
        tensors=tuple(replace(t, source_shape=()) for t in space.tensors),
        buffers=tuple(replace(t, source_shape=()) for t in space.buffers),
    )


def proxy_derivation(
    derivation: Derivation, hidden: int = 3, other: int = 2, shrink_spec: bool = False
) -> Derivation:
    """The same kinds of tensors, axis labels and group with every space capped: hidden spaces
    at ``hidden`` neurons, input, output and fixed axes at ``other``. Numeric checks whose cost
    grows with the widths (null spaces, Jacobian spans) run on it.

    With ``shrink_spec``, a spec that can shrink itself (an MLP: at most three hidden layers)
    is derived anew at the smaller size instead."""
    spec = derivation.spec
    smaller = spec.proxy(hidden, other) if shrink_spec else None
    if smaller is not None:
        return derive(smaller)
    name = f"{spec.name}_proxy"
    return Derivation(
        spec=spec.with_options(name=name), space=_capped(derivation.space, hidden, other, name)
    )


def space_sizes(space: WeightSpaceSpec) -> str:
    """``in=2 h1=3 h2=3 out=2``: the sizes of a weight space's spaces, for reports."""
    return " ".join(f"{s.name}={s.size}" for s in space.spaces)
