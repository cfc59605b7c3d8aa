"""The MAGEP part of a polynomial layer: terms as virtual tensors.

:func:`magep_plan` extends the weight space with one virtual tensor per MAGEP term (so the layer
plan reads it like an input), maps each to its output (every neuron axis matched, fixed axes
dense), and decides which terms are folded through their factorization (:mod:`derive.plan.fold`)
or mixed as rank-one updates. The statements computing the terms (shared prefix and suffix path
products) are spelled by :mod:`derive.codegen.magep_code`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import prod

from derive.basis.linear import BasisMap, Block
from derive.basis.magep import (
    Chain,
    MagepTerm,
    Psi,
    chain_of,
    is_foldable,
    magep_terms,
    virtual_name,
)
from derive.errors import GenerationError
from derive.weightspace.model import TensorSpec, WeightSpaceSpec

__all__ = ["MagepPlan", "magep_plan", "magep_invariants", "glued_parts"]


@dataclass(frozen=True)
class MagepPlan:
    """The MAGEP part of a polynomial layer: terms, parameters, extended space, maps.

    Terms listed in ``folded`` are never materialized: :mod:`derive.plan.fold` computes their
    contribution through their factorization. Terms in ``outer`` (``b_i Psi' [W](L,i-1)`` into
    a tensor with neuron axes only) are mixed as rank-one updates ``u v^T``.
    """

    chain: Chain
    terms: tuple[MagepTerm, ...]
    psis: tuple[Psi, ...]
    space: WeightSpaceSpec  # the weight space plus one virtual tensor per term
    maps: tuple[BasisMap, ...]  # output <- virtual tensor, one per term
    folded: frozenset[str] = frozenset()  # variables of the folded terms
    outer: frozenset[str] = frozenset()  # variables of the rank-one terms

    @property
    def unmaterialized(self) -> frozenset[str]:
        """Terms whose statements are not written out (folded or rank-one)."""
        return self.folded | self.outer


def magep_invariants(space: WeightSpaceSpec, max_degree: int | None = None) -> MagepPlan:
    """The MAGEP terms that are invariant (those written to the unscaled output bias ``b_L``:
    ``[W](L,0)``, ``[WW](L,0)(L,0)``, ``[bW](L)(L,0)``, ``sum_t [Wb](L,t)`` and the traces)."""
    chain = chain_of(space)
    last = chain.biases[-1]
    if last is None:
        raise GenerationError(
            "MAGEP invariants are the terms of the output bias; this network has none"
        )
    return magep_plan(space, max_degree, outputs={last})


def _term_map(space: WeightSpaceSpec, term: MagepTerm) -> BasisMap:
    """Every neuron axis of the term matched to the output's; fixed axes dense."""
    output = space.tensor(term.output)
    blocks = []
    out_fixed = []
    in_fixed = [q for q, a in enumerate(term.axes) if space.space(a.space).is_fixed]
    for p, axis in enumerate(output.axes):
        if space.space(axis.space).is_fixed:
            out_fixed.append(p)
            continue
        q = next(q for q, a in enumerate(term.axes) if a.space == axis.space)
        blocks.append(Block(axis.space, (p,), (q,)))
    count = prod(space.space(output.axes[p].space).size for p in out_fixed)
    count *= prod(space.space(term.axes[q].space).size for q in in_fixed)
    return BasisMap(
        term.output, virtual_name(term), tuple(blocks), tuple(out_fixed), tuple(in_fixed), count
    )


def magep_plan(
    space: WeightSpaceSpec,
    max_degree: int | None = None,
    outputs: set[str] | None = None,
    fold: bool = False,
) -> MagepPlan:
    """The terms and their maps; with ``fold``, foldable terms are left to
    :mod:`derive.plan.fold` and rank-one terms to the mixing."""
    chain = chain_of(space)
    terms = magep_terms(space, max_degree, outputs)
    folded = frozenset(t.var for t in terms if fold and is_foldable(space, chain, t))
    # b_i Psi' [W](L,i-1) into a W_i with only neuron axes: mixed as a rank-one update
    outer_terms = {
        t.var
        for t in terms
        if fold
        and t.kind == "bW"
        and t.var not in folded
        and all(not space.space(a.space).is_fixed for a in t.axes)
    }
    virtual = tuple(
        TensorSpec(name=virtual_name(t), kind="virtual", layer=0, axes=t.axes) for t in terms
    )
    extended = replace(space, tensors=space.tensors + virtual)
    maps = tuple(_term_map(extended, t) for t in terms)
    psis = tuple(p for t in terms for p in t.psi)
    return MagepPlan(chain, tuple(terms), psis, extended, maps, folded, frozenset(outer_terms))


def glued_parts(term: MagepTerm) -> tuple[str, int]:
    """(prefix ``p`` or suffix ``q``, index) of the path product a term's Psi multiplies."""
    if term.kind in ("WW", "WW0"):
        return "p", term.i
    if term.kind == "trWW":
        return "p", term.t
    return "q", term.t
