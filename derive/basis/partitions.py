"""Set partitions of index positions (sympy), and the counts they must match.

Positions of one neuron space in an (output, input) pair of tensors are partitioned into
blocks; every partition is one parameter-sharing pattern (docs/math.md section 3). Only
partitions with at most ``n_s`` blocks are kept: in the orbit basis the others vanish, and the
diagram maps with at most ``n_s`` blocks are related to the surviving orbit maps by a
unitriangular change of basis, so they are exactly a basis at width ``n_s``.
"""

from __future__ import annotations

from functools import cache

from sympy.functions.combinatorial.numbers import bell, stirling
from sympy.utilities.iterables import multiset_partitions

__all__ = ["set_partitions", "partition_count"]


@cache
def set_partitions(count: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """All set partitions of ``range(count)``, each a tuple of sorted blocks, in a fixed order."""
    if count == 0:
        return ((),)
    partitions = []
    for partition in multiset_partitions(list(range(count))):
        blocks = tuple(sorted(tuple(sorted(block)) for block in partition))
        partitions.append(blocks)
    return tuple(sorted(partitions, key=lambda p: (len(p), p)))


@cache
def partition_count(count: int, width: int | None = None) -> int:
    """Bell(count), or the number of partitions with at most ``width`` blocks (sum of S2)."""
    if width is None or width >= count:
        return int(bell(count))
    return sum(int(stirling(count, blocks)) for blocks in range(width + 1))
