"""The complete equivariant polynomial maps of degree d: linear maps ``Sym^d(U) -> U``.

A block is an output tensor T (None: an invariant) and a multiset ``S_1 <= ... <= S_d`` of
input tensors (docs/math.md section 5). A term is an index diagram: per neuron space, the axis
positions of T and of every factor ``(k, axis)`` are partitioned into blocks; a block with
only input positions is averaged over, fixed axes are never partitioned and carry a dense
parameter ``theta``. A diagram survives when every block balances the scaling character of
its space and the space has at least as many neurons as its partition has blocks (the orbit
basis argument of :mod:`derive.basis.partitions`).

Identical factors make relabelled diagrams the same polynomial. Let G permute the slots of
identical factors. One canonical diagram is kept per G-orbit, with ``dim V^H`` parameters,
where H is its stabilizer and V the fixed-axis parameter space. The totals follow from the
weighted Burnside formulas ``terms = mean_g prod_s fix_s(g)`` and
``dim = mean_g chi(g) prod_s fix_s(g)``, so they are counted without materializing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from math import prod

from derive.basis.partitions import set_partitions
from derive.errors import GenerationError
from derive.weightspace.model import Scaling, TensorSpec, WeightSpaceSpec

__all__ = [
    "PolyBlock",
    "PolyMap",
    "PolyBlockBasis",
    "PolyBasis",
    "poly_key",
    "factor_relabellings",
    "count_block",
    "count_polynomial",
    "enumerate_block_poly",
    "enumerate_polynomial",
]

TensorRef = str | TensorSpec


@dataclass(frozen=True)
class PolyBlock:
    """Positions of one space taking one index value: output axes and ``(factor, axis)`` pairs."""

    space: str
    outputs: tuple[int, ...]
    inputs: tuple[tuple[int, int], ...]

    @property
    def role(self) -> str:
        """``matched`` (read and written), ``reduced`` (averaged over) or ``broadcast``."""
        if self.outputs and self.inputs:
            return "matched"
        return "broadcast" if self.outputs else "reduced"


def poly_key(output: str | None, factors: Sequence[str]) -> str:
    """``W2<-W2*b1``; ``inv<-b2*b2`` for invariants; ``W2<-1`` for degree 0."""
    return f"{output if output is not None else 'inv'}<-{'*'.join(factors) or '1'}"


@dataclass(frozen=True)
class PolyMap:
    """One canonical index diagram of the block ``output <- factors`` (factors in tensor order).

    ``in_fixed`` lists the fixed ``(factor, axis)`` positions; ``theta`` is dense over the
    fixed output and input axes up to the diagram's stabilizer (``num_params`` scalars).
    """

    output: str | None
    factors: tuple[str, ...]
    blocks: tuple[PolyBlock, ...]
    out_fixed: tuple[int, ...]
    in_fixed: tuple[tuple[int, int], ...]
    num_params: int

    @property
    def degree(self) -> int:
        return len(self.factors)

    @property
    def key(self) -> str:
        return poly_key(self.output, self.factors)


@dataclass(frozen=True)
class PolyBlockBasis:
    """All canonical terms of one block ``output <- factors``."""

    output: str | None
    factors: tuple[str, ...]
    maps: tuple[PolyMap, ...]

    @property
    def key(self) -> str:
        return poly_key(self.output, self.factors)

    @property
    def dim(self) -> int:
        return sum(m.num_params for m in self.maps)

    @property
    def count(self) -> int:
        return len(self.maps)


@dataclass(frozen=True)
class PolyBasis:
    """The complete degree-``degree`` equivariant polynomial maps (blocks with no term omitted)."""

    space: WeightSpaceSpec
    degree: int
    blocks: tuple[PolyBlockBasis, ...]

    @property
    def dim(self) -> int:
        return sum(block.dim for block in self.blocks)

    @property
    def count(self) -> int:
        return sum(block.count for block in self.blocks)


# --- per-space patterns and their symmetry ------------------------------------------------

_Slot = tuple[int, int]  # (factor, j-th axis of that factor in this space)
_Pattern = tuple[tuple[tuple[int, ...], tuple[_Slot, ...]], ...]


@cache
def factor_relabellings(labels: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Permutations of factor slots preserving ``labels`` (identical factors), identity first."""
    runs: dict[int, list[int]] = {}
    for slot, label in enumerate(labels):
        runs.setdefault(label, []).append(slot)
    perms = []
    for images in itertools.product(*(itertools.permutations(run) for run in runs.values())):
        perm = [0] * len(labels)
        for run, image in zip(runs.values(), images):
            for source, target in zip(run, image):
                perm[source] = target
        perms.append(tuple(perm))
    return tuple(perms)


