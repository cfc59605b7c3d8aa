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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod

from derive.basis import BasisMap, LinearBasis
from derive.model import TensorSpec, WeightSpaceSpec
from derive.naming import identifier

__all__ = [
    "Feature",
    "Placement",
    "Term",
    "MixOp",
    "CHANNELS_LAST_MIN_FACTOR",
    "MapSlot",
    "LinearPlan",
    "linear_plan",
    "tensor_var",
    "feature_for",
    "feature_code",
]

# key of a feature: (source tensor, kept groups (ordered), reduced groups (sorted))
FeatureKey = tuple[str, tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]
# key of a placement: (output tensor, kept groups (ordered), broadcast groups (sorted))
PlacementKey = tuple[str, tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]


@dataclass(frozen=True)
class Feature:
    """A reduction of input tensor ``source`` with shape ``(B, in_channels * factor, *kept)``."""

    key: FeatureKey
    name: str
    source: str
    kept: tuple[str, ...]
    kept_sizes: tuple[int, ...]
    factor: int  # product of the source's fixed axis sizes, folded into channels
    code: str  # expression computing it from the source variable
    description: str  # e.g. "mean_p W2[p,i]"
    layout: str = "channels_first"


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
    def is_diagonal(self) -> bool:
        """True when two output axes share one kept or broadcast group."""
        seen = [r for r in self.roles if r[0] != "fixed"]
        return len(seen) != len(set(seen))


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
    map_slots: dict[BasisMap, MapSlot]
    constant_slots: dict[BasisMap, MapSlot]
    fan_in: dict[str, int]  # per output tensor, sum of feature factors over its terms

    def feature(self, name: str) -> Feature:
        return next(f for f in self.features if f.name == name)


def tensor_var(name: str) -> str:
    """The variable holding an input tensor in generated code (``W2`` -> ``w2``)."""
    return identifier(name, prefix="t")


def _feature_key(basis_map: BasisMap, kept_blocks: Sequence[int]) -> FeatureKey:
    assert basis_map.input is not None
    kept = tuple(basis_map.blocks[i].inputs for i in kept_blocks)
    reduced = tuple(sorted(b.inputs for b in basis_map.blocks if not b.outputs))
    return (basis_map.input, kept, reduced)


def _kept_blocks(basis_map: BasisMap) -> list[int]:
    """Indices of matched blocks, ordered by their first output position."""
    matched = [i for i, b in enumerate(basis_map.blocks) if b.outputs and b.inputs]
    return sorted(matched, key=lambda i: min(basis_map.blocks[i].outputs))


def _placement_key(basis_map: BasisMap, kept_blocks: Sequence[int]) -> PlacementKey:
    assert basis_map.output is not None
    kept = tuple(basis_map.blocks[i].outputs for i in kept_blocks)
    broadcast = tuple(sorted(b.outputs for b in basis_map.blocks if b.outputs and not b.inputs))
    return (basis_map.output, kept, broadcast)


def _key_factor(space: WeightSpaceSpec, key: FeatureKey) -> int:
    """Channels per input channel of a feature: the product of its source's fixed axis sizes."""
    tensor = space.tensor(key[0])
    return prod(space.space(a.space).size for a in tensor.axes if space.is_fixed_axis(a))


def _has_diagonal(key: FeatureKey) -> bool:
    return any(len(g) > 1 for g in (*key[1], *key[2]))


def feature_code(
    space: WeightSpaceSpec,
    key: FeatureKey,
    var: str | None = None,
    layout: str = "channels_first",
    parent: tuple[str, FeatureKey] | None = None,
) -> tuple[str, tuple[str, ...], tuple[int, ...], int]:
    """Torch code for a feature, its kept spaces, kept sizes and channel factor.

    The result is ``(B, C * factor, *kept)`` (channels-first) or ``(B, *kept, C * factor)``
    (channels-last). It reads the source variable ``var``, or ``parent = (name, key)``: a
    channels-first feature of the same source without fixed axes whose averages are a subset.
    """
    source, kept, reduced = key
    tensor = space.tensor(source)
    sizes = space.shape(tensor)
    fixed = [p for p, axis in enumerate(tensor.axes) if space.is_fixed_axis(axis)]
    kept_spaces = tuple(tensor.axes[g[0]].space for g in kept)
    kept_sizes = tuple(sizes[g[0]] for g in kept)
    factor = prod(sizes[p] for p in fixed)
    channels_last = layout == "channels_last" and bool(kept)
    # dims after (b, c): the source's axes, or the parent's kept axes in their order
    present = list(range(len(tensor.axes)))
    already: tuple[tuple[int, ...], ...] = ()
    var = var or tensor_var(source)
    if parent is not None:
        var, parent_key = parent
        present = [g[0] for g in parent_key[1]]
        already = parent_key[2]
    if _has_diagonal(key):
        assert parent is None
        letters = "ijklmnopqrstuvwxyz"
        sub = [""] * len(tensor.axes)
        for k, group in enumerate((*kept, *reduced)):
            for p in group:
                sub[p] = letters[k]
        for k, p in enumerate(fixed):
            sub[p] = letters[len(kept) + len(reduced) + k]
        kept_sub = "".join(sub[g[0]] for g in kept)
        fixed_sub = "".join(sub[p] for p in fixed)
        out = f"b{kept_sub}c{fixed_sub}" if channels_last else f"bc{fixed_sub}{kept_sub}"
        expr = f'torch.einsum("bc{"".join(sub)}->{out}", {var})'
    else:
        to_reduce = [g[0] for g in reduced if g not in already]
        reduced_dims = sorted(2 + present.index(p) for p in to_reduce)
        expr = var
        if reduced_dims:
            dims = reduced_dims[0] if len(reduced_dims) == 1 else tuple(reduced_dims)
            expr = f"{var}.sum(dim={dims})"
        remaining = ["c"] + [p for p in present if p not in to_reduce]
        kept_order: list[int | str] = [g[0] for g in kept]
        target = [*kept_order, "c", *fixed] if channels_last else ["c", *fixed, *kept_order]
        permutation = [remaining.index(p) for p in target]
        if permutation != sorted(permutation):
            expr = f"{expr}.permute(0, {', '.join(str(1 + i) for i in permutation)})"
    if fixed:
        shape = (
            [*(str(n) for n in kept_sizes), "-1"]
            if channels_last
            else ["-1", *(str(n) for n in kept_sizes)]
        )
        expr = f"{expr}.reshape(batch, {', '.join(shape)})"
    # Averages divide the small reduced result (a mean's backward would divide a full tensor).
    divisor = prod(sizes[g[0]] for g in reduced if g not in already)
    if divisor != 1:
        expr = f"{expr} / {divisor}"
    return expr, kept_spaces, kept_sizes, factor


