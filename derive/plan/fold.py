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

__all__ = ["FoldGroup", "fold_groups", "fold_slots", "fold_statements"]


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


def fold_statements(magep: MagepPlan, group: FoldGroup) -> list[tuple[str, str]]:
    """Statements leaving ``group.name`` as ``(B, rows, out_channels * out_factor)``."""
    chain = magep.chain
    n0 = chain.sizes[0]
    out: list[tuple[str, str]] = []
    lefts, rights = [], []
    for k, (term, _) in enumerate(group.parts):
        theta, left, right = f"{group.name}_theta{k}", f"{group.name}_a{k}", f"{group.name}_g{k}"
        columns = (
            f"{k * n0} * c_in : {(k + 1) * n0} * c_in" if k else f": {n0} * c_in"
        )  # units of c_in
        out.append((f"{theta} = self.{group.weight}[:, {columns}].view(-1, c_in, {n0})", ""))
        if term.kind.startswith("WW"):
            glued = magep.left[term.var]
            left_code = f"{glued}.permute(0, 2, 1, 3).reshape(batch, {group.rows}, -1)"
            right_code = f'torch.einsum("bclu,zcu->bclz", q0, {theta}).flatten(1, 2)'
        else:
            bias = (chain.biases[term.i - 1] or "").lower()
            row = f"{group.name}_r{k}"
            out.append(
                (f"{row} = {magep.right[term.var]}.squeeze(-2)", f"{term.formula}: Psi' [W](L,0)")
            )
            left_code = f"{bias}.permute(0, 2, 1)"
            right_code = f'torch.einsum("bcu,zcu->bcz", {row}, {theta})'
        out.append((f"{left} = {left_code}", f"{term.formula}: factor A per row"))
        out.append((f"{right} = {right_code}", "factor R contracted with the mixing weights"))
        lefts.append(left)
        rights.append(right)
    if len(lefts) == 1:
        out.append((f"{group.name} = torch.bmm({lefts[0]}, {rights[0]})", ""))
        return out
    out.append((f"{group.name}_a = torch.cat([{', '.join(lefts)}], dim=-1)", ""))
    out.append((f"{group.name}_g = torch.cat([{', '.join(rights)}], dim=1)", ""))
    out.append((f"{group.name} = torch.bmm({group.name}_a, {group.name}_g)", ""))
    return out


def fold_placement(space: WeightSpaceSpec, group: FoldGroup) -> str:
    """``group.name`` ``(B, rows, c_out * fixed)`` spelled in the output's layout."""
    tensor = space.tensor(group.output)
    fixed = [space.space(a.space).size for a in tensor.axes if space.is_fixed_axis(a)]
    current = ["row", "channel", *(f"fixed{k}" for k in range(len(fixed)))]
    target = ["channel"]
    k = 0
    for axis in tensor.axes:
        if space.is_fixed_axis(axis):
            target.append(f"fixed{k}")
            k += 1
        else:
            target.append("row")
    view = ", ".join(["batch", str(group.rows), "c_out", *(str(n) for n in fixed)])
    permutation = ", ".join(str(1 + current.index(role)) for role in target)
    return f"{group.name}.view({view}).permute(0, {permutation})"
