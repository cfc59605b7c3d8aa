"""Layer kinds as plug-ins: one :class:`LayerKind` record per kind, registered by name.

A kind says how its plan becomes a template context (``context``), which template renders
it, how to build its slow, obviously correct reference (``reference``), which checks
``verify`` runs on it (``checks``), and for which weight spaces it exists (``applies``: the
reason it does not, or None). The command line, ``generate``, ``verify`` and the checked-in
examples of ``generated/`` all read :data:`LAYER_KINDS`; adding a kind means writing its
module in :mod:`derive.layers` and one registration line in the package ``__init__``.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from derive.codegen.emit import ModuleMeta, render
from derive.codegen.views import layout_literal
from derive.derivation import Derivation
from derive.errors import GenerationError
from derive.naming import class_name, comment_text, identifier
from derive.plan.budget import Budget
from derive.verify.checklist import VerifyReport, layer_class, load_generated
from derive.weightspace.model import WeightSpaceSpec

__all__ = [
    "LayerOptions",
    "CheckOptions",
    "LayerKind",
    "LAYER_KINDS",
    "register",
    "layer_kind",
    "generate",
    "generated_class",
]


@dataclass(frozen=True)
class LayerOptions:
    """Options of the layer kinds: ``budget`` sizes the linear layer's maps over large fixed
    axes (:mod:`derive.plan.budget`); the others are the polynomial kinds'."""

    family: str = "magep"
    degree: int | None = None
    trainable_psi: bool = True
    max_terms: int = 2000
    max_params: int | None = 1_000_000
    budget: Budget = "default"


@dataclass(frozen=True)
class CheckOptions:
    """What ``verify`` samples: group elements per numeric check, the seed, the polynomial
    family and degree to check, and the linear layer's size budget."""

    samples: int = 3
    seed: int = 0
    family: str = "magep"
    degree: int | None = None
    budget: Budget = "default"  # the linear layer's size budget (its factored layer is checked)


@dataclass(frozen=True)
class LayerKind:
    """One kind of generated layer."""

    name: str  # the --layer choice, e.g. "polynomial-invariant"
    help: str  # one line for --help
    class_suffix: str  # the generated class is <Name><suffix>
    template: str
    context: Callable[[Derivation, LayerOptions], Mapping[str, object]]
    reference: Callable[[Derivation, LayerOptions, int, int], nn.Module]
    checks: Callable[[Derivation, VerifyReport, CheckOptions], None]
    applies: Callable[[Derivation], str | None] = lambda derivation: None
    #: whether the layer is equivariant to whole-head permutations of attention too (else to
    #: the per-space group only; its generated layout then lists no heads)
    head_permutations: bool = True

    @property
    def file_stem(self) -> str:
        """``polynomial_invariant``: the kind in file and module names."""
        return self.name.replace("-", "_")


#: every registered kind, in registration order
LAYER_KINDS: dict[str, LayerKind] = {}


def register(kind: LayerKind) -> LayerKind:
    """Add ``kind`` to :data:`LAYER_KINDS` (a name is registered once)."""
    if kind.name in LAYER_KINDS:
        raise ValueError(f"layer kind {kind.name!r} is registered twice")
    LAYER_KINDS[kind.name] = kind
    return kind


def layer_kind(name: str) -> LayerKind:
    """The registered kind ``name``; a :class:`GenerationError` lists the valid ones."""
    try:
        return LAYER_KINDS[name]
    except KeyError:
        valid = ", ".join(LAYER_KINDS)
        raise GenerationError(f"unknown layer kind {name!r} (valid: {valid})") from None


def _group_lines(space: WeightSpaceSpec, heads: bool) -> tuple[str, ...]:
    lines = ["Group (per neuron space):"]
    for s in space.spaces:
        if s.is_fixed:
            kind = "fixed"
        else:
            kind = "permuted" + (
                "" if s.scaling.value == "none" else f", {s.scaling.value} scaling"
            )
        lines.append(comment_text(f"    {s.name} ({s.size}): {kind}"))
    for block in space.permuted_heads:
        heads_text = ", ".join("(" + ", ".join(h.spaces) + ")" for h in block.heads)
        state = "permuted as wholes" if heads else "not permuted as wholes by this layer"
        lines.append(comment_text(f"Heads of {block.where}, {state}: {heads_text}"))
    return tuple(lines)


def _meta(derivation: Derivation, layer: str, options: LayerOptions) -> ModuleMeta:
    spec = derivation.spec
    budget = "" if options.budget == "default" else f" --budget {options.budget}"
    summary = comment_text(
        f"{identifier(spec.name)}: {spec.summary()}; permute {spec.permute}; scaling {spec.scaling}"
    )
    return ModuleMeta(
        name=identifier(spec.name),
        spec_summary=summary,
        regenerate=comment_text(
            f"nfn-derive generate {spec.options()} --layer {layer}{budget} -o FILE"
        ),
        group_lines=_group_lines(derivation.space, layer_kind(layer).head_permutations),
        dim=derivation.basis.dim,
        constant_dim=derivation.basis.constant_dim,
        num_maps=derivation.basis.num_maps,
    )


def generate(
    derivation: Derivation,
    layer: str = "linear",
    options: LayerOptions | None = None,
    **option_values: Any,
) -> str:
    """Python source of the ``layer`` module for this derivation.

    Options come as ``options`` or as keywords (``budget``; the polynomial kinds' ``family``,
    ``degree``, ``trainable_psi``, ``max_terms``, ``max_params``)."""
    kind = layer_kind(layer)
    options = replace(options or LayerOptions(), **option_values)
    return render(
        kind.template,
        meta=_meta(derivation, layer, options),
        class_name=class_name(derivation.spec.name, kind.class_suffix),
        layout=layout_literal(derivation.space, heads=kind.head_permutations),
        heads_in_layout=kind.head_permutations and bool(derivation.space.permuted_heads),
        **kind.context(derivation, options),
    )


def generated_class(
    derivation: Derivation, layer: str, options: LayerOptions | None = None
) -> type[nn.Module]:
    """Generate the ``layer`` module, load it from memory and return its layer class."""
    module: types.ModuleType = load_generated(
        generate(derivation, layer, options), f"nfn_generated_{layer_kind(layer).file_stem}"
    )
    return layer_class(module)
