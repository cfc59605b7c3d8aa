"""One coefficient block per orbit of basis maps under whole-head permutations.

Every entry block of a matmul weight of the plan is one basis map (a placement's rows, a
feature's columns; :class:`derive.plan.linear.MapSlot`). Relabelling attention heads permutes
the maps (:mod:`derive.basis.head_orbits`), so a layer equivariant to it has one coefficient
block per orbit: the generated module holds the distinct blocks in one flat parameter and
gathers each matmul's weight from it (:func:`nfn_runtime.tying.tied_index`). Constants
(matmul biases) are tied the same way. A factored matmul (size budget, ``up @ down``) ties the
rows of ``up`` per orbit of placements and the columns of ``down`` per orbit of features, in
tables shared by every factored matmul: a restriction of the tied layer, still equivariant.

Polynomial terms tie the same way, unit by unit (:mod:`derive.plan.head_cells`): a relabelling
that reorders a product's factors permutes the columns of its block, and a term that a
relabelling maps to itself ties some of its own columns. Such a cell carries a column map: per
column of the weight block, its column in the orbit's stored block (fewer columns when some
tie).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from derive.basis.head_orbits import HeadOrbits, head_orbits
from derive.errors import GenerationError
from derive.plan.features import is_product_key
from derive.plan.head_cells import Cell as UnitCell
from derive.plan.head_cells import UnitClasses, unit_classes
from derive.plan.linear import LinearPlan, MapSlot, MixOp, PlacementKey

__all__ = ["Tying", "TiedOp", "plan_tying", "tied_plan", "WEIGHT", "BIAS", "UP", "DOWN"]

#: the flat parameters of a tied layer
WEIGHT, BIAS, UP, DOWN = "theta_weight", "theta_bias", "theta_up", "theta_down"

#: row start, row factor, column start, column factor, offset (all in units) and, where columns
#: tie or move, per column its column in the stored block
Cell = tuple[int, int, int, int, int] | tuple[int, int, int, int, int, tuple[int, ...]]
Rows = tuple[int, int, int]  # start, factor, offset


@dataclass(frozen=True)
class TiedOp:
    """Where one matmul's weight (``cells``, dense) or factors (``up_rows``, ``down_cols``)
    and bias (``bias_rows``) come from in the flat parameters."""

    cells: tuple[Cell, ...] = ()
    up_rows: tuple[Rows, ...] = ()
    down_cols: tuple[Rows, ...] = ()
    bias_rows: tuple[Rows, ...] = ()


@dataclass(frozen=True)
class Tying:
    """The tied parameters of a plan: their sizes (``weight`` in units of ``c_out * c_in``,
    ``bias`` and ``up`` rows in units of ``c_out``, ``down`` columns in units of ``c_in``),
    per matmul its :class:`TiedOp`, and per parameter its blocks ``(offset, size, output
    tensor)`` for initialization with that output's fan-in."""

    ops: dict[str, TiedOp]
    weight: int
    bias: int
    up: int
    down: int
    rank: int
    weight_blocks: tuple[tuple[int, int, str], ...]
    bias_blocks: tuple[tuple[int, int, str], ...]
    up_blocks: tuple[tuple[int, int, str], ...]

    def slot_cell(self, slot: MapSlot) -> Cell:
        """The cell holding a dense map's coefficients."""
        tied = self.ops[slot.op]
        return next(
            cell for cell in tied.cells if cell[0] == slot.row_start and cell[2] == slot.col_start
        )

    def slot_offset(self, slot: MapSlot) -> int:
        """The offset of a constant's block in the flat bias."""
        tied = self.ops[slot.op]
        return next(o for start, _, o in tied.bias_rows if start == slot.row_start)


class _Slots:
    """Orbit keys -> offsets, handed out in order of first use."""

    def __init__(self) -> None:
        self.offsets: dict[object, int] = {}
        self.size = 0
        self.blocks: list[tuple[int, int, str]] = []

    def offset(self, key: object, size: int, output: str) -> int:
        if key not in self.offsets:
            self.offsets[key] = self.size
            self.blocks.append((self.size, size, output))
            self.size += size
        return self.offsets[key]


def _placement_orbit(orbits: HeadOrbits, key: PlacementKey) -> object:
    (output,) = orbits.canonical((key[0],))
    return (output, key[1], key[2])


