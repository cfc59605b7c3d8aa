"""One coefficient block per orbit of basis maps under whole-head permutations.

Every entry block of a matmul weight of the plan is one basis map (a placement's rows, a
feature's columns; :class:`derive.plan.linear.MapSlot`). Relabelling attention heads permutes
the maps (:mod:`derive.basis.head_orbits`), so a layer equivariant to it has one coefficient
block per orbit: the generated module holds the distinct blocks in one flat parameter and
gathers each matmul's weight from it (:func:`nfn_runtime.tying.tied_index`). Constants
(matmul biases) are tied the same way. A factored matmul (size budget, ``up @ down``) ties the
rows of ``up`` per orbit of placements and the columns of ``down`` per orbit of features, in
tables shared by every factored matmul: a restriction of the tied layer, still equivariant.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from derive.basis.head_orbits import HeadOrbits, head_orbits
from derive.errors import GenerationError
from derive.plan.features import FeatureKey
from derive.plan.linear import LinearPlan, MapSlot, MixOp, PlacementKey

__all__ = ["Tying", "TiedOp", "plan_tying", "tied_plan", "WEIGHT", "BIAS", "UP", "DOWN"]

#: the flat parameters of a tied layer
WEIGHT, BIAS, UP, DOWN = "theta_weight", "theta_bias", "theta_up", "theta_down"

Cell = tuple[int, int, int, int, int]  # row start, row factor, column start, column factor, offset
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

    def slot_offset(self, slot: MapSlot, bias: bool = False) -> int:
        """The offset of a dense map's (or a constant's) block in its flat parameter."""
        tied = self.ops[slot.op]
        if bias:
            return next(o for start, _, o in tied.bias_rows if start == slot.row_start)
        return next(
            offset
            for row, _, col, _, offset in tied.cells
            if row == slot.row_start and col == slot.col_start
        )


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


def _cell_orbit(orbits: HeadOrbits, placement: PlacementKey, feature: FeatureKey) -> object:
    output, source = orbits.canonical((placement[0], feature[0]))
    return (output, placement[1], placement[2], source, feature[1], feature[2])


def plan_tying(plan: LinearPlan) -> Tying | None:
    """The tied parameters of ``plan``, or None when its group permutes no heads."""
    orbits = head_orbits(plan.space)
    if orbits.trivial:
        return None
    keys = {f.name: f.key for f in plan.features}
    weight, bias, up, down = _Slots(), _Slots(), _Slots(), _Slots()
    ops: dict[str, TiedOp] = {}
    ranks = {op.rank for op in plan.ops if op.rank}
    if len(ranks) > 1:
        raise GenerationError("tied factored matmuls need one common rank")
    for op in plan.ops:
        cells: list[Cell] = []
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
                    orbit = _cell_orbit(orbits, placement, keys[name])
                    offset = weight.offset(orbit, factor * width, output)
                    cells.append((row, factor, column, width, offset))
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
                (source,) = orbits.canonical((keys[name][0],))
                orbit = (source, *keys[name][1:])
                down_cols.append((column, width, down.offset(orbit, width, "")))
                column += width
        ops[op.name] = TiedOp(tuple(cells), tuple(up_rows), tuple(down_cols), tuple(bias_rows))
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
