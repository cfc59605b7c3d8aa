"""The polynomial layer plan: the complete linear layer plus polynomial terms.

The polynomial layer writes every output as the complete equivariant linear map of the input
(all degree-1 maps and constants) plus polynomial terms of degree 2 and higher:

- family ``magep``: the MAGEP-NFN terms (:mod:`derive.basis.magep`), computed through shared path
  products and read as virtual tensors;
- family ``complete``: every equivariant monomial of degree 2..d
  (:mod:`derive.basis.polynomial`), each a per-channel product feature (one einsum).

Both go through the same assembly as the linear layer (:func:`derive.plan.linear.assemble_plan`), so
every term whose output placement matches merges into the same channel-mixing matmul. When the
group permutes attention heads as wholes, the matmuls are tied across heads like the linear
layer's (:mod:`derive.plan.tying`): one coefficient block per orbit of maps and of terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from derive.basis.head_orbits import head_orbits
from derive.basis.linear import LinearBasis
from derive.basis.magep import Psi
from derive.basis.polynomial import enumerate_polynomial
from derive.errors import GenerationError
from derive.plan.fold import FoldGroup, fold_groups, fold_slots
from derive.plan.linear import LinearPlan, assemble_plan
from derive.plan.magep import MagepPlan, magep_plan
from derive.plan.tying import tied_plan
from derive.weightspace.model import WeightSpaceSpec

__all__ = [
    "FAMILIES",
    "DEFAULT_MAX_TERMS",
    "DEFAULT_MAX_PARAMS",
    "PolynomialPlan",
    "polynomial_plan",
]

FAMILIES = ("magep", "complete")
#: the complete family refuses to generate more terms than this unless raised (--max-terms)
DEFAULT_MAX_TERMS = 2000
#: ... or terms with more scalar parameters per (input, output) channel pair (--max-params)
DEFAULT_MAX_PARAMS = 1_000_000


@dataclass(frozen=True)
class PolynomialPlan:
    """Everything the polynomial template needs beyond the linear layer's plan."""

    family: str
    degree: int | None
    plan: LinearPlan  # over the weight space extended by virtual tensors (magep)
    psis: tuple[Psi, ...]
    trainable_psi: bool
    terms: tuple[Any, ...]  # MagepTerm or PolyMap records, for the docstring and reports
    magep: MagepPlan | None
    folds: tuple[FoldGroup, ...] = ()  # glued terms computed through their factorization

    def __str__(self) -> str:
        bound = f"degree <= {self.degree}" if self.degree is not None else "all degrees"
        return (
            f"PolynomialPlan ({self.family} family, {bound}): {len(self.terms)} terms, "
            f"{len(self.psis)} Psi parameters, {len(self.folds)} folded groups; "
            + str(self.plan).splitlines()[0]
        )

    def __repr__(self) -> str:
        return f"<{self}>"


def polynomial_plan(
    basis: LinearBasis,
    family: str = "magep",
    degree: int | None = None,
    trainable_psi: bool = True,
    max_terms: int = DEFAULT_MAX_TERMS,
    max_params: int | None = DEFAULT_MAX_PARAMS,
    fold: bool = True,
) -> PolynomialPlan:
    """The plan of the polynomial layer over ``basis.space``."""
    space: WeightSpaceSpec = basis.space
    linear_maps = [m for block in basis.blocks for m in block.maps]
    constants = [m for block in basis.constants for m in block.maps]
    real = [t.name for t in space.tensors]
    if family == "magep":
        if not head_orbits(space).trivial:  # a chain has no attention heads
            raise GenerationError("MAGEP terms are not tied across attention heads")
        mp = magep_plan(space, degree, fold=fold)
        groups = tuple(fold_groups(space, mp))
        folded = {m for group in groups for _, m in group.parts}
        regular = [m for m in mp.maps if m not in folded]
        plan = assemble_plan(mp.space, [*linear_maps, *regular], constants, outputs=real)
        plan.outer_features.update(mp.outer)
        for group in groups:  # the folded maps' coefficients live in the groups' own weights
            plan.map_slots.update(fold_slots(group))
            plan.fan_in[group.output] += group.in_size * len(group.parts)
        return PolynomialPlan(family, degree, plan, mp.psis, trainable_psi, mp.terms, mp, groups)
    if family == "complete":
        top = degree if degree is not None else 2
        if top < 2:
            raise GenerationError(f"--degree must be at least 2 for polynomial terms, got {top}")
        poly_maps: list[Any] = []
        for d in range(2, top + 1):
            poly = enumerate_polynomial(space, d, limit=max_terms - len(poly_maps))
            poly_maps += [
                m for block in poly.blocks if block.output is not None for m in block.maps
            ]
        params = sum(m.num_params for m in poly_maps)
        if max_params is not None and params > max_params:
            raise GenerationError(
                f"the complete degree-2..{top} terms of {space.name} carry {params} parameters per "
                f"channel pair (dense over fixed axes), more than the limit of {max_params}; "
                "raise it with --max-params N, lower --degree, or use --family magep"
            )
        plan = tied_plan(assemble_plan(space, [*linear_maps, *poly_maps], constants, outputs=real))
        return PolynomialPlan(family, top, plan, (), trainable_psi, tuple(poly_maps), None, ())
    raise GenerationError(f"unknown polynomial family {family!r} (valid: {', '.join(FAMILIES)})")
