"""Orbits of basis maps under whole-head permutations (docs/math.md 8.6).

Let ``H`` be the per-space group and ``S`` the relabellings of attention heads
(:class:`derive.weightspace.model.HeadBlock`). ``S`` normalizes ``H``, so the group is
``G = H x| S``, and a linear map is ``G``-equivariant iff it is ``H``-equivariant and commutes
with every relabelling. A relabelling ``sigma`` moves tensor ``T`` onto ``sigma T`` with its
axes in place, so conjugating the ``H``-basis map ``T <- S`` with pattern ``P`` by ``sigma``
gives the basis map ``sigma T <- sigma S`` with the same pattern: the relabellings permute the
``H``-basis, and the ``G``-equivariant maps are spanned by its orbit sums (one coefficient per
orbit). The same holds for constants (orbits of ``T``) and invariant functionals (orbits of
``S``).

:class:`HeadOrbits` names an orbit by its canonical member: in each attention, the heads the
tensors use renumbered ``0, 1, ...`` in order of first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

from derive.basis.linear import LinearBasis
from derive.weightspace.model import WeightSpaceSpec

__all__ = ["HeadOrbits", "head_orbits", "tied_dims"]


@dataclass(frozen=True)
class HeadOrbits:
    """The head relabellings of a weight space, acting on its tensors.

    ``blocks[b][h]`` lists the tensors (and buffers) of head ``h`` of attention ``b``; entry
    ``k`` of every head corresponds."""

    blocks: tuple[tuple[tuple[str, ...], ...], ...]

    @property
    def trivial(self) -> bool:
        """True without whole-head permutations (every orbit is one map)."""
        return not self.blocks

    @cached_property
    def _where(self) -> dict[str, tuple[tuple[int, int, int], ...]]:
        """Per tensor its (attention, head, entry) in every attention it belongs to."""
        found: dict[str, list[tuple[int, int, int]]] = {}
        for b, heads in enumerate(self.blocks):
            for h, tensors in enumerate(heads):
                for k, name in enumerate(tensors):
                    found.setdefault(name, []).append((b, h, k))
        return {name: tuple(places) for name, places in found.items()}

    def head_of(self, tensor: str, block: int) -> int | None:
        """The head of attention ``block`` that ``tensor`` belongs to, or None."""
        for b, h, _ in self._where.get(tensor, ()):
            if b == block:
                return h
        return None

    def moved(self, tensor: str, block: int, order: dict[int, int]) -> str:
        """``tensor`` after moving head ``h`` of attention ``block`` to ``order[h]``."""
        for b, h, k in self._where.get(tensor, ()):
            if b == block and h in order:
                return self.blocks[b][order[h]][k]
        return tensor

    def canonical(self, tensors: Sequence[str | None]) -> tuple[str | None, ...]:
        """The canonical member of the orbit of ``tensors`` (moved together; None stays)."""
        current = list(tensors)
        for block in range(len(self.blocks)):
            order: dict[int, int] = {}
            for name in current:
                head = None if name is None else self.head_of(name, block)
                if head is not None and head not in order:
                    order[head] = len(order)
            current = [None if n is None else self.moved(n, block, order) for n in current]
        return tuple(current)

    def generators(self) -> tuple[dict[str, str], ...]:
        """Tensor moves generating the relabellings: per attention, a swap of heads 0 and 1
        and, with three heads or more, the cycle ``h -> h + 1``; each maps every tensor of a
        moved head to the corresponding tensor of its new head (tensors not moved are left
        out)."""
        moves = []
        for block, heads in enumerate(self.blocks):
            count = len(heads)
            orders = [[1, 0, *range(2, count)]] + ([[*range(1, count), 0]] if count > 2 else [])
            for order in orders:
                moved = {
                    name: self.moved(name, block, dict(enumerate(order)))
                    for tensors in heads
                    for name in tensors
                }
                moves.append({name: to for name, to in moved.items() if name != to})
        return tuple(moves)

    def orbit_size(self, tensors: Sequence[str | None]) -> int:
        """How many distinct tuples the relabellings move ``tensors`` to."""
        size = 1
        for block, heads in enumerate(self.blocks):
            used = {
                h for n in tensors if n is not None if (h := self.head_of(n, block)) is not None
            }
            for k in range(len(used)):
                size *= len(heads) - k
        return size


def head_orbits(space: WeightSpaceSpec) -> HeadOrbits:
    """The relabellings of the heads ``space``'s group permutes as wholes."""
    return HeadOrbits(tuple(block.tensors for block in space.permuted_heads))


def tied_dims(basis: LinearBasis, orbits: HeadOrbits) -> tuple[int, int, int]:
    """(dimension, constants, invariant functionals) per channel pair with one coefficient per
    orbit: every block's dimension divided by the size of its orbit, summed."""
    patterns = basis.patterns
    names = [t.name for t in patterns.tensors]
    constants = [b.dim for b in basis.constants]
    invariants = [b.dim for b in basis.invariants]
    dim = Fraction(0)
    shared = {
        (t, s): len(patterns.kinds[k]) * patterns.axes[t].fixed_size * patterns.axes[s].fixed_size
        for t, (inputs, kinds) in enumerate(zip(patterns.shared_inputs, patterns.shared_kinds))
        for s, k in zip(inputs, kinds)
    }
    for t, out in enumerate(names):
        for s, name in enumerate(names):
            block = shared.get((t, s), constants[t] * invariants[s])
            if block:
                dim += Fraction(block, orbits.orbit_size((out, name)))
    constant = sum(Fraction(c, orbits.orbit_size((n,))) for n, c in zip(names, constants))
    invariant = sum(Fraction(i, orbits.orbit_size((n,))) for n, i in zip(names, invariants))
    return int(dim), int(constant), int(invariant)