@cache
def _cycles(perm: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    seen: set[int] = set()
    cycles = []
    for start in range(len(perm)):
        cycle = []
        slot = start
        while slot not in seen:
            seen.add(slot)
            cycle.append(slot)
            slot = perm[slot]
        if cycle:
            cycles.append(tuple(cycle))
    return tuple(cycles)


@cache
def _poly_patterns(
    scaling: Scaling, size: int, out_chars: tuple[int, ...], in_chars: tuple[tuple[int, ...], ...]
) -> tuple[_Pattern, ...]:
    """Surviving partitions of one space's positions, blocks as (output slots, input slots)."""
    slots = [(k, j) for k, chars in enumerate(in_chars) for j in range(len(chars))]
    num_out = len(out_chars)
    patterns = []
    for partition in set_partitions(num_out + len(slots)):
        if len(partition) > size:
            break  # set_partitions is ordered by the number of blocks
        blocks = []
        for block in partition:
            outs = tuple(p for p in block if p < num_out)
            ins = tuple(slots[p - num_out] for p in block if p >= num_out)
            exponent = sum(in_chars[k][j] for k, j in ins) - sum(out_chars[p] for p in outs)
            if not scaling.balances(exponent):
                break
            blocks.append((outs, ins))
        else:
            patterns.append(tuple(sorted(blocks)))
    return tuple(patterns)


def _relabel(pattern: _Pattern, perm: tuple[int, ...]) -> _Pattern:
    """The pattern with factor k renamed ``perm[k]`` (identical factors share their axes)."""
    return tuple(
        sorted((outs, tuple(sorted((perm[k], j) for k, j in ins))) for outs, ins in pattern)
    )


@cache
def _fixed_counts(
    scaling: Scaling,
    size: int,
    out_chars: tuple[int, ...],
    in_chars: tuple[tuple[int, ...], ...],
    labels: tuple[int, ...],
) -> tuple[int, ...]:
    """Per relabelling g of identical factors, the number of patterns that g maps to themselves."""
    patterns = _poly_patterns(scaling, size, out_chars, in_chars)
    group = factor_relabellings(labels)
    counts = [len(patterns)]
    for perm in group[1:]:
        counts.append(sum(1 for p in patterns if _relabel(p, perm) == p))
    return tuple(counts)


# --- blocks: tensors as per-space characters ------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Axes:
    """A tensor's positions and characters per permuted space, and its fixed axes."""

    name: str
    positions: dict[str, tuple[int, ...]]
    chars: dict[str, tuple[int, ...]]
    fixed: tuple[int, ...]
    fixed_size: int


def _axes(space: WeightSpaceSpec, tensor: TensorSpec | None) -> _Axes | None:
    if tensor is None:
        return None
    positions: dict[str, list[int]] = {}
    fixed = []
    for position, axis in enumerate(tensor.axes):
        if space.is_fixed_axis(axis):
            fixed.append(position)
        else:
            positions.setdefault(axis.space, []).append(position)
    chars = {s: tuple(tensor.axes[p].character for p in ps) for s, ps in positions.items()}
    fixed_size = prod(space.space(tensor.axes[p].space).size for p in fixed)
    return _Axes(
        tensor.name, {s: tuple(ps) for s, ps in positions.items()}, chars, tuple(fixed), fixed_size
    )


def _labels(factors: Sequence[_Axes]) -> tuple[int, ...]:
    names = [f.name for f in factors]
    return tuple(names.index(name) for name in names)


def _block_spaces(out: _Axes | None, factors: Sequence[_Axes]) -> list[str]:
    keys = [*(out.positions if out else ()), *(s for f in factors for s in f.positions)]
    return list(dict.fromkeys(keys))


def _space_args(
    space: WeightSpaceSpec, name: str, out: _Axes | None, factors: Sequence[_Axes]
) -> tuple[Scaling, int, tuple[int, ...], tuple[tuple[int, ...], ...]]:
    neuron_space = space.space(name)
    out_chars = out.chars.get(name, ()) if out else ()
    in_chars = tuple(f.chars.get(name, ()) for f in factors)
    return neuron_space.scaling, neuron_space.size, out_chars, in_chars


def _character(perm: tuple[int, ...], out: _Axes | None, factors: Sequence[_Axes]) -> int:
    """Trace of a relabelling on the fixed-axis parameters: F_out * prod over cycles F_in."""
    out_size = out.fixed_size if out else 1
    return out_size * prod(factors[cycle[0]].fixed_size for cycle in _cycles(perm))


@dataclass(frozen=True, eq=False)
class _FactorSet:
    """What a multiset of factors contributes to every block, computed once for all outputs."""

    infos: tuple[_Axes, ...]
    labels: tuple[int, ...]
    in_chars: dict[str, tuple[tuple[int, ...], ...]]  # per space the factors touch
    alone: dict[str, tuple[int, ...]]  # fixed counts per such space, without output positions
    characters: tuple[int, ...]  # per relabelling, the character without F_out
    # memo, filled by _count: fixed counts per (space, output characters)
    with_output: dict[tuple[str, tuple[int, ...]], tuple[int, ...]] = field(default_factory=dict)


def _factor_set(space: WeightSpaceSpec, infos: Sequence[_Axes]) -> _FactorSet:
    labels = _labels(infos)
    in_chars: dict[str, tuple[tuple[int, ...], ...]] = {}
    alone: dict[str, tuple[int, ...]] = {}
    for name in _block_spaces(None, infos):
        scaling, size, _, chars = _space_args(space, name, None, infos)
        in_chars[name] = chars
        alone[name] = _fixed_counts(scaling, size, (), chars, labels)
    characters = tuple(_character(g, None, infos) for g in factor_relabellings(labels))
    return _FactorSet(tuple(infos), labels, in_chars, alone, characters)


def _count(space: WeightSpaceSpec, out: _Axes | None, factors: _FactorSet) -> tuple[int, int]:
    """(terms, dimension) of one block by the weighted Burnside formulas."""
    touched = out.chars if out else {}
    vectors = []
    for name, out_chars in touched.items():
        fixed = factors.with_output.get((name, out_chars))
        if fixed is None:
            neuron_space = space.space(name)
            chars = factors.in_chars.get(name) or ((),) * len(factors.infos)
            fixed = _fixed_counts(
                neuron_space.scaling, neuron_space.size, out_chars, chars, factors.labels
            )
            factors.with_output[(name, out_chars)] = fixed
        if not fixed[0]:
            return 0, 0
        vectors.append(fixed)
    for name, fixed in factors.alone.items():
        if name not in touched:
            if not fixed[0]:
                return 0, 0
            vectors.append(fixed)
    out_size = out.fixed_size if out else 1
    if len(factors.characters) == 1:  # distinct factors: every diagram is its own orbit
        terms = prod(v[0] for v in vectors)
        return terms, out_size * factors.characters[0] * terms
    weights = (
        [prod(column) for column in zip(*vectors)] if vectors else [1] * len(factors.characters)
    )
    order = len(weights)
    terms, rest = divmod(sum(weights), order)
    dim, rest_dim = divmod(out_size * sum(map(int.__mul__, factors.characters, weights)), order)
    assert rest == 0 and rest_dim == 0, "Burnside averages must be integers"
    return terms, dim


def _resolve(
    space: WeightSpaceSpec, output: TensorRef | None, factors: Sequence[TensorRef]
) -> tuple[TensorSpec | None, tuple[TensorSpec, ...]]:
    """Tensors of a block, factors sorted in the order of ``space.tensors``."""
    order = {t.name: k for k, t in enumerate(space.tensors)}
    names = [f if isinstance(f, str) else f.name for f in factors]
    out_name = output if isinstance(output, str) or output is None else output.name
    out = space.tensor(out_name) if out_name is not None else None
    return out, tuple(space.tensor(n) for n in sorted(names, key=order.__getitem__))


def count_block(
    space: WeightSpaceSpec, output: TensorRef | None, factors: Sequence[TensorRef]
) -> tuple[int, int]:
    """(number of canonical terms, dimension) of the block ``output <- factors``."""
    out, tensors = _resolve(space, output, factors)
    infos = [a for t in tensors if (a := _axes(space, t))]
    return _count(space, _axes(space, out), _factor_set(space, infos))


def _reduced_exponents(
    space: WeightSpaceSpec, exponents: dict[str, int]
) -> frozenset[tuple[str, int]]:
    """Total exponents per space that no scaling of that space balances (a block must match)."""
    reduced = []
    for name, exponent in exponents.items():
        scaling = space.space(name).scaling
        value = exponent % 2 if scaling is Scaling.SIGN else exponent
        if scaling is not Scaling.NONE and value:
            reduced.append((name, value))
    return frozenset(reduced)


def _candidate_blocks(
    space: WeightSpaceSpec, degree: int, infos: dict[str, _Axes]
) -> Iterator[tuple[_Axes | None, _FactorSet]]:
    """Blocks in (output, factors) order whose total exponents balance (a necessary condition)."""
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")
    tensors = space.tensors
    totals = [{s: sum(c) for s, c in infos[t.name].chars.items()} for t in tensors]
    by_signature: dict[frozenset[tuple[str, int]], list[tuple[int, ...]]] = {}
    for combo in itertools.combinations_with_replacement(range(len(tensors)), degree):
        exponents: dict[str, int] = {}
        for index in combo:
            for name, value in totals[index].items():
                exponents[name] = exponents.get(name, 0) + value
        by_signature.setdefault(_reduced_exponents(space, exponents), []).append(combo)
    factor_sets: dict[tuple[int, ...], _FactorSet] = {}
    for index, out in enumerate((*tensors, None)):
        signature = _reduced_exponents(space, totals[index]) if out else frozenset()
        out_info = infos[out.name] if out else None
        for combo in by_signature.get(signature, ()):
            if combo not in factor_sets:
                factor_sets[combo] = _factor_set(space, [infos[tensors[k].name] for k in combo])
            yield out_info, factor_sets[combo]


def _tensor_infos(space: WeightSpaceSpec) -> dict[str, _Axes]:
    return {t.name: a for t in space.tensors if (a := _axes(space, t)) is not None}


def count_polynomial(space: WeightSpaceSpec, degree: int) -> dict[str, tuple[int, int]]:
    """(terms, dimension) of every block with a term, keyed like ``W2<-W2*b1``."""
    counts = {}
    for out, factors in _candidate_blocks(space, degree, _tensor_infos(space)):
        terms, dim = _count(space, out, factors)
        if terms:
            key = poly_key(out.name if out else None, [f.name for f in factors.infos])
            counts[key] = (terms, dim)
    return counts


# --- materialized canonical diagrams -------------------------------------------------------


def enumerate_block_poly(
    space: WeightSpaceSpec, output: TensorRef | None, factors: Sequence[TensorRef]
) -> tuple[PolyMap, ...]:
    """One :class:`PolyMap` per orbit of diagrams under relabelling identical factors."""
    out_tensor, tensors = _resolve(space, output, factors)
    out = _axes(space, out_tensor)
    infos = [a for t in tensors if (a := _axes(space, t))]
    labels = _labels(infos)
    group = factor_relabellings(labels)
    names = _block_spaces(out, infos)
    options = []
    for name in names:
        patterns = _poly_patterns(*_space_args(space, name, out, infos))
        if not patterns:
            return ()
        options.append(patterns)
    characters = [_character(g, out, infos) for g in group]
    maps = []
    for diagram in itertools.product(*options):
        images = [tuple(_relabel(p, g) for p in diagram) for g in group[1:]]
        if any(image < diagram for image in images):
            continue
        stabilizer = [0, *(k + 1 for k, image in enumerate(images) if image == diagram)]
        num_params = sum(characters[k] for k in stabilizer) // len(stabilizer)
        blocks = [
            PolyBlock(
                name,
                tuple(out.positions[name][o] for o in outs) if out else (),
                tuple((k, infos[k].positions[name][j]) for k, j in ins),
            )
            for name, pattern in zip(names, diagram)
            for outs, ins in pattern
        ]
        blocks.sort(key=_block_order)
        maps.append(
            PolyMap(
                output=out.name if out else None,
                factors=tuple(f.name for f in infos),
                blocks=tuple(blocks),
                out_fixed=out.fixed if out else (),
                in_fixed=tuple((k, p) for k, f in enumerate(infos) for p in f.fixed),
                num_params=num_params,
            )
        )
    maps.sort(key=lambda m: (len(m.blocks), [_block_order(b) for b in m.blocks]))
    return tuple(maps)


def _block_order(block: PolyBlock) -> tuple[int, tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Output blocks by output position, then reduced blocks by first input position."""
    return (0 if block.outputs else 1, block.outputs, block.inputs)


def enumerate_polynomial(
    space: WeightSpaceSpec, degree: int, limit: int | None = 20000
) -> PolyBasis:
    """Materialize every canonical term of degree ``degree``; refuse more than ``limit`` terms."""
    infos = _tensor_infos(space)
    counted = []
    for out, factors in _candidate_blocks(space, degree, infos):
        terms, dim = _count(space, out, factors)
        if terms:
            counted.append((out, factors, terms, dim))
    total = sum(c[2] for c in counted)
    if limit is not None and total > limit:
        dim = sum(c[3] for c in counted)
        raise GenerationError(
            f"the degree-{degree} polynomial basis of {space.name} has {total} terms "
            f"(dimension {dim}), more than the limit of {limit} terms; to allow it, "
            f"pass limit={total} (or limit=None), or --max-terms N on the command line"
        )
    blocks = []
    for out, factors, _, _ in counted:
        names = tuple(f.name for f in factors.infos)
        output = out.name if out else None
        blocks.append(PolyBlockBasis(output, names, enumerate_block_poly(space, output, names)))
    return PolyBasis(space=space, degree=degree, blocks=tuple(blocks))