def feature_for(
    space: WeightSpaceSpec,
    key: FeatureKey,
    taken: set[str],
    var: str | None = None,
    layout: str = "channels_first",
    parent: tuple[str, FeatureKey] | None = None,
) -> Feature:
    """The feature for ``key``, named uniquely against ``taken`` (which it extends)."""
    code, kept_spaces, kept_sizes, factor = feature_code(space, key, var, layout, parent)
    name = _feature_name(key, code, space, taken, layout if key[1] else "channels_first")
    source, kept, reduced = key
    tensor = space.tensor(source)
    letters_out, letters_sum = "ijklm", "pqrst"
    labels = [""] * len(tensor.axes)
    for k, group in enumerate(kept):
        for p in group:
            labels[p] = letters_out[k]
    for k, group in enumerate(reduced):
        for p in group:
            labels[p] = letters_sum[k]
    for p, _axis in enumerate(tensor.axes):
        if not labels[p]:
            labels[p] = ":"
    entry = f"{source}[{','.join(labels)}]"
    summed = "".join(letters_sum[k] for k in range(len(reduced)))
    description = f"mean_{summed} {entry}" if summed else entry
    layout = layout if kept else "channels_first"
    return Feature(key, name, source, kept_spaces, kept_sizes, factor, code, description, layout)


def _feature_name(
    key: FeatureKey, code: str, space: WeightSpaceSpec, taken: set[str], layout: str
) -> str:
    source, kept, reduced = key
    tensor = space.tensor(source)
    var = tensor_var(source)
    if code == var:
        return var  # the input tensor itself
    fixed = any(space.is_fixed_axis(a) for a in tensor.axes)
    full = not reduced and len(kept) == sum(not space.is_fixed_axis(a) for a in tensor.axes)
    if full and fixed and not any(len(g) > 1 for g in kept):
        stem = f"{var}_all"
    elif kept:
        stem = f"{var}_by_" + "_".join(identifier(tensor.axes[g[0]].space, part=True) for g in kept)
    else:
        stem = f"{var}_pooled"
    if any(len(g) > 1 for g in (*kept, *reduced)):
        stem += "_diag"
    if layout == "channels_last":
        stem += "_cl"
    name, k = stem, 2
    while name in taken:
        name, k = f"{stem}{k}", k + 1
    taken.add(name)
    return name


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


def _parent_key(
    space: WeightSpaceSpec, key: FeatureKey, candidates: list[FeatureKey]
) -> FeatureKey | None:
    """A channels-first feature of the same source from which ``key`` follows by more averaging.

    Reading a small parent instead of the source saves a pass over the source and, in the
    backward pass, one accumulation of a full-size gradient.
    """
    source, kept, reduced = key
    if not reduced or _has_diagonal(key) or _key_factor(space, key) != 1:
        return None
    best = None
    for cand in candidates:
        c_source, c_kept, c_reduced = cand
        if c_source != source or cand == key or _has_diagonal(cand) or not c_kept:
            continue
        if list(c_kept) != sorted(c_kept):
            continue  # parent axes must be in source order
        if not set(c_reduced) < set(reduced) or not set(kept) <= set(c_kept):
            continue
        if set(c_kept) != set(kept) | (set(reduced) - set(c_reduced)):
            continue
        if best is None or len(c_kept) < len(best[1]):
            best = cand
    return best


