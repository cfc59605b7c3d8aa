"""Coefficient cells moved by whole-head permutations, and the classes they tie into
(docs/math.md 8.6).

A *cell* is one coefficient block of a layer: the maps that write one placement (an output
tensor, which of its axes are read and which broadcast) from one feature (an input tensor, or a
per-channel product of factors, and which of their axes are read or averaged). Its
coefficients per channel pair form a grid of units: rows over the output's fixed axes, columns
over the fixed axes the feature folds into its channels.

A head relabelling ``sigma`` moves the cell ``T <- S`` (``T <- S_1 * S_2`` for a product) onto
the cell ``sigma T <- sigma S`` (``sigma S_1 * sigma S_2``) with the same index pattern. Rows
stay in place. The columns of a product move when ``sigma`` reorders its factors (a product
key lists its factors in tensor order, and the fixed axes of a factor move with it). The layer
commutes with the relabellings iff every unit ``(cell, column)`` carries the coefficients of
its image, so the coefficients tie per class of units under the moves (:class:`UnitClasses`).
A cell can be its own image with its columns permuted: ``b_O <- W_Q(head 0) * W_Q(head 1)``
under the swap of heads 0 and 1 (``theta[x, u, v] = theta[x, v, u]``). Its columns then tie
among themselves. With ``identical`` the classes also join the columns that relabelling
identical factors maps onto each other (``T <- S * S``); the polynomial basis counts those once.

The columns of a linear feature (one input tensor) never move apart, so such a cell is one
unit: its whole block ties to its image's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

from derive.basis.polynomial import PolyMap, factor_relabellings, poly_key
from derive.errors import GenerationError
from derive.plan.features import PRODUCT, FeatureKey, fixed_positions, is_product_key, key_factor
from derive.weightspace.model import WeightSpaceSpec

__all__ = [
    "Cell",
    "moved_cell",
    "column_permutation",
    "poly_cell",
    "UnitClasses",
    "unit_classes",
    "PolyOrbitCounts",
    "poly_orbit_counts",
]

Groups = tuple[tuple[Any, ...], ...]
#: (output tensor or None for an invariant, kept output groups, broadcast output groups)
CellPlacement = tuple[str | None, Groups, Groups]
Cell = tuple[CellPlacement, FeatureKey]


def _labels(names: Sequence[str]) -> tuple[int, ...]:
    return tuple(names.index(name) for name in names)


def column_permutation(
    space: WeightSpaceSpec, feature: FeatureKey, renamed: Sequence[int]
) -> tuple[int, ...]:
    """Per column of a product feature, its column once factor ``k`` is renamed
    ``renamed[k]`` (columns enumerate the fixed axes ``(factor, axis)`` in order, row-major)."""
    fixed = fixed_positions(space, feature)
    if not is_product_key(feature) or not fixed:
        return tuple(range(key_factor(space, feature)))
    factors = feature[1]
    sizes = [space.shape(space.tensor(factors[k]))[p] for k, p in fixed]
    target = sorted(range(len(fixed)), key=lambda i: (renamed[fixed[i][0]], fixed[i][1]))
    where = [target.index(i) for i in range(len(fixed))]  # old slot -> new slot
    new_sizes = [sizes[i] for i in target]
    strides = [prod(new_sizes[j + 1 :]) for j in range(len(new_sizes))]
    return tuple(
        sum(value * strides[where[i]] for i, value in enumerate(entry))
        for entry in itertools.product(*(range(n) for n in sizes))
    )


def _renamed(
    factors: tuple[str, ...], kept: Groups, reduced: Groups, renamed: Sequence[int]
) -> FeatureKey:
    """The product key with factor ``k`` renamed ``renamed[k]`` (groups re-sorted)."""

    def group(positions: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(sorted((renamed[k], p) for k, p in positions))

    return (
        PRODUCT,
        factors,
        tuple(group(g) for g in kept),
        tuple(sorted(group(g) for g in reduced)),
    )


def moved_cell(
    space: WeightSpaceSpec,
    cell: Cell,
    move: Mapping[str, str],
    known: Mapping[Cell, Any],
    order: Mapping[str, int],
) -> tuple[Cell, tuple[int, ...]]:
    """The cell ``move`` (tensor -> tensor) maps ``cell`` onto, among ``known``, and per unit
    of ``cell`` its unit there (a product's columns; a linear cell is one unit). ``order``
    ranks the tensors (product factors are sorted by it); of the relabellings of identical
    factors, the one ``known`` holds is taken."""
    (output, kept, broadcast), feature = cell
    placement = (move.get(output, output) if output is not None else None, kept, broadcast)
    if not is_product_key(feature):
        image: Cell = (placement, (move.get(feature[0], feature[0]), *feature[1:]))
        if image in known:
            return image, (0,)
    else:
        _, factors, kept_in, reduced = feature
        moved = [move.get(f, f) for f in factors]
        ranking = sorted(range(len(moved)), key=lambda k: (order[moved[k]], k))
        position = [ranking.index(k) for k in range(len(moved))]
        new_factors = tuple(moved[k] for k in ranking)
        for relabelling in factor_relabellings(_labels(new_factors)):
            renamed = [relabelling[position[k]] for k in range(len(moved))]
            image = (placement, _renamed(new_factors, kept_in, reduced, renamed))
            if image in known:
                return image, column_permutation(space, feature, renamed)
    raise GenerationError(
        f"a head relabelling moves the coefficients {cell} outside the layer's basis"
    )


def _stabilizer_columns(space: WeightSpaceSpec, cell: Cell) -> list[tuple[int, ...]]:
    """Column permutations of the relabellings of identical factors that fix ``cell``."""
    feature = cell[1]
    if not is_product_key(feature):
        return []
    _, factors, kept, reduced = feature
    permutations = []
    for relabelling in factor_relabellings(_labels(factors))[1:]:
        if _renamed(factors, kept, reduced, relabelling) == feature:
            permutations.append(column_permutation(space, feature, relabelling))
    return permutations


def poly_cell(poly_map: PolyMap) -> Cell:
    """The cell of a polynomial term (as :func:`derive.plan.linear.map_keys` keys it; an
    invariant, output None, has no output groups)."""
    matched = [b for b in poly_map.blocks if b.outputs and b.inputs]
    matched.sort(key=lambda b: min(b.outputs))
    broadcast = tuple(sorted(b.outputs for b in poly_map.blocks if b.outputs and not b.inputs))
    reduced = tuple(sorted(b.inputs for b in poly_map.blocks if not b.outputs))
    placement = (poly_map.output, tuple(b.outputs for b in matched), broadcast)
    return placement, (PRODUCT, poly_map.factors, tuple(b.inputs for b in matched), reduced)


def _tensors(cell: Cell) -> tuple[str, ...]:
    (output, _, _), feature = cell
    inputs = feature[1] if is_product_key(feature) else (feature[0],)
    return (*inputs, output) if output is not None else tuple(inputs)


class UnitClasses:
    """Classes of units ``(cell, column)`` joined by moves (union-find; a linear cell is one
    unit). Every class of an orbit of cells meets every cell of that orbit."""

    def __init__(self, space: WeightSpaceSpec, cells: Sequence[Cell]) -> None:
        self.cells = tuple(cells)
        self.index = {cell: k for k, cell in enumerate(self.cells)}
        widths = [
            key_factor(space, feature) if is_product_key(feature) else 1
            for _, feature in self.cells
        ]
        self._start = list(itertools.accumulate(widths, initial=0))
        self._parent = list(range(self._start[-1]))

    def _find(self, unit: int) -> int:
        while self._parent[unit] != unit:
            self._parent[unit] = self._parent[self._parent[unit]]
            unit = self._parent[unit]
        return unit

    def join(self, cell: Cell, image: Cell, columns: Sequence[int]) -> None:
        """Tie column ``f`` of ``cell`` to column ``columns[f]`` of ``image``."""
        start, target = self._start[self.index[cell]], self._start[self.index[image]]
        for column, to in enumerate(columns):
            a, b = self._find(start + column), self._find(target + to)
            if a != b:
                self._parent[max(a, b)] = min(a, b)

    def roots(self, cell: Cell) -> tuple[int, ...]:
        """The class of every unit of ``cell``."""
        k = self.index[cell]
        return tuple(self._find(unit) for unit in range(self._start[k], self._start[k + 1]))


def unit_classes(
    space: WeightSpaceSpec,
    cells: Sequence[Cell],
    moves: Iterable[Mapping[str, str]],
    identical: bool = False,
) -> UnitClasses:
    """The classes of the units of ``cells`` under the tensor ``moves`` (generators of the
    head relabellings), and with ``identical`` under relabelling identical factors too."""
    classes = UnitClasses(space, cells)
    order = {t.name: k for k, t in enumerate(space.tensors)}
    reading: dict[str, list[Cell]] = {}
    for cell in classes.cells:
        for name in dict.fromkeys(_tensors(cell)):
            reading.setdefault(name, []).append(cell)
    for move in moves:  # only the cells of a moved tensor move
        touched = {c: None for name in move for c in reading.get(name, ())}
        for cell in touched:
            image, columns = moved_cell(space, cell, move, classes.index, order)
            classes.join(cell, image, columns)
    if identical:
        for cell in classes.cells:
            for columns in _stabilizer_columns(space, cell):
                classes.join(cell, cell, columns)
    return classes


@dataclass(frozen=True)
class PolyOrbitCounts:
    """Polynomial terms under the per-space group and under whole-head permutations too:
    terms and their orbits, and the dimensions per channel pair (per block key, the tied
    dimension of the classes whose first unit lies in that block)."""

    terms: int
    orbits: int
    dim: int
    tied_dim: int
    tied_by_block: dict[str, int]


def _fixed_rows(space: WeightSpaceSpec, poly_map: PolyMap) -> int:
    """The entries of a term's output over its fixed axes (1 for an invariant)."""
    if poly_map.output is None:
        return 1
    shape = space.shape(space.tensor(poly_map.output))
    return prod(shape[p] for p in poly_map.out_fixed)


def poly_orbit_counts(
    space: WeightSpaceSpec, maps: Sequence[PolyMap], moves: Iterable[Mapping[str, str]]
) -> PolyOrbitCounts:
    """Count the terms ``maps`` (a complete set of canonical terms, closed under the moves)
    and their tied classes: one coefficient per class of ``(term, fixed-axis entry)`` under
    head relabellings and relabelling identical factors."""
    cells = [poly_cell(m) for m in maps]
    rows = {cell: _fixed_rows(space, m) for cell, m in zip(cells, maps)}
    per_space = unit_classes(space, cells, (), identical=True)
    tied = unit_classes(space, cells, moves, identical=True)
    dim = sum(rows[cell] * len(set(per_space.roots(cell))) for cell in cells)
    seen: set[int] = set()
    orbits: set[int] = set()
    tied_dim = 0
    by_block: dict[str, int] = {}
    for cell, m in zip(cells, maps):
        roots = tied.roots(cell)
        orbits.add(min(roots))
        for root in dict.fromkeys(roots):
            if root not in seen:
                seen.add(root)
                tied_dim += rows[cell]
                key = poly_key(m.output, m.factors)
                by_block[key] = by_block.get(key, 0) + rows[cell]
    return PolyOrbitCounts(len(cells), len(orbits), dim, tied_dim, by_block)
