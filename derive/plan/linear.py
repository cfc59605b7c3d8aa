"""The layer plan: how the basis becomes a small number of tensor operations.

Three kinds of records, each a plain frozen dataclass the templates can print:

- :class:`Feature`: a reduction of one input tensor (averages over reduced blocks, diagonals,
  fixed axes folded into channels), computed once and shared by every map that reads it;
- :class:`Term`: all maps that write one output tensor with the same placement (which output
  axes are read from the feature, which are broadcast); their features are concatenated;
- :class:`MixOp`: one channel-mixing matmul shared by every term with the same features
  (rows stacked, then split), with the equivariant constants as its bias.

The plan also records where every basis map's coefficients live (:class:`MapSlot`), so tests
can load the slow reference's parameters into the generated module.

A plan of a whole basis is built from its block patterns (:class:`derive.basis.linear.BlockPatterns`)
without building the maps: the maps that write one placement are the features they read, and
those of the product blocks (tensors sharing no space) are the same for every output.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from math import prod
from typing import Any

from derive.basis.linear import (
    BasisMap,
    BlockPatterns,
    LinearBasis,
    Pattern,
    ordered_pattern,
    pattern_of,
)
from derive.basis.polynomial import PolyMap
from derive.errors import GenerationError
from derive.naming import identifier
from derive.plan.features import (
    PRODUCT,
    Feature,
    FeatureKey,
    build_features,
    has_kept,
    is_product_key,
    key_factor,
    tensor_var,
)
from derive.weightspace.model import TensorSpec, WeightSpaceSpec

__all__ = [
    "Placement",
    "Term",
    "MixOp",
    "CHANNELS_LAST_MIN_FACTOR",
    "MapSlot",
    "MapSlots",
    "LinearPlan",
    "map_keys",
    "pattern_keys",
    "linear_plan",
    "assemble_plan",
]

# key of a placement: (output tensor, kept groups (ordered), broadcast groups (sorted))
PlacementKey = tuple[str, tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]


@dataclass(frozen=True)
class Placement:
    """How a ``(B, out_channels * factor, *kept)`` result lands in output tensor ``output``.

    ``roles`` gives, per output axis, ``("fixed", k)`` (k-th fixed axis, in row order),
    ``("kept", k)`` (k-th kept axis) or ``("broadcast", k)`` (k-th broadcast group).
    """

    key: PlacementKey
    output: str
    roles: tuple[tuple[str, int], ...]
    fixed_sizes: tuple[int, ...]
    kept_sizes: tuple[int, ...]
    axis_sizes: tuple[int, ...]

    @property
    def factor(self) -> int:
        return prod(self.fixed_sizes)

    @property
    def numel(self) -> int:
        """Entries per (batch, channel) before broadcasting."""
        return self.factor * prod(self.kept_sizes)

    @property
    def varying_axes(self) -> frozenset[int]:
        return frozenset(i for i, (role, _) in enumerate(self.roles) if role != "broadcast")

    @property
    def merged(self) -> tuple[tuple[int, ...], ...]:
        """Groups of output axes that take one index (a write to a diagonal), in axis order."""
        groups: dict[tuple[str, int], list[int]] = {}
        for position, role in enumerate(self.roles):
            if role[0] != "fixed":
                groups.setdefault(role, []).append(position)
        return tuple(tuple(g) for g in groups.values() if len(g) > 1)

    @property
    def is_diagonal(self) -> bool:
        """True when two output axes share one kept or broadcast group."""
        return bool(self.merged)

    def compact(self) -> Placement:
        """This placement onto the output with each merged group kept once (its first axis).

        The diagonal write is then: place into the compact axes, embed on the diagonal.
        """
        drop = {p for group in self.merged for p in group[1:]}
        keep = [p for p in range(len(self.roles)) if p not in drop]
        return replace(
            self,
            roles=tuple(self.roles[p] for p in keep),
            axis_sizes=tuple(self.axis_sizes[p] for p in keep),
        )


@dataclass(frozen=True)
class Term:
    """The merged maps writing ``placement``; ``name`` is the variable holding its rows."""

    name: str
    placement: Placement
    features: tuple[str, ...]
    has_constant: bool


#: a matmul whose input has more than this many channels per input channel runs channels-last
#: (one large GEMM, compute-bound); narrower ones run channels-first as a batched GEMM over the
#: expanded weight (memory-bound; no transposes). Measured in benchmarks/layer_speed.py.
CHANNELS_LAST_MIN_FACTOR = 4


@dataclass(frozen=True)
class MixOp:
    """One channel-mixing matmul: ``weight`` maps the concatenated features to stacked terms.

    ``layout`` is ``channels_first`` (features ``(B, K, *kept)``) or ``channels_last``
    (``(B, *kept, K)``); ops without kept axes read ``(B, K)``.
    """

    name: str
    features: tuple[str, ...]
    kept: tuple[str, ...]
    kept_sizes: tuple[int, ...]
    terms: tuple[Term, ...]
    in_factor: int  # sum of feature factors: columns = in_channels * in_factor
    out_factor: int  # sum of term factors: rows = out_channels * out_factor
    has_bias: bool
    layout: str
    feature_factors: tuple[int, ...] = ()  # per feature, its columns in units of in_channels
    #: 0: a dense weight; r > 0: ``up @ down`` of rank ``r * max(c_in, c_out)`` (a size budget,
    #: :mod:`derive.plan.budget`)
    rank: int = 0
    #: the weight (or its factors) and bias are gathered from the flat parameters of a layer
    #: tied across attention heads (:mod:`derive.plan.tying`), into local variables
    tied: bool = False

    @property
    def weight(self) -> str:
        return f"{self.name}_weight"

    @property
    def bias(self) -> str:
        return f"{self.name}_bias"

    @property
    def up(self) -> str:
        """The left factor of a factored weight (rows x rank)."""
        return f"{self.name}_up"

    @property
    def down(self) -> str:
        """The right factor of a factored weight (rank x columns)."""
        return f"{self.name}_down"


@dataclass(frozen=True)
class MapSlot:
    """Where one basis map's coefficients sit: rows and columns in units of channels."""

    op: str
    row_start: int  # times out_channels
    row_factor: int
    col_start: int  # times in_channels
    col_factor: int


