"""The pipeline in one place: spec -> graph -> group -> basis -> plan -> template -> module.

Every step is a function whose result can be printed and tested on its own;
:func:`derive` runs the first four and :func:`generate` the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import networkx as nx

from derive.basis import LinearBasis, linear_basis
from derive.codegen import ModuleMeta, render
from derive.graph import mlp_graph
from derive.group import weight_space_from_graph
from derive.model import WeightSpaceSpec
from derive.naming import class_name, comment_text, identifier
from derive.plan import LinearPlan, linear_plan
from derive.render import layout_literal, linear_view
from derive.spec import MLPSpec

__all__ = ["Derivation", "derive", "generate", "LAYER_KINDS", "spec_command"]

LAYER_KINDS = ("linear", "invariant")
POLYNOMIAL_LAYER_KINDS = ("polynomial", "polynomial-invariant")


@dataclass(frozen=True)
class Derivation:
    """The inspectable intermediate values of one run of the pipeline."""

    spec: MLPSpec
    graph: nx.MultiDiGraph
    space: WeightSpaceSpec

    @cached_property
    def basis(self) -> LinearBasis:
        return linear_basis(self.space)

    @cached_property
    def linear_plan(self) -> LinearPlan:
        return linear_plan(self.basis)


def derive(spec: MLPSpec) -> Derivation:
    """Build the weight-space graph and its symmetry group (the basis follows lazily)."""
    graph = mlp_graph(spec)
    space = weight_space_from_graph(graph, spec.permute, spec.scaling)
    return Derivation(spec=spec, graph=graph, space=space)


def spec_command(spec: MLPSpec) -> str:
    """The ``--mlp`` options that reproduce ``spec`` (used in generated headers)."""
    acts = (
        ",".join(dict.fromkeys(spec.activations))
        if len(set(spec.activations)) == 1
        else ",".join(spec.activations)
    )
    parts = [f"--mlp {','.join(str(w) for w in spec.widths)}"]
    if spec.activations:
        parts.append(f"--activation {acts}")
    parts.append(f"--permute {spec.permute}")
    parts.append(f"--scaling {spec.scaling}")
    parts.append(f"--name {identifier(spec.name)}")
    return " ".join(parts)


def _group_lines(space: WeightSpaceSpec) -> tuple[str, ...]:
    lines = ["Group (per neuron space):"]
    for s in space.spaces:
        if s.is_fixed:
            kind = "fixed"
        else:
            kind = "permuted" + (
                "" if s.scaling.value == "none" else f", {s.scaling.value} scaling"
            )
        lines.append(comment_text(f"    {s.name} ({s.size}): {kind}"))
    return tuple(lines)


def _meta(derivation: Derivation, layer: str) -> ModuleMeta:
    spec = derivation.spec
    widths = "-".join(str(w) for w in spec.widths)
    acts = ",".join(spec.activations) or "none"
    summary = comment_text(
        f"{identifier(spec.name)}: mlp {widths}, activations {acts}; "
        f"permute {spec.permute}; scaling {spec.scaling}"
    )
    return ModuleMeta(
        name=identifier(spec.name),
        spec_summary=summary,
        regenerate=f"nfn-derive generate {spec_command(spec)} --layer {layer} -o FILE",
        group_lines=_group_lines(derivation.space),
        dim=derivation.basis.dim,
        constant_dim=derivation.basis.constant_dim,
        num_maps=derivation.basis.num_maps,
    )


def generate(
    derivation: Derivation,
    layer: str = "linear",
    family: str = "magep",
    degree: int | None = None,
    trainable_psi: bool = True,
    max_terms: int = 2000,
    max_params: int | None = 1_000_000,
) -> str:
    """Python source of the ``layer`` module for this derivation.

    ``family``, ``degree``, ``trainable_psi`` and ``max_terms`` apply to polynomial layers.
    """
    meta = _meta(derivation, layer)
    if layer == "linear":
        return render(
            "linear.py.jinja",
            meta=meta,
            title="Equivariant linear layer",
            family_note="",
            class_name=class_name(derivation.spec.name, "Linear"),
            layout=layout_literal(derivation.space),
            view=linear_view(derivation.linear_plan),
        )
    if layer == "polynomial":
        from derive.poly_plan import polynomial_plan
        from derive.render_poly import polynomial_view

        pplan = polynomial_plan(
            derivation.basis, family, degree, trainable_psi, max_terms, max_params
        )
        bound = f"degree <= {degree}" if degree is not None else "all degrees"
        return render(
            "linear.py.jinja",
            meta=meta,
            title=f"Equivariant polynomial layer ({family} family, {bound})",
            family_note=f"{family} family, {bound}",
            class_name=class_name(derivation.spec.name, "Polynomial"),
            layout=layout_literal(derivation.space),
            view=polynomial_view(pplan),
        )
    if layer in ("invariant", "polynomial-invariant"):
        from derive.invariant import invariant_plan, invariant_view

        polynomial = layer == "polynomial-invariant"
        plan = invariant_plan(
            derivation.space, polynomial, degree, trainable_psi, family, max_terms
        )
        return render(
            "invariant.py.jinja",
            meta=meta,
            class_name=class_name(
                derivation.spec.name, "PolynomialInvariant" if polynomial else "Invariant"
            ),
            layout=layout_literal(derivation.space),
            view=invariant_view(plan),
        )
    raise ValueError(f"unknown layer kind {layer!r} (valid: {', '.join(LAYER_KINDS)})")
