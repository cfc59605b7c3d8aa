"""Numeric completeness of polynomial terms under whole-head permutations (docs/math.md 8.6).

Per block ``b = T <- S_1 * ... * S_d`` (T None: an invariant; factors in tensor order) the
per-space equivariant maps are the columns ``N_b`` of
:func:`derive.verify.numeric_poly.sym_power_null_basis`. A head relabelling ``sigma`` moves
the tensors as the runtime does (:func:`derive.verify.numeric_heads.head_generators`), so it
maps ``b`` onto ``b' = sigma T <- sigma S_1 * ... * sigma S_d`` (factors re-sorted), and a
``G``-equivariant map has ``L_b' M = L_b`` with ``M = B_b'^T P B_b``: ``P`` reorders the
Kronecker factors as the sort did, ``B`` are the blocks' symmetric bases. ``b' = b`` with a
nontrivial ``P`` (``b_O <- W_Q(head 0) * W_Q(head 1)`` under a swap) constrains one block.
Per orbit of blocks under the generators, the unknowns are the blocks' coordinates in their
``N_b`` and the rows every coupling; the null dimension of that system is the orbit's share of
the ``G``-equivariant terms, which the tied count of :func:`derive.plan.head_cells.poly_orbit_counts`
must match.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from math import prod

import torch
from torch import Tensor

from derive.basis.polynomial import poly_key
from derive.verify.numeric_heads import head_generators, orbits
from derive.verify.numeric_poly import sym_power_null_basis, symmetric_basis
from derive.weightspace.model import WeightSpaceSpec

__all__ = ["PolyBlock", "PolyOrbitCheck", "poly_block_orbits", "poly_head_completeness"]

#: (output tensor or None, factors in tensor order)
PolyBlock = tuple[str | None, tuple[str, ...]]


@dataclass(frozen=True)
class PolyOrbitCheck:
    """One orbit of blocks: its tied symbolic count, the sum of its blocks' per-space null
    dimensions, and the null dimension of its coupled system."""

    blocks: tuple[PolyBlock, ...]
    symbolic: int
    per_space: int
    null_space: int

    @property
    def key(self) -> str:
        return " ~ ".join(poly_key(t, s) for t, s in self.blocks)

    @property
    def ok(self) -> bool:
        return self.symbolic == self.null_space


def _moved(
    block: PolyBlock, move: Mapping[str, str], order: Mapping[str, int]
) -> tuple[PolyBlock, list[int]]:
    """The image of ``block`` under ``move`` and, per factor slot of the image, the slot of
    ``block`` it comes from (a stable sort: identical factors keep their order)."""
    output, factors = block
    moved = [move.get(f, f) for f in factors]
    ranking = sorted(range(len(moved)), key=lambda k: (order[moved[k]], k))
    target = move.get(output, output) if output is not None else None
    return (target, tuple(moved[k] for k in ranking)), ranking


def poly_block_orbits(
    names: list[str], degree: int, moves: list[dict[str, str]]
) -> list[list[PolyBlock]]:
    """Every block of ``degree`` (outputs, then invariants) grouped by orbit under ``moves``,
    each orbit in order of discovery from its first block."""
    order = {name: k for k, name in enumerate(names)}

    def images(block: PolyBlock) -> list[PolyBlock]:
        return [_moved(block, move, order)[0] for move in moves]

    blocks = (
        (output, factors)
        for output in [*names, None]
        for factors in itertools.combinations_with_replacement(names, degree)
    )
    return orbits(blocks, images)


def _symmetric(space: WeightSpaceSpec, factors: tuple[str, ...]) -> Tensor:
    sizes = [prod(space.shape(space.tensor(f))) for f in factors]
    return symmetric_basis(sizes, [factors.index(f) for f in factors])


def _transfer(
    space: WeightSpaceSpec, block: PolyBlock, image: PolyBlock, ranking: list[int]
) -> Tensor:
    """``M = B_image^T P B_block``: the symmetric coordinates of ``block``'s input in those of
    ``image`` (``P`` puts factor ``ranking[j]`` of ``block`` in slot ``j``)."""
    sizes = [prod(space.shape(space.tensor(f))) for f in block[1]]
    index = torch.arange(prod(sizes)).reshape(sizes).permute(ranking).reshape(-1)
    reorder = torch.eye(prod(sizes), dtype=torch.float64)[index]
    return _symmetric(space, image[1]).T @ reorder @ _symmetric(space, block[1])


def _orbit_null(
    space: WeightSpaceSpec,
    orbit: list[PolyBlock],
    nulls: Mapping[PolyBlock, Tensor],
    moves: list[dict[str, str]],
    order: Mapping[str, int],
) -> int:
    """The null dimension of the orbit's coupled system in the blocks' null coordinates."""
    widths = [nulls[b].shape[1] for b in orbit]
    total = sum(widths)
    if not total:
        return 0
    offsets = dict(zip(orbit, itertools.accumulate(widths, initial=0)))
    rows = []
    for block in orbit:
        n_out = prod(space.shape(space.tensor(block[0]))) if block[0] is not None else 1
        for move in moves:
            image, ranking = _moved(block, move, order)
            if image == block and ranking == sorted(ranking):
                continue
            transfer = _transfer(space, block, image, ranking)
            carried = torch.kron(transfer.T.contiguous(), torch.eye(n_out, dtype=torch.float64))
            row = torch.zeros(carried.shape[0], total, dtype=torch.float64)
            start, k = offsets[image], nulls[image].shape[1]
            row[:, start : start + k] += carried @ nulls[image]
            start, k = offsets[block], nulls[block].shape[1]
            row[:, start : start + k] -= nulls[block]
            rows.append(row)
    if not rows:
        return total
    stacked = torch.cat(rows)
    rank = int(torch.linalg.matrix_rank(stacked, atol=1e-9, rtol=1e-9).item())
    return total - rank


def poly_head_completeness(
    space: WeightSpaceSpec, symbolic_tied: Mapping[str, int], degree: int = 2
) -> tuple[list[PolyOrbitCheck], dict[str, int]]:
    """One check per orbit of blocks of ``degree`` under the head relabellings, and the
    per-space null dimension of every block (keyed like ``W1<-W1*b7``). ``symbolic_tied``
    holds the tied counts per block key (an orbit's count: the sum over its blocks)."""
    names = [t.name for t in space.tensors]
    order = {name: k for k, name in enumerate(names)}
    moves = head_generators(space)
    checks = []
    per_space: dict[str, int] = {}
    for orbit in poly_block_orbits(names, degree, moves):
        nulls = {block: sym_power_null_basis(space, *block) for block in orbit}
        per_space.update({poly_key(*b): int(n.shape[1]) for b, n in nulls.items()})
        symbolic = sum(symbolic_tied.get(poly_key(*b), 0) for b in orbit)
        null = _orbit_null(space, orbit, nulls, moves, order)
        checks.append(
            PolyOrbitCheck(tuple(orbit), symbolic, sum(n.shape[1] for n in nulls.values()), null)
        )
    return checks, per_space
