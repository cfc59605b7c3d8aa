"""Numeric completeness under whole-head permutations (docs/math.md 8.6).

The per-space generators (:func:`derive.verify.numeric.generators`) act block by block. A
head relabelling ``sigma`` moves tensor ``T`` onto ``sigma T`` (as the runtime's
:func:`nfn_runtime.group.tensor_moves` does it), so it couples the block ``T <- S`` with
``sigma T <- sigma S``: a ``G``-equivariant map has ``L[sigma T, sigma S] = L[T, S]``. Per
orbit of blocks under the generators (a transposition and a cycle of the heads of every
attention), the unknowns are the orbit's blocks side by side; the rows are every block's
per-space constraints and, per generator and block, ``vec L[sigma b] - vec L[b]``. The null
dimension of that system is the orbit's share of the ``G``-equivariant maps, which the tied
basis must match (one coefficient block per orbit); a tied layer's Jacobians, stacked the same
way, must span it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from derive.verify.numeric import Generator, block_constraint, generators
from derive.weightspace.model import WeightSpaceSpec
from nfn_runtime.group import head_relabelling, tensor_moves

T = TypeVar("T", bound=Hashable)

__all__ = [
    "OrbitCheck",
    "head_generators",
    "block_orbits",
    "orbits",
    "head_completeness",
    "tied_null_total",
]

Block = tuple[str, str]


def head_generators(space: WeightSpaceSpec) -> list[dict[str, str]]:
    """Per generator of the head relabellings, where it moves each tensor (as the runtime
    acts): a swap of heads 0 and 1 and a cycle of all heads, per attention."""
    layout = space.to_layout()
    moves = []
    for index, block in enumerate(layout.heads):
        count = block.count
        orders = [[1, 0, *range(2, count)]] + ([[*range(1, count), 0]] if count > 2 else [])
        for order in orders:
            moves.append(tensor_moves(layout, head_relabelling(layout, index, order)))
    return moves


def orbits(items: Iterable[T], images: Callable[[T], Iterable[T]]) -> list[list[T]]:
    """``items`` grouped by orbit under the generators whose images of an item ``images``
    lists, each orbit in order of discovery from its first item (breadth first)."""
    seen: set[T] = set()
    found = []
    for start in items:
        if start in seen:
            continue
        seen.add(start)
        orbit, queue = [start], deque([start])
        while queue:
            for image in images(queue.popleft()):
                if image not in seen:
                    seen.add(image)
                    orbit.append(image)
                    queue.append(image)
        found.append(orbit)
    return found


def block_orbits(names: list[str], moves: list[dict[str, str]]) -> list[list[Block]]:
    """The blocks ``T <- S`` grouped by orbit under the generators, each orbit in order of
    discovery from its first block (blocks in output-major order)."""

    def images(block: Block) -> list[Block]:
        t, s = block
        return [(move.get(t, t), move.get(s, s)) for move in moves]

    return orbits(((t, s) for t in names for s in names), images)


@dataclass(frozen=True)
class OrbitCheck:
    """One orbit of blocks: its tied symbolic count, the null dimension of its system, and the
    span and coupling residual of a layer's Jacobians on it."""

    blocks: tuple[Block, ...]
    symbolic: int
    null_space: int
    jacobian_span: int | None
    coupling: float | None

    @property
    def key(self) -> str:
        return " ~ ".join(f"{t}<-{s}" for t, s in self.blocks)

    @property
    def ok(self) -> bool:
        spans = self.jacobian_span is None or self.jacobian_span == self.symbolic
        coupled = self.coupling is None or self.coupling < 1e-8
        return self.symbolic == self.null_space and spans and coupled


def _rank(matrix: Tensor) -> int:
    if matrix.numel() == 0:
        return 0
    return int(torch.linalg.matrix_rank(matrix, rtol=1e-9).item())


def _orbit_null(
    space: WeightSpaceSpec,
    orbit: list[Block],
    moves: list[dict[str, str]],
    gens: list[Generator],
) -> int:
    """The null dimension of the orbit's stacked system."""
    sizes = []
    for t, s in orbit:
        size = 1
        for n in (*space.shape(space.tensor(t)), *space.shape(space.tensor(s))):
            size *= n
        sizes.append(size)
    offsets = [sum(sizes[:k]) for k in range(len(sizes))]
    total = sum(sizes)
    position = {block: k for k, block in enumerate(orbit)}
    rows = []
    for k, (t, s) in enumerate(orbit):
        constraint = block_constraint(space, space.tensor(t), space.tensor(s), gens)
        if constraint.shape[0]:
            padded = torch.zeros(constraint.shape[0], total, dtype=torch.float64)
            padded[:, offsets[k] : offsets[k] + sizes[k]] = constraint
            rows.append(padded)
        for move in moves:
            j = position[(move.get(t, t), move.get(s, s))]
            if j == k:
                continue
            link = torch.zeros(sizes[k], total, dtype=torch.float64)
            link[:, offsets[j] : offsets[j] + sizes[j]] = torch.eye(sizes[k], dtype=torch.float64)
            link[:, offsets[k] : offsets[k] + sizes[k]] -= torch.eye(sizes[k], dtype=torch.float64)
            rows.append(link)
    if not rows:
        return total
    return total - _rank(torch.cat(rows))


def head_completeness(
    space: WeightSpaceSpec,
    symbolic_counts: dict[str, int],
    jacobians: dict[tuple[str, str], Tensor] | None = None,
    products: bool = False,
) -> list[OrbitCheck]:
    """One check per orbit of two or more blocks sharing a permuted space (an orbit of one
    block is checked by :func:`derive.verify.numeric.completeness_report`; blocks of tensors
    sharing no space are products of constants and invariants, tied in the same way, and are
    checked too with ``products``: many small systems).
    ``symbolic_counts`` are the per-space basis counts per block: the tied basis has one
    block's count per orbit."""
    moves = head_generators(space)
    gens = generators(space)
    acting = {g.space for g in gens}
    names = [t.name for t in space.tensors]
    checks = []
    for orbit in block_orbits(names, moves):
        t, s = orbit[0]
        shared = (
            {a.space for a in space.tensor(t).axes}
            & {a.space for a in space.tensor(s).axes}
            & acting
        )
        if len(orbit) < 2 or not (shared or products):
            continue
        null = _orbit_null(space, orbit, moves, gens)
        span = coupling = None
        if jacobians is not None:
            stacked = torch.cat([jacobians[block] for block in orbit], dim=1)
            span = _rank(stacked)
            first = jacobians[orbit[0]]
            scale = max(float(first.abs().max()), 1e-300)
            coupling = max(float((jacobians[b] - first).abs().max()) for b in orbit) / scale
        symbolic = symbolic_counts.get(f"{t}<-{s}", 0)
        checks.append(OrbitCheck(tuple(orbit), symbolic, null, span, coupling))
    return checks


def tied_null_total(
    space: WeightSpaceSpec, block_nulls: dict[str, int], checks: list[OrbitCheck]
) -> int:
    """The dimension of the ``G``-equivariant maps: per orbit of blocks, its system's null
    dimension where checked, else its first block's (an orbit of one block, or of blocks of
    tensors sharing no space, whose systems couple copies of one block's)."""
    checked = {check.blocks[0]: check.null_space for check in checks}
    names = [t.name for t in space.tensors]
    total = 0
    for orbit in block_orbits(names, head_generators(space)):
        t, s = orbit[0]
        total += checked.get(orbit[0], block_nulls[f"{t}<-{s}"])
    return total
