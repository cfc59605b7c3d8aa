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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from math import prod
from typing import Any

from derive.basis.linear import BasisMap, LinearBasis
from derive.basis.polynomial import PolyMap
from derive.errors import GenerationError
from derive.naming import identifier
from derive.plan.features import (
    PRODUCT,
    Feature,
    FeatureKey,
    build_features,
    feature_key,
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
    "LinearPlan",
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

    @property
    def weight(self) -> str:
        return f"{self.name}_weight"

    @property
    def bias(self) -> str:
        return f"{self.name}_bias"


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
    map_slots: dict[Any, MapSlot]  # basis or polynomial map -> its coefficients
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


def _key_merge(key: PlacementKey) -> Merge:
    _, kept, broadcast = key
    return tuple(sorted(g for g in (*kept, *broadcast) if len(g) > 1))


def _constant_merge(basis_map: BasisMap) -> Merge:
    return tuple(sorted(b.outputs for b in basis_map.blocks if len(b.outputs) > 1))


def _kept_blocks(basis_map: BasisMap) -> list[int]:
    """Indices of matched blocks, ordered by their first output position."""
    matched = [i for i, b in enumerate(basis_map.blocks) if b.outputs and b.inputs]
    return sorted(matched, key=lambda i: min(basis_map.blocks[i].outputs))


def _placement_key(basis_map: BasisMap, kept_blocks: Sequence[int]) -> PlacementKey:
    assert basis_map.output is not None
    kept = tuple(basis_map.blocks[i].outputs for i in kept_blocks)
    broadcast = tuple(sorted(b.outputs for b in basis_map.blocks if b.outputs and not b.inputs))
    return (basis_map.output, kept, broadcast)


def _placement(space: WeightSpaceSpec, tensor: TensorSpec, key: PlacementKey) -> Placement:
    _, kept, broadcast = key
    sizes = space.shape(tensor)
    roles: list[tuple[str, int]] = []
    fixed_sizes: list[int] = []
    for p, axis in enumerate(tensor.axes):
        if space.is_fixed_axis(axis):
            roles.append(("fixed", len(fixed_sizes)))
            fixed_sizes.append(sizes[p])
            continue
        kept_index = next((k for k, g in enumerate(kept) if p in g), None)
        if kept_index is not None:
            roles.append(("kept", kept_index))
        else:
            roles.append(("broadcast", next(k for k, g in enumerate(broadcast) if p in g)))
    return Placement(
        key=key,
        output=tensor.name,
        roles=tuple(roles),
        fixed_sizes=tuple(fixed_sizes),
        kept_sizes=tuple(sizes[g[0]] for g in kept),
        axis_sizes=sizes,
    )


def _product_feature_key(poly_map: Any, kept_blocks: Sequence[int]) -> FeatureKey:
    """The product key of a polynomial map (factors, kept groups in output order, reduced)."""
    kept = tuple(poly_map.blocks[i].inputs for i in kept_blocks)
    reduced = tuple(sorted(b.inputs for b in poly_map.blocks if not b.outputs))
    return (PRODUCT, tuple(poly_map.factors), kept, reduced)


def linear_plan(basis: LinearBasis, with_constants: bool = True) -> LinearPlan:
    """Merge the linear basis into features, terms and matmuls (see the module docstring)."""
    maps = [m for block in basis.blocks for m in block.maps]
    constants = [m for block in basis.constants for m in block.maps] if with_constants else []
    return assemble_plan(basis.space, maps, constants)


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
    written = (
        list(outputs)
        if outputs is not None
        else [t.name for t in space.tensors if t.kind != "virtual"]
    )
    tensor_order = {t.name: i for i, t in enumerate(space.tensors)}
    by_placement: dict[PlacementKey, dict[FeatureKey, Any]] = {}
    for basis_map in maps:
        kept_blocks = _kept_blocks(basis_map)
        placement = _placement_key(basis_map, kept_blocks)
        if isinstance(basis_map, PolyMap):
            feature = _product_feature_key(basis_map, kept_blocks)
        else:
            feature = feature_key(basis_map, kept_blocks)
        by_placement.setdefault(placement, {})[feature] = basis_map

    # A constant joins, as a matmul bias, the term of its output with the same diagonal
    # pattern (none for a plain constant; delta_ij for one on a diagonal) and the fewest kept
    # axes: the bias is constant over the term's kept axes, so it places as the constant does.
    constant_targets: dict[tuple[str, Merge], BasisMap] = {}
    for basis_map in constants:
        assert basis_map.output is not None
        constant_targets[(basis_map.output, _constant_merge(basis_map))] = basis_map

    placements = sorted(by_placement, key=lambda k: (tensor_order[k[0]], -len(k[1]), k))
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

    def feature_sort(key: FeatureKey) -> tuple[Any, ...]:
        if is_product_key(key):
            return (1, tuple(tensor_order[f] for f in key[1]), -len(key[2]), repr(key))
        return (0, tensor_order[key[0]], -len(key[1]), repr(key))

    # Terms grouped by identical feature lists become one matmul; wide ones run channels-last.
    groups: dict[tuple[FeatureKey, ...], list[PlacementKey]] = {}
    for key in placements:
        groups.setdefault(tuple(sorted(by_placement[key], key=feature_sort)), []).append(key)
    group_order = sorted(groups, key=lambda fs: placements.index(groups[fs][0]))
    layouts = {
        fs: "channels_last"
        if has_kept(fs[0]) and sum(key_factor(space, f) for f in fs) > CHANNELS_LAST_MIN_FACTOR
        else "channels_first"
        for fs in group_order
    }
    features = build_features(
        space, [(f, layouts[fs]) for fs in group_order for f in fs], feature_sort
    )

    ops: list[MixOp] = []
    terms_by_output: dict[str, list[Term]] = {name: [] for name in written}
    map_slots: dict[Any, MapSlot] = {}
    constant_slots: dict[BasisMap, MapSlot] = {}
    op_names: set[str] = set()
    for feature_tuple in group_order:
        layout = layouts[feature_tuple]
        used = [features[(f, layout if has_kept(f) else "channels_first")] for f in feature_tuple]
        first = used[0]
        stem = "mix_" + (
            "_".join(identifier(s, part=True) for s in first.kept) if first.kept else "pooled"
        )
        name = stem
        if name in op_names:  # same kept spaces, other features: name it after its first output
            name = f"{stem}_{tensor_var(groups[feature_tuple][0][0])}"
        k = 2
        while name in op_names:
            name, k = f"{stem}_{k}", k + 1
        op_names.add(name)
        terms = []
        row = 0
        term_names: set[str] = set()
        for key in groups[feature_tuple]:
            where = _placement(space, space.tensor(key[0]), key)
            constant_key = (key[0], _key_merge(key))
            has_constant = constant_term.get(constant_key) == key
            # one op may write one output with several placements (tied spaces: rows,
            # columns, diagonal); later ones are numbered
            term_name = f"{name}_{tensor_var(key[0])}"
            suffix = 2
            while term_name in term_names:
                term_name, suffix = f"{name}_{tensor_var(key[0])}_{suffix}", suffix + 1
            term_names.add(term_name)
            term = Term(
                name=term_name,
                placement=where,
                features=tuple(f.name for f in used),
                has_constant=has_constant,
            )
            terms.append(term)
            terms_by_output[key[0]].append(term)
            col = 0
            for fkey, used_feature in zip(feature_tuple, used):
                map_slots[by_placement[key][fkey]] = MapSlot(
                    name, row, where.factor, col, used_feature.factor
                )
                col += used_feature.factor
            if has_constant:
                constant_slots[constant_targets[constant_key]] = MapSlot(
                    name, row, where.factor, 0, 1
                )
            row += where.factor
        ops.append(
            MixOp(
                name=name,
                features=tuple(f.name for f in used),
                kept=first.kept,
                kept_sizes=first.kept_sizes,
                terms=tuple(terms),
                in_factor=col,
                out_factor=row,
                has_bias=any(t.has_constant for t in terms),
                layout=layout,
                feature_factors=tuple(f.factor for f in used),
            )
        )
    fan_in = {
        name: sum(
            sum(key_factor(space, f) for f in by_placement[term.placement.key])
            for term in terms_by_output[name]
        )
        for name in written
    }
    real = [t for t in space.tensors if t.kind != "virtual"]
    return LinearPlan(
        space=space,
        inputs=tuple((t.name, tensor_var(t.name)) for t in real),
        features=tuple(features.values()),
        ops=tuple(ops),
        outputs=tuple(
            (name, f"out_{tensor_var(name)}", tuple(terms_by_output[name])) for name in written
        ),
        map_slots=map_slots,
        constant_slots=constant_slots,
        fan_in=fan_in,
    )
