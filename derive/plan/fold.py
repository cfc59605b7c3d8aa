"""Folding glued MAGEP terms through their low-rank factorization.

A glued term ending on the input side, ``V = [W](i,0) Psi [W](L,0)`` or
``V = b_i Psi' [W](L,0)``, has its columns on the fixed input axis (n_0 of them) but rank n_L
(or 1) per channel: ``V[c][j,u] = sum_l A[c][j,l] R[c][l,u]`` with ``A = [W](i,0) Psi`` (or
``b_i``) and ``R = [W](L,0)`` (or ``Psi' [W](L,0)``). The layer mixes V densely over u, so
instead of materializing V and multiplying by ``in_channels * n_0`` columns of weights, the
weights are contracted with R first:

    out[b,o,j,x] = sum_{c,l} A[b,c,j,l] G[b,c,l,o,x],   G = sum_u theta[o,x,c,u] R[b,c,l,u]

For W'(1) at n_0 = 64, n_L = 10 this is about a fifth of the direct GEMM's work.
(:func:`derive.basis.magep.is_foldable` says which terms qualify.)
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from derive.basis.linear import BasisMap
from derive.basis.magep import MagepTerm
from derive.plan.features import tensor_var
from derive.plan.linear import MapSlot
from derive.plan.magep import MagepPlan
from derive.weightspace.model import WeightSpaceSpec

__all__ = ["FoldGroup", "fold_groups", "fold_slots"]


@dataclass(frozen=True)
class FoldGroup:
    """The folded terms written to one output: one weight, columns ``[term 1 | term 2 | ...]``."""

    output: str
    parts: tuple[tuple[MagepTerm, BasisMap], ...]
    out_factor: int  # product of the output's fixed axis sizes (rows = out_channels * this)
    in_size: int  # n_0: columns per part = in_channels * n_0
    rows: int  # size of the output's neuron axis

    @property
    def name(self) -> str:
        return f"fold_{tensor_var(self.output)}"

    @property
    def weight(self) -> str:
        return f"{self.name}_weight"


def fold_groups(space: WeightSpaceSpec, magep: MagepPlan) -> list[FoldGroup]:
    """Folded terms grouped by output, in the order of the MAGEP terms."""
    groups: dict[str, list[tuple[MagepTerm, BasisMap]]] = {}
    for term, basis_map in zip(magep.terms, magep.maps):
        if term.var in magep.folded:
            groups.setdefault(term.output, []).append((term, basis_map))
    out = []
    for output, parts in groups.items():
        tensor = space.tensor(output)
        fixed = prod(space.space(a.space).size for a in tensor.axes if space.is_fixed_axis(a))
        rows = magep.chain.sizes[parts[0][0].i]
        out.append(FoldGroup(output, tuple(parts), fixed, magep.chain.sizes[0], rows))
    return out


def fold_slots(group: FoldGroup) -> dict[BasisMap, MapSlot]:
    """Where each folded map's coefficients live in the group's weight."""
    return {
        basis_map: MapSlot(group.name, 0, group.out_factor, k * group.in_size, group.in_size)
        for k, (_, basis_map) in enumerate(group.parts)
    }