@dataclass(frozen=True)
class LinearPlan:
    """Everything the linear-layer template needs, and the map-to-parameter bookkeeping."""

    space: WeightSpaceSpec
    inputs: tuple[tuple[str, str], ...]  # (tensor name, variable)
    features: tuple[Feature, ...]
    ops: tuple[MixOp, ...]
    outputs: tuple[tuple[str, str, tuple[Term, ...]], ...]  # (tensor, output variable, terms)
    map_slots: MapSlots  # basis or polynomial map -> its coefficients
    constant_slots: dict[BasisMap, MapSlot]
    fan_in: dict[str, int]  # per output tensor, sum of feature factors over its terms
    #: features u (x) v of two per-channel vectors, mixed as rank-one updates (never built)
    outer_features: set[str] = field(default_factory=set)

    def feature(self, name: str) -> Feature:
        return next(f for f in self.features if f.name == name)

    def __str__(self) -> str:
        lines = [
            f"LinearPlan of {self.space.name}: {len(self.map_slots)} maps read "
            f"{len(self.features)} features through {len(self.ops)} channel-mixing matmuls "
            f"into {len(self.outputs)} outputs"
        ]
        for op in self.ops:
            kept = f" over {','.join(op.kept)}" if op.kept else ""
            lines.append(
                f"  {op.name}{kept}: {len(op.features)} features -> {len(op.terms)} terms "
                f"(weight out x {op.out_factor}, in x {op.in_factor}; {op.layout})"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<{str(self).splitlines()[0]}>"


#: output axis groups that share one index (diagonal writes), sorted
Merge = tuple[tuple[int, ...], ...]

#: groups of axis positions
Groups = tuple[tuple[int, ...], ...]


def _key_merge(key: PlacementKey) -> Merge:
    _, kept, broadcast = key
    return tuple(sorted(g for g in (*kept, *broadcast) if len(g) > 1))


def _constant_merge(basis_map: BasisMap) -> Merge:
    return tuple(sorted(b.outputs for b in basis_map.blocks if len(b.outputs) > 1))


@cache
def pattern_keys(pattern: Pattern) -> tuple[Groups, Groups, Groups, Groups]:
    """A degree-1 map's (kept output groups, broadcast groups, kept input groups, reduced
    groups): matched blocks in order of their first output, the others sorted. The placement
    key is the output with the first two, the feature key the input with the last two."""
    matched = sorted((b for b in pattern if b[0] and b[1]), key=lambda b: min(b[0]))
    broadcast = tuple(sorted(o for o, i in pattern if o and not i))
    reduced = tuple(sorted(i for o, i in pattern if not o))
    return tuple(o for o, _ in matched), broadcast, tuple(i for _, i in matched), reduced


def _pattern_from_keys(placement: PlacementKey, feature: FeatureKey) -> Pattern:
    """The pattern of the degree-1 map with these keys (the inverse of :func:`pattern_keys`)."""
    _, kept, broadcast = placement
    _, kept_in, reduced = feature
    blocks = [*zip(kept, kept_in), *((o, ()) for o in broadcast), *(((), i) for i in reduced)]
    return ordered_pattern(blocks)


def _kept_blocks(poly_map: Any) -> list[int]:
    """Indices of matched blocks, ordered by their first output position."""
    matched = [i for i, b in enumerate(poly_map.blocks) if b.outputs and b.inputs]
    return sorted(matched, key=lambda i: min(poly_map.blocks[i].outputs))


def _placement_key(poly_map: Any, kept_blocks: Sequence[int]) -> PlacementKey:
    assert poly_map.output is not None
    kept = tuple(poly_map.blocks[i].outputs for i in kept_blocks)
    broadcast = tuple(sorted(b.outputs for b in poly_map.blocks if b.outputs and not b.inputs))
    return (poly_map.output, kept, broadcast)


def _product_feature_key(poly_map: Any, kept_blocks: Sequence[int]) -> FeatureKey:
    """The product key of a polynomial map (factors, kept groups in output order, reduced)."""
    kept = tuple(poly_map.blocks[i].inputs for i in kept_blocks)
    reduced = tuple(sorted(b.inputs for b in poly_map.blocks if not b.outputs))
    return (PRODUCT, tuple(poly_map.factors), kept, reduced)


def map_keys(basis_map: Any) -> tuple[PlacementKey, FeatureKey]:
    """Where a map writes (its placement key) and what it reads (its feature key)."""
    if isinstance(basis_map, PolyMap):
        kept_blocks = _kept_blocks(basis_map)
        return (
            _placement_key(basis_map, kept_blocks),
            _product_feature_key(basis_map, kept_blocks),
        )
    assert basis_map.output is not None and basis_map.input is not None
    kept, broadcast, kept_in, reduced = pattern_keys(pattern_of(basis_map))
    return (basis_map.output, kept, broadcast), (basis_map.input, kept_in, reduced)


def _placement(space: WeightSpaceSpec, tensor: TensorSpec, key: PlacementKey) -> Placement:
    _, kept, broadcast = key
    sizes = space.shape(tensor)
    group_roles = {p: ("kept", k) for k, g in enumerate(kept) for p in g}
    group_roles.update({p: ("broadcast", k) for k, g in enumerate(broadcast) for p in g})
    roles: list[tuple[str, int]] = []
    fixed_sizes: list[int] = []
    for p, axis in enumerate(tensor.axes):
        if space.is_fixed_axis(axis):
            roles.append(("fixed", len(fixed_sizes)))
            fixed_sizes.append(sizes[p])
        else:
            roles.append(group_roles[p])
    return Placement(
        key=key,
        output=tensor.name,
        roles=tuple(roles),
        fixed_sizes=tuple(fixed_sizes),
        kept_sizes=tuple(sizes[g[0]] for g in kept),
        axis_sizes=sizes,
    )


def _feature_order(tensor_order: dict[str, int]) -> Callable[[FeatureKey], tuple[Any, ...]]:
    """Features in tensor order (products after linear ones), most kept axes first."""

    def order(key: FeatureKey) -> tuple[Any, ...]:
        if is_product_key(key):
            return (1, tuple(tensor_order[f] for f in key[1]), -len(key[2]), repr(key))
        return (0, tensor_order[key[0]], -len(key[1]), repr(key))

    return order


@dataclass(frozen=True)
class _MapTable:
    """The maps to plan, by placement: every feature key any map reads, in plan order, and
    per placement the (sorted) indices of the features its maps read. The maps themselves are
    ``maps[placement][feature]`` for a list of maps, built from ``patterns`` for a basis."""

    features: tuple[FeatureKey, ...]
    placements: dict[PlacementKey, tuple[int, ...]]
    maps: dict[PlacementKey, dict[FeatureKey, Any]] = field(default_factory=dict)
    patterns: BlockPatterns | None = None

    def resolve(self, placement: PlacementKey, feature: FeatureKey) -> Any:
        """The map with these keys."""
        if self.patterns is None:
            return self.maps[placement][feature]
        index = self.patterns.index
        pattern = _pattern_from_keys(placement, feature)
        return self.patterns.pattern_map(index[placement[0]], index[feature[0]], pattern)


def _ranked(
    keys: set[FeatureKey], order: Callable[[FeatureKey], tuple[Any, ...]]
) -> tuple[tuple[FeatureKey, ...], dict[FeatureKey, int]]:
    ranked = tuple(sorted(keys, key=order))
    return ranked, {key: rank for rank, key in enumerate(ranked)}


def _map_table(maps: Sequence[Any], order: Callable[[FeatureKey], tuple[Any, ...]]) -> _MapTable:
    """The table of any list of maps."""
    by_placement: dict[PlacementKey, dict[FeatureKey, Any]] = {}
    for basis_map in maps:
        placement, feature = map_keys(basis_map)
        by_placement.setdefault(placement, {})[feature] = basis_map
    features, rank = _ranked({f for fs in by_placement.values() for f in fs}, order)
    placements = {key: tuple(sorted(rank[f] for f in fs)) for key, fs in by_placement.items()}
    return _MapTable(features, placements, maps=by_placement)


def _basis_table(basis: LinearBasis, order: Callable[[FeatureKey], tuple[Any, ...]]) -> _MapTable:
    """The table of a whole basis without building its maps: a placement of a constant of
    T reads the invariant features of every tensor that shares no space with T (the product
    maps), and the blocks of tensors sharing a space add theirs."""
    patterns = basis.patterns
    names = [t.name for t in patterns.tensors]
    invariant_keys = [
        [(name, (), pattern_keys(i)[3]) for i in invariants]
        for name, invariants in zip(names, patterns.invariants)
    ]
    shared = _shared_reads(patterns, names)
    every = {k for keys in invariant_keys for k in keys} | {f for fs in shared.values() for f in fs}
    features, rank = _ranked(every, order)
    invariant_ranks = [{rank[k] for k in keys} for keys in invariant_keys]
    every_invariant = tuple(sorted(set().union(*invariant_ranks)))
    invariant_set = set(every_invariant)
    placements: dict[PlacementKey, tuple[int, ...]] = {}
    for t, constants in enumerate(patterns.constants):
        partners = {r for s in patterns.shared_inputs[t] for r in invariant_ranks[s]}
        for constant in constants:
            key: PlacementKey = (names[t], (), pattern_keys(constant)[1])
            extra = {rank[f] for f in shared.pop(key, ())}
            read = _product_reads(every_invariant, invariant_set, partners, extra)
            if read:
                placements[key] = read
    for key, fs in shared.items():
        placements[key] = tuple(sorted(rank[f] for f in fs))
    return _MapTable(features, placements, patterns=patterns)


def _shared_reads(
    patterns: BlockPatterns, names: Sequence[str]
) -> dict[PlacementKey, set[FeatureKey]]:
    """Per placement, the features the maps of blocks whose tensors share a space read."""
    kind_keys = [[pattern_keys(p) for p in kind] for kind in patterns.kinds]
    reads: dict[PlacementKey, set[FeatureKey]] = {}
    for t, (inputs, kinds) in enumerate(zip(patterns.shared_inputs, patterns.shared_kinds)):
        for s, kind in zip(inputs, kinds):
            for kept, broadcast, kept_in, reduced in kind_keys[kind]:
                reads.setdefault((names[t], kept, broadcast), set()).add(
                    (names[s], kept_in, reduced)
                )
    return reads


def _product_reads(
    every_invariant: tuple[int, ...], invariant_set: set[int], partners: set[int], extra: set[int]
) -> tuple[int, ...]:
    """The features a constant's placement reads: every invariant feature but those of the
    tensors sharing a space with the output (``partners``), and the ``extra`` features those
    blocks read. Usually the shared blocks read exactly their invariants again."""
    if partners <= extra <= invariant_set:
        return every_invariant
    return tuple(sorted((invariant_set - partners) | extra))


@dataclass(frozen=True)
class _OpColumns:
    """The feature columns of one matmul, and the placements its rows write."""

    op: str
    features: tuple[int, ...]
    factors: tuple[int, ...]
    placements: list[PlacementKey]

    @cached_property
    def columns(self) -> dict[int, tuple[int, int]]:
        """Feature index -> (first column, columns), in units of in_channels."""
        starts = itertools.accumulate(self.factors, initial=0)
        return {f: (start, factor) for f, start, factor in zip(self.features, starts, self.factors)}


def _is_planned_kind(basis_map: Any) -> bool:
    """Whether ``basis_map`` is a map a plan places: degree-1 or polynomial, with an output
    and an input (not a constant or an invariant functional)."""
    if isinstance(basis_map, PolyMap):
        return basis_map.output is not None
    return isinstance(basis_map, BasisMap) and None not in (basis_map.output, basis_map.input)


class MapSlots(Mapping[Any, MapSlot]):
    """Where every planned map's coefficients sit, found on lookup from the map's placement
    and feature keys (a large weight space plans millions of maps: DenseNet-121 3.3 million);
    :meth:`update` records the slots of maps placed elsewhere (folded MAGEP terms)."""

    def __init__(
        self,
        table: _MapTable,
        ops: list[_OpColumns],
        rows: dict[PlacementKey, tuple[int, int, int]],
    ):
        self._table = table
        self._ops = ops
        self._rows = rows  # placement -> (op index, first row, rows) in units of out_channels
        self._rank = {key: rank for rank, key in enumerate(table.features)}
        self._added: dict[Any, MapSlot] = {}

    def update(self, slots: Mapping[Any, MapSlot]) -> None:
        self._added.update(slots)

    def _planned(self, basis_map: Any) -> MapSlot | None:
        if not _is_planned_kind(basis_map):
            return None
        placement, feature = map_keys(basis_map)
        row = self._rows.get(placement)
        rank = self._rank.get(feature)
        if row is None or rank is None:
            return None
        index, row_start, row_factor = row
        op = self._ops[index]
        column = op.columns.get(rank)
        if column is None:
            return None
        return MapSlot(op.op, row_start, row_factor, *column)

    def __getitem__(self, basis_map: Any) -> MapSlot:
        slot = self._added.get(basis_map) or self._planned(basis_map)
        if slot is None:
            raise KeyError(basis_map)
        return slot

    def __iter__(self) -> Iterator[Any]:
        features = self._table.features
        for op in self._ops:
            for placement in op.placements:
                yield from (self._table.resolve(placement, features[f]) for f in op.features)
        yield from (m for m in self._added if self._planned(m) is None)

    def __len__(self) -> int:
        planned = sum(len(op.placements) * len(op.features) for op in self._ops)
        return planned + sum(self._planned(m) is None for m in self._added)


def linear_plan(basis: LinearBasis, with_constants: bool = True) -> LinearPlan:
    """Merge the linear basis into features, terms and matmuls (see the module docstring)."""
    constants = [m for block in basis.constants for m in block.maps] if with_constants else []
    order = _feature_order({t.name: i for i, t in enumerate(basis.space.tensors)})
    return _assemble(basis.space, _basis_table(basis, order), constants, None, order)


def assemble_plan(
    space: WeightSpaceSpec,
    maps: Sequence[Any],
    constants: Sequence[BasisMap] = (),
    outputs: Sequence[str] | None = None,
) -> LinearPlan:
    """Merge any equivariant maps into features, terms and matmuls.

    ``maps`` are degree-1 :class:`BasisMap` (inputs may be virtual tensors of ``space``) or
    polynomial maps (with ``factors``); ``outputs`` lists the tensors the layer writes
    (default: every tensor of ``space`` that is not virtual).
    """
    order = _feature_order({t.name: i for i, t in enumerate(space.tensors)})
    return _assemble(space, _map_table(maps, order), constants, outputs, order)


def _assemble(
    space: WeightSpaceSpec,
    table: _MapTable,
    constants: Sequence[BasisMap],
    outputs: Sequence[str] | None,
    order: Callable[[FeatureKey], tuple[Any, ...]],
) -> LinearPlan:
    written = (
        list(outputs)
        if outputs is not None
        else [t.name for t in space.tensors if t.kind != "virtual"]
    )
    tensor_order = {t.name: i for i, t in enumerate(space.tensors)}
    keys = table.features

    # A constant joins, as a matmul bias, the term of its output with the same diagonal
    # pattern (none for a plain constant; delta_ij for one on a diagonal) and the fewest kept
    # axes: the bias is constant over the term's kept axes, so it places as the constant does.
    constant_targets: dict[tuple[str, Merge], BasisMap] = {}
    for basis_map in constants:
        assert basis_map.output is not None
        constant_targets[(basis_map.output, _constant_merge(basis_map))] = basis_map

    placements = sorted(table.placements, key=lambda k: (tensor_order[k[0]], -len(k[1]), k))
    constant_term: dict[tuple[str, Merge], PlacementKey] = {}
    for key in placements:
        target = (key[0], _key_merge(key))
        if target in constant_targets and (
            target not in constant_term or len(key[1]) < len(constant_term[target][1])
        ):
            constant_term[target] = key
    homeless = [target for target in constant_targets if target not in constant_term]
    if homeless:
        merge = homeless[0][1]
        raise GenerationError(
            f"constant {constant_targets[homeless[0]].key} on the diagonal {merge} has no term "
            "with the same placement to carry it"
        )

    # Terms grouped by identical feature lists become one matmul; wide ones run channels-last.
    groups: dict[tuple[int, ...], list[PlacementKey]] = {}
    for key in placements:
        groups.setdefault(table.placements[key], []).append(key)
    factors = [key_factor(space, f) for f in keys]
    layouts = {
        fs: "channels_last"
        if has_kept(keys[fs[0]]) and sum(factors[f] for f in fs) > CHANNELS_LAST_MIN_FACTOR
        else "channels_first"
        for fs in groups
    }
    needed: dict[str, set[int]] = {}
    for fs, layout in layouts.items():
        needed.setdefault(layout, set()).update(fs)
    features = build_features(
        space, [(keys[f], layout) for layout, fs in needed.items() for f in fs], order
    )
    feature_layout = {
        layout: [layout if has_kept(key) else "channels_first" for key in keys] for layout in needed
    }

    ops: list[MixOp] = []
    op_columns: list[_OpColumns] = []
    rows: dict[PlacementKey, tuple[int, int, int]] = {}
    terms_by_output: dict[str, list[Term]] = {name: [] for name in written}
    fan_in = dict.fromkeys(written, 0)
    constant_slots: dict[BasisMap, MapSlot] = {}
    op_names: set[str] = set()
    for feature_tuple, group in groups.items():
        layout = layouts[feature_tuple]
        lays = feature_layout[layout]
        used = [features[(keys[f], lays[f])] for f in feature_tuple]
        name = _op_name(used[0], group[0][0], op_names)
        feature_names = tuple(f.name for f in used)
        feature_factors = tuple(f.factor for f in used)
        in_factor = sum(feature_factors)
        terms = []
        row = 0
        term_names: set[str] = set()
        for key in group:
            where = _placement(space, space.tensor(key[0]), key)
            constant_key = (key[0], _key_merge(key))
            has_constant = constant_term.get(constant_key) == key
            term = Term(
                name=_term_name(name, key[0], term_names),
                placement=where,
                features=feature_names,
                has_constant=has_constant,
            )
            terms.append(term)
            terms_by_output[key[0]].append(term)
            fan_in[key[0]] += in_factor
            rows[key] = (len(op_columns), row, where.factor)
            if has_constant:
                constant_slots[constant_targets[constant_key]] = MapSlot(
                    name, row, where.factor, 0, 1
                )
            row += where.factor
        op_columns.append(_OpColumns(name, feature_tuple, feature_factors, group))
        ops.append(
            MixOp(
                name=name,
                features=feature_names,
                kept=used[0].kept,
                kept_sizes=used[0].kept_sizes,
                terms=tuple(terms),
                in_factor=in_factor,
                out_factor=row,
                has_bias=any(t.has_constant for t in terms),
                layout=layout,
                feature_factors=feature_factors,
            )
        )
    real = [t for t in space.tensors if t.kind != "virtual"]
    return LinearPlan(
        space=space,
        inputs=tuple((t.name, tensor_var(t.name)) for t in real),
        features=tuple(features.values()),
        ops=tuple(ops),
        outputs=tuple(
            (name, f"out_{tensor_var(name)}", tuple(terms_by_output[name])) for name in written
        ),
        map_slots=MapSlots(table, op_columns, rows),
        constant_slots=constant_slots,
        fan_in=fan_in,
    )


def _op_name(first: Feature, output: str, taken: set[str]) -> str:
    """``mix_<kept spaces>`` (or ``mix_pooled``), made unique against ``taken`` (extended)."""
    stem = "mix_" + (
        "_".join(identifier(s, part=True) for s in first.kept) if first.kept else "pooled"
    )
    name = stem
    if name in taken:  # same kept spaces, other features: name it after its first output
        name = f"{stem}_{tensor_var(output)}"
    k = 2
    while name in taken:
        name, k = f"{stem}_{k}", k + 1
    taken.add(name)
    return name


def _term_name(op: str, output: str, taken: set[str]) -> str:
    """One op may write one output with several placements (tied spaces: rows, columns,
    diagonal); later ones are numbered."""
    name = f"{op}_{tensor_var(output)}"
    suffix = 2
    while name in taken:
        name, suffix = f"{op}_{tensor_var(output)}_{suffix}", suffix + 1
    taken.add(name)
    return name