class _Columns:
    """Classes of weight units -> (offset, column) in the flat weight: per orbit of cells, in
    order of first use, one block of ``rows x classes`` units."""

    def __init__(self, classes: UnitClasses) -> None:
        self.classes = classes
        self.placed: dict[int, tuple[int, int]] = {}
        self.size = 0
        self.blocks: list[tuple[int, int, str]] = []

    def cell(self, cell: UnitCell, row: int, rows: int, column: int, width: int) -> Cell:
        """The tied cell of ``cell``, whose weight block starts at ``(row, column)``."""
        roots = self.classes.roots(cell)
        output = cell[0][0]
        assert output is not None
        if not is_product_key(cell[1]):  # a linear cell is one unit: its whole block
            if roots[0] not in self.placed:
                self.placed[roots[0]] = (self._block(rows * width, output), 0)
            return (row, rows, column, width, self.placed[roots[0]][0])
        if roots[0] not in self.placed:  # the first cell of its orbit: meets every class
            distinct = list(dict.fromkeys(roots))
            offset = self._block(rows * len(distinct), output)
            self.placed.update({root: (offset, k) for k, root in enumerate(distinct)})
        offsets = {self.placed[root][0] for root in roots}
        if len(offsets) != 1:
            raise GenerationError(f"the coefficients {cell} tie into two orbits")
        columns = tuple(self.placed[root][1] for root in roots)
        offset = offsets.pop()
        if columns == tuple(range(width)):
            return (row, rows, column, width, offset)
        return (row, rows, column, width, offset, columns)

    def _block(self, size: int, output: str) -> int:
        offset = self.size
        self.blocks.append((offset, size, output))
        self.size += size
        return offset


def plan_tying(plan: LinearPlan) -> Tying | None:
    """The tied parameters of ``plan``, or None when its group permutes no heads."""
    orbits = head_orbits(plan.space)
    if orbits.trivial:
        return None
    keys = {f.name: f.key for f in plan.features}
    cells = [
        (term.placement.key, keys[name])
        for op in plan.ops
        for term in op.terms
        for name in op.features
    ]
    weight = _Columns(unit_classes(plan.space, cells, orbits.generators()))
    bias, up, down = _Slots(), _Slots(), _Slots()
    ops: dict[str, TiedOp] = {}
    ranks = {op.rank for op in plan.ops if op.rank}
    if len(ranks) > 1:
        raise GenerationError("tied factored matmuls need one common rank")
    for op in plan.ops:
        tied_cells: list[Cell] = []
        up_rows: list[Rows] = []
        down_cols: list[Rows] = []
        bias_rows: list[Rows] = []
        row = 0
        for term in op.terms:
            placement, factor = term.placement.key, term.placement.factor
            output = term.placement.output
            column = 0
            for name, width in zip(op.features, op.feature_factors):
                if not op.rank:
                    cell = (placement, keys[name])
                    tied_cells.append(weight.cell(cell, row, factor, column, width))
                column += width
            if op.rank:
                orbit = _placement_orbit(orbits, placement)
                up_rows.append((row, factor, up.offset(orbit, factor, output)))
            if term.has_constant:
                orbit = _placement_orbit(orbits, placement)
                bias_rows.append((row, factor, bias.offset(orbit, factor, output)))
            row += factor
        if op.rank:
            column = 0
            for name, width in zip(op.features, op.feature_factors):
                if is_product_key(keys[name]):
                    raise GenerationError("a factored matmul reads no polynomial products")
                (source,) = orbits.canonical((keys[name][0],))
                orbit = (source, *keys[name][1:])
                down_cols.append((column, width, down.offset(orbit, width, "")))
                column += width
        ops[op.name] = TiedOp(tuple(tied_cells), tuple(up_rows), tuple(down_cols), tuple(bias_rows))
    return Tying(
        ops=ops,
        weight=weight.size,
        bias=bias.size,
        up=up.size,
        down=down.size,
        rank=ranks.pop() if ranks else 0,
        weight_blocks=tuple(weight.blocks),
        bias_blocks=tuple(bias.blocks),
        up_blocks=tuple(up.blocks),
    )


def tied_plan(plan: LinearPlan) -> LinearPlan:
    """``plan`` with every matmul marked tied when its group permutes heads (codegen then
    gathers the matmuls' weights from the flat parameters)."""
    if head_orbits(plan.space).trivial:
        return plan
    return replace(plan, ops=tuple(_tied(op) for op in plan.ops))


def _tied(op: MixOp) -> MixOp:
    return replace(op, tied=True)