def _build_features(
    space: WeightSpaceSpec,
    needed: list[tuple[FeatureKey, str]],
    order: Callable[[FeatureKey], tuple[int, int, FeatureKey]],
) -> dict[tuple[FeatureKey, str], Feature]:
    """Every (feature, layout) the ops read, parents first, with unique variable names."""
    wanted = sorted(
        {(k, lay if k[1] else "channels_first") for k, lay in needed},
        key=lambda kl: (order(kl[0]), kl[1]),
    )
    first_keys = [k for k, lay in wanted if lay == "channels_first"]
    taken: set[str] = {tensor_var(t.name) for t in space.tensors}
    taken |= {f"out_{tensor_var(t.name)}" for t in space.tensors} | {"batch", "ws", "self", "c_out"}
    features: dict[tuple[FeatureKey, str], Feature] = {}
    for key, layout in wanted:
        parent = _parent_key(space, key, first_keys) if layout == "channels_first" else None
        parent_ref = None
        if parent is not None:
            if (parent, "channels_first") not in features:
                parent = None  # parents are built first; keep the ordering simple
            else:
                parent_ref = (features[(parent, "channels_first")].name, parent)
        features[(key, layout)] = feature_for(space, key, taken, layout=layout, parent=parent_ref)
    return features


def linear_plan(basis: LinearBasis, with_constants: bool = True) -> LinearPlan:
    """Merge the basis into features, terms and matmuls (see the module docstring)."""
    space = basis.space
    tensor_order = {t.name: i for i, t in enumerate(space.tensors)}
    by_placement: dict[PlacementKey, dict[FeatureKey, BasisMap]] = {}
    for block in basis.blocks:
        for basis_map in block.maps:
            kept_blocks = _kept_blocks(basis_map)
            placement = _placement_key(basis_map, kept_blocks)
            feature = _feature_key(basis_map, kept_blocks)
            by_placement.setdefault(placement, {})[feature] = basis_map

    # Constants without diagonals join the output's term with the fewest kept axes.
    constant_targets: dict[str, BasisMap] = {}
    diagonal_constants: list[BasisMap] = []
    if with_constants:
        for block in basis.constants:
            for basis_map in block.maps:
                if any(len(b.outputs) > 1 for b in basis_map.blocks):
                    diagonal_constants.append(basis_map)
                else:
                    assert basis_map.output is not None
                    constant_targets[basis_map.output] = basis_map
    if diagonal_constants:
        raise NotImplementedError("constants on diagonals of tied spaces are not generated yet")

    placements = sorted(by_placement, key=lambda k: (tensor_order[k[0]], -len(k[1]), k))
    constant_term: dict[str, PlacementKey] = {}
    for key in placements:
        output = key[0]
        if output in constant_targets and (
            output not in constant_term or len(key[1]) < len(constant_term[output][1])
        ):
            constant_term[output] = key

    def feature_sort(key: FeatureKey) -> tuple[int, int, FeatureKey]:
        return (tensor_order[key[0]], -len(key[1]), key)

    # Terms grouped by identical feature lists become one matmul; wide ones run channels-last.
    groups: dict[tuple[FeatureKey, ...], list[PlacementKey]] = {}
    for key in placements:
        groups.setdefault(tuple(sorted(by_placement[key], key=feature_sort)), []).append(key)
    group_order = sorted(groups, key=lambda fs: placements.index(groups[fs][0]))
    layouts = {
        fs: "channels_last"
        if fs[0][1] and sum(_key_factor(space, f) for f in fs) > CHANNELS_LAST_MIN_FACTOR
        else "channels_first"
        for fs in group_order
    }
    features = _build_features(
        space, [(f, layouts[fs]) for fs in group_order for f in fs], feature_sort
    )

    ops: list[MixOp] = []
    terms_by_output: dict[str, list[Term]] = {t.name: [] for t in space.tensors}
    map_slots: dict[BasisMap, MapSlot] = {}
    constant_slots: dict[BasisMap, MapSlot] = {}
    op_names: set[str] = set()
    for feature_tuple in group_order:
        layout = layouts[feature_tuple]
        used = [features[(f, layout if f[1] else "channels_first")] for f in feature_tuple]
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
        for key in groups[feature_tuple]:
            where = _placement(space, space.tensor(key[0]), key)
            has_constant = constant_term.get(key[0]) == key
            term = Term(
                name=f"{name}_{tensor_var(key[0])}",
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
                constant_slots[constant_targets[key[0]]] = MapSlot(name, row, where.factor, 0, 1)
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
            )
        )
    fan_in = {
        t.name: sum(
            sum(_key_factor(space, f) for f in by_placement[term.placement.key])
            for term in terms_by_output[t.name]
        )
        for t in space.tensors
    }
    return LinearPlan(
        space=space,
        inputs=tuple((t.name, tensor_var(t.name)) for t in space.tensors),
        features=tuple(features.values()),
        ops=tuple(ops),
        outputs=tuple(
            (t.name, f"out_{tensor_var(t.name)}", tuple(terms_by_output[t.name]))
            for t in space.tensors
        ),
        map_slots=map_slots,
        constant_slots=constant_slots,
        fan_in=fan_in,
    )
