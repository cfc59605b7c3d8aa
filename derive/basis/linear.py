"""The complete basis of equivariant linear maps, constants and invariant functionals.

For a block ``T <- S`` (output tensor T, input tensor S) the positions of every permuted
space in T and S are partitioned into blocks (:mod:`derive.basis.partitions`). A partition
survives when every block balances the scaling character of its space (the input exponent
equals the output exponent, in Z or mod 2) and the space has at least as many neurons as the
partition has blocks. Fixed axes are never partitioned: each map carries a dense parameter
over (output fixed index, input fixed index) pairs. Constants are the same rule with no
input; invariant functionals the same rule with no output.

When T and S share no permuted space, every block of a partition lies on one side, so the
maps ``T <- S`` are exactly the products of T's constants and S's invariant functionals. A
weight space of N tensors has N^2 blocks, mostly such products (DenseNet-121: N = 1969, 3.3
million maps), so :class:`LinearBasis` enumerates only the blocks whose tensors share a
space, as position :data:`Pattern` s cached by the pair's axis signature, and builds a block's
maps when it is read.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from math import prod
from typing import overload

from derive.basis.partitions import set_partitions
from derive.weightspace.model import Scaling, TensorSpec, WeightSpaceSpec

__all__ = [
    "Block",
    "BasisMap",
    "BlockBasis",
    "BlockPatterns",
    "LinearBasis",
    "Pattern",
    "enumerate_block",
    "linear_basis",
    "block_key",
    "pattern_of",
    "ordered_pattern",
]


@dataclass(frozen=True)
class Block:
    """One block of a partition: positions of one space that take the same index value."""

    space: str
    outputs: tuple[int, ...]
    inputs: tuple[int, ...]

    @property
    def role(self) -> str:
        """``matched`` (read and written), ``reduced`` (averaged over) or ``broadcast``."""
        if self.outputs and self.inputs:
            return "matched"
        return "broadcast" if self.outputs else "reduced"


@dataclass(frozen=True)
class BasisMap:
    """One parameter-sharing pattern of the block ``output <- input``.

    ``output`` is None for an invariant functional, ``input`` is None for a constant.
    ``out_fixed`` / ``in_fixed`` are the fixed axis positions of the output / input tensor;
    the map's parameter is dense over them (``num_params`` scalars per channel pair).
    """

    output: str | None
    input: str | None
    blocks: tuple[Block, ...]
    out_fixed: tuple[int, ...]
    in_fixed: tuple[int, ...]
    num_params: int

    @property
    def key(self) -> str:
        return block_key(self.output, self.input)


def block_key(output: str | None, input: str | None) -> str:
    """``W2<-b1``; ``W2<-1`` for constants; ``inv<-W1`` for invariant functionals."""
    return f"{output if output is not None else 'inv'}<-{input if input is not None else '1'}"


@dataclass(frozen=True)
class BlockBasis:
    """All maps of one block ``output <- input``."""

    output: str | None
    input: str | None
    maps: tuple[BasisMap, ...]

    @property
    def key(self) -> str:
        return block_key(self.output, self.input)

    @property
    def dim(self) -> int:
        return sum(m.num_params for m in self.maps)


#: one map's blocks as (output positions, input positions) pairs, in block order; the axes of
#: the block's tensors name each block's space
Pattern = tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]


def pattern_of(basis_map: BasisMap) -> Pattern:
    """The positions of a map's blocks, without their spaces."""
    return tuple((b.outputs, b.inputs) for b in basis_map.blocks)


#: one permuted space of a tensor: its scaling and size, the tensor's positions on it and
#: their scaling characters
_SpaceAxes = tuple[Scaling, int, tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class _TensorAxes:
    """One tensor's axes as the enumeration reads them: per permuted space (``spaces`` gives
    its index), in order of first appearance, its :data:`_SpaceAxes`; the fixed positions and
    the product of their sizes (the parameters a map carries per fixed index of this side)."""

    spaces: dict[str, int]
    signature: tuple[_SpaceAxes, ...]
    fixed: tuple[int, ...]
    fixed_size: int


_NO_AXES = _TensorAxes({}, (), (), 1)


def _tensor_axes(space: WeightSpaceSpec, tensor: TensorSpec | None) -> _TensorAxes:
    if tensor is None:
        return _NO_AXES
    positions: dict[str, list[int]] = {}
    fixed: list[int] = []
    for position, axis in enumerate(tensor.axes):
        if space.is_fixed_axis(axis):
            fixed.append(position)
        else:
            positions.setdefault(axis.space, []).append(position)
    signature = tuple(
        (
            space.space(name).scaling,
            space.space(name).size,
            tuple(ps),
            tuple(tensor.axes[p].character for p in ps),
        )
        for name, ps in positions.items()
    )
    fixed_size = prod(space.space(tensor.axes[p].space).size for p in fixed)
    return _TensorAxes(
        {name: i for i, name in enumerate(positions)}, signature, tuple(fixed), fixed_size
    )


#: everything the maps of a block depend on but the tensors' names: the output's and the
#: input's signatures, and per input space the index of the same output space (or -1)
_PairKey = tuple[tuple[_SpaceAxes, ...], tuple[_SpaceAxes, ...], tuple[int, ...]]
_LocalPattern = tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]


@cache
def _space_patterns(
    scaling: Scaling, size: int, out_chars: tuple[int, ...], in_chars: tuple[int, ...]
) -> tuple[_LocalPattern, ...]:
    """Surviving partitions of one space's positions, as (output slots, input slots) blocks."""
    num_out = len(out_chars)
    chars = out_chars + in_chars
    patterns = []
    for partition in set_partitions(len(chars)):
        if len(partition) > size:
            continue
        blocks = []
        for block in partition:
            out_slots = tuple(p for p in block if p < num_out)
            in_slots = tuple(p - num_out for p in block if p >= num_out)
            exponent = sum(in_chars[p] for p in in_slots) - sum(out_chars[p] for p in out_slots)
            if not scaling.balances(exponent):
                break
            blocks.append((out_slots, in_slots))
        else:
            patterns.append(tuple(blocks))
    return tuple(patterns)


def _links(out: _TensorAxes, inp: _TensorAxes) -> tuple[int, ...]:
    """Per space of the input, the index of the same space in the output, or -1."""
    return tuple(map(out.spaces.get, inp.spaces, itertools.repeat(-1)))


def _pair_key(out: _TensorAxes, inp: _TensorAxes) -> _PairKey:
    return out.signature, inp.signature, _links(out, inp)


#: one space of a block: scaling, size, output positions and characters, input positions and
#: characters
_BlockSpace = tuple[
    Scaling, int, tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]
]


def _pair_spaces(key: _PairKey) -> list[_BlockSpace]:
    """The spaces of a block: the output's, then the input's others."""
    out_signature, in_signature, links = key
    shared = {k: j for j, k in enumerate(links) if k >= 0}
    spaces = []
    for k, (scaling, size, outs, out_chars) in enumerate(out_signature):
        ins, in_chars = in_signature[shared[k]][2:] if k in shared else ((), ())
        spaces.append((scaling, size, outs, out_chars, ins, in_chars))
    for j, (scaling, size, ins, in_chars) in enumerate(in_signature):
        if links[j] < 0:
            spaces.append((scaling, size, (), (), ins, in_chars))
    return spaces


@cache
def _pair_patterns(key: _PairKey) -> tuple[Pattern, ...]:
    """Every map of a block with this axis signature: one surviving partition per space."""
    per_space: list[list[Pattern]] = []
    for scaling, size, outs, out_chars, ins, in_chars in _pair_spaces(key):
        options = [
            tuple((tuple(outs[s] for s in o), tuple(ins[s] for s in i)) for o, i in local)
            for local in _space_patterns(scaling, size, out_chars, in_chars)
        ]
        if not options:
            return ()
        per_space.append(options)
    return tuple(
        ordered_pattern(b for group in combo for b in group)
        for combo in itertools.product(*per_space)
    )


def ordered_pattern(blocks: Iterable[tuple[tuple[int, ...], tuple[int, ...]]]) -> Pattern:
    """The blocks of a map in block order."""
    return tuple(sorted(blocks, key=_block_order))


def _block_order(block: tuple[tuple[int, ...], tuple[int, ...]]) -> tuple[int, int, int]:
    """Blocks ordered by first output position, then first input position."""
    outputs, inputs = block
    first_out = outputs[0] if outputs else 1 << 30
    first_in = inputs[0] if inputs else 1 << 30
    return (0 if outputs else 1, first_out, first_in)


def _maps(
    output: TensorSpec | None,
    input: TensorSpec | None,
    out: _TensorAxes,
    inp: _TensorAxes,
    patterns: tuple[Pattern, ...],
) -> tuple[BasisMap, ...]:
    """The maps ``output <- input`` with these patterns."""
    num_params = out.fixed_size * inp.fixed_size
    maps = []
    for pattern in patterns:
        blocks = tuple(Block(_block_space(output, input, o, i), o, i) for o, i in pattern)
        maps.append(
            BasisMap(
                output=output.name if output else None,
                input=input.name if input else None,
                blocks=blocks,
                out_fixed=out.fixed,
                in_fixed=inp.fixed,
                num_params=num_params,
            )
        )
    return tuple(maps)


def _block_space(
    output: TensorSpec | None, input: TensorSpec | None, outs: tuple[int, ...], ins: tuple[int, ...]
) -> str:
    """The space of a block: that of its first output position, else its first input."""
    if outs:
        assert output is not None
        return output.axes[outs[0]].space
    assert input is not None
    return input.axes[ins[0]].space


def enumerate_block(
    space: WeightSpaceSpec, output: TensorSpec | None, input: TensorSpec | None
) -> tuple[BasisMap, ...]:
    """Every equivariant map ``output <- input`` (None: constant or invariant functional)."""
    out, inp = _tensor_axes(space, output), _tensor_axes(space, input)
    return _maps(output, input, out, inp, _pair_patterns(_pair_key(out, inp)))


@dataclass(frozen=True)
class BlockPatterns:
    """The patterns of every block ``tensors[t] <- tensors[s]``, by tensor index.

    ``shared_inputs[t]`` lists (ascending) the inputs that share a permuted space with output
    ``t``, and ``shared_kinds[t]`` the patterns of each such block (even one without maps) as
    an index into ``kinds``: the distinct pattern tuples, one per axis signature of such a
    pair. Every other block's patterns are the products of the output's ``constants`` and the
    input's ``invariants``.
    """

    tensors: tuple[TensorSpec, ...]
    axes: tuple[_TensorAxes, ...]
    constants: tuple[tuple[Pattern, ...], ...]
    invariants: tuple[tuple[Pattern, ...], ...]
    kinds: tuple[tuple[Pattern, ...], ...]
    shared_inputs: tuple[tuple[int, ...], ...]
    shared_kinds: tuple[tuple[int, ...], ...]

    def __hash__(self) -> int:  # the rest follows from the tensors (and their space)
        return hash((self.tensors, self.constants, self.invariants))

    def patterns(self, output: int, input: int) -> tuple[Pattern, ...]:
        inputs = self.shared_inputs[output]
        k = bisect_left(inputs, input)
        if k < len(inputs) and inputs[k] == input:
            return self.kinds[self.shared_kinds[output][k]]
        return tuple(c + i for c in self.constants[output] for i in self.invariants[input])

    @property
    def shared_count(self) -> int:
        """The number of blocks whose tensors share a permuted space."""
        return sum(len(inputs) for inputs in self.shared_inputs)

    @cached_property
    def index(self) -> dict[str, int]:
        """Tensor name -> index."""
        return {t.name: i for i, t in enumerate(self.tensors)}

    def maps(self, output: int, input: int) -> tuple[BasisMap, ...]:
        return self._maps(output, input, self.patterns(output, input))

    def pattern_map(self, output: int, input: int, pattern: Pattern) -> BasisMap:
        """The map ``tensors[output] <- tensors[input]`` with this pattern."""
        return self._maps(output, input, (pattern,))[0]

    def _maps(self, output: int, input: int, patterns: tuple[Pattern, ...]) -> tuple[BasisMap, ...]:
        t, s = self.tensors, self.axes
        return _maps(t[output], t[input], s[output], s[input], patterns)

    def total(
        self,
        per_constant: Sequence[int],
        per_invariant: Sequence[int],
        per_kind: Sequence[int],
        weights: Sequence[int],
    ) -> int:
        """A sum over every block: ``per_constant[t] * per_invariant[s]`` for a product block,
        ``weights[t] * per_kind[k] * weights[s]`` for a block of kind ``k``."""
        total = sum(per_constant) * sum(per_invariant)
        for output, (inputs, kinds) in enumerate(zip(self.shared_inputs, self.shared_kinds)):
            total += weights[output] * sum(per_kind[k] * weights[s] for k, s in zip(kinds, inputs))
            total -= per_constant[output] * sum(per_invariant[s] for s in inputs)
        return total


def block_patterns(space: WeightSpaceSpec, tensors: Sequence[TensorSpec]) -> BlockPatterns:
    """Enumerate the constants, the invariants and the blocks of tensors sharing a space."""
    axes = tuple(_tensor_axes(space, t) for t in tensors)
    return BlockPatterns(
        tuple(tensors),
        axes,
        tuple(_pair_patterns(_pair_key(a, _NO_AXES)) for a in axes),
        tuple(_pair_patterns(_pair_key(_NO_AXES, a)) for a in axes),
        *_shared_blocks(axes),
    )


def _shared_blocks(
    axes: Sequence[_TensorAxes],
) -> tuple[
    tuple[tuple[Pattern, ...], ...], tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]
]:
    """The kinds, and per output the inputs sharing a space with it and their kinds (see
    :class:`BlockPatterns`). A pair's kind is looked up by the ids of the two signatures and
    the links: cheaper to hash than the signatures, for the ~10^5 pairs of a large network."""
    holders: dict[str, list[int]] = {}
    for index, a in enumerate(axes):
        for name in a.spaces:
            holders.setdefault(name, []).append(index)
    signatures: dict[tuple[_SpaceAxes, ...], int] = {}
    signature_ids = [signatures.setdefault(a.signature, len(signatures)) for a in axes]
    kinds: dict[tuple[int, int, tuple[int, ...]], int] = {}
    kind_patterns: list[tuple[Pattern, ...]] = []
    shared_inputs, shared_kinds = [], []
    for output, out in enumerate(axes):
        partners = sorted({i for name in out.spaces for i in holders[name]})
        partner_kinds = []
        for input in partners:
            links = _links(out, axes[input])
            key = (signature_ids[output], signature_ids[input], links)
            kind = kinds.get(key)
            if kind is None:
                kind = kinds[key] = len(kind_patterns)
                kind_patterns.append(_pair_patterns((out.signature, axes[input].signature, links)))
            partner_kinds.append(kind)
        shared_inputs.append(tuple(partners))
        shared_kinds.append(tuple(partner_kinds))
    return tuple(kind_patterns), tuple(shared_inputs), tuple(shared_kinds)


class _Blocks(Sequence[BlockBasis]):
    """Every block ``output <- input`` (output-major), each built when it is read."""

    def __init__(self, patterns: BlockPatterns):
        self._patterns = patterns
        self._count = len(patterns.tensors)

    def __len__(self) -> int:
        return self._count * self._count

    @overload
    def __getitem__(self, index: int) -> BlockBasis: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[BlockBasis, ...]: ...

    def __getitem__(self, index: int | slice) -> BlockBasis | tuple[BlockBasis, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        if not -len(self) <= index < len(self):
            raise IndexError(f"block {index} of {len(self)}")
        return self._block(*divmod(index % len(self), self._count))

    def __iter__(self) -> Iterator[BlockBasis]:
        for output in range(self._count):
            for input in range(self._count):
                yield self._block(output, input)

    def _block(self, output: int, input: int) -> BlockBasis:
        tensors = self._patterns.tensors
        return BlockBasis(
            tensors[output].name, tensors[input].name, self._patterns.maps(output, input)
        )


class _BlocksByKey(Mapping[str, BlockBasis]):
    """``block_key -> BlockBasis`` over the blocks, constants and invariants (those last
    winning a clash, as in a dict built in that order), each block built when it is read."""

    def __init__(self, basis: LinearBasis):
        self._basis = basis
        self._index = basis.patterns.index

    def __getitem__(self, key: str) -> BlockBasis:
        if not isinstance(key, str):
            raise KeyError(key)
        output, _, input = key.partition("<-")
        if output == "inv" and input in self._index:
            return self._basis.invariants[self._index[input]]
        if input == "1" and output in self._index:
            return self._basis.constants[self._index[output]]
        if output in self._index and input in self._index:
            return self._basis.blocks[self._index[output] * len(self._index) + self._index[input]]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        names = [t.name for t in self._basis.patterns.tensors]
        yield from (block_key(t, s) for t in names for s in names)
        yield from (block_key(t, None) for t in names)
        yield from (block_key(None, s) for s in names)

    def __len__(self) -> int:
        return len(self._index) ** 2 + 2 * len(self._index)


@dataclass(frozen=True)
class LinearBasis:
    """The complete equivariant linear basis of a weight space, block by block."""

    space: WeightSpaceSpec
    patterns: BlockPatterns
    constants: tuple[BlockBasis, ...]
    invariants: tuple[BlockBasis, ...]

    @cached_property
    def blocks(self) -> Sequence[BlockBasis]:
        """Every block ``output <- input``, output-major (built when read)."""
        return _Blocks(self.patterns)

    @cached_property
    def dim(self) -> int:
        """Dimension of equivariant linear maps for one input and one output channel."""
        return self.patterns.total(
            [b.dim for b in self.constants],
            [b.dim for b in self.invariants],
            [len(kind) for kind in self.patterns.kinds],
            [a.fixed_size for a in self.patterns.axes],
        )

    @property
    def constant_dim(self) -> int:
        return sum(block.dim for block in self.constants)

    @property
    def invariant_dim(self) -> int:
        return sum(block.dim for block in self.invariants)

    @cached_property
    def num_maps(self) -> int:
        return self.patterns.total(
            [len(b.maps) for b in self.constants],
            [len(b.maps) for b in self.invariants],
            [len(kind) for kind in self.patterns.kinds],
            [1] * len(self.patterns.tensors),
        )

    @cached_property
    def by_key(self) -> Mapping[str, BlockBasis]:
        return _BlocksByKey(self)

    def __str__(self) -> str:
        return (
            f"LinearBasis of {self.space.name}: dimension {self.dim} per channel pair in "
            f"{self.num_maps} maps over {len(self.blocks)} blocks; {self.constant_dim} "
            f"constants; {self.invariant_dim} invariant functionals"
        )

    def __repr__(self) -> str:
        return f"<{self}>"


def linear_basis(
    space: WeightSpaceSpec, tensors: Sequence[TensorSpec] | None = None
) -> LinearBasis:
    """The complete basis for every block, the constants and the invariant functionals."""
    chosen = tuple(tensors) if tensors is not None else space.tensors
    patterns = block_patterns(space, chosen)
    constants = tuple(
        BlockBasis(t.name, None, _maps(t, None, a, _NO_AXES, c))
        for t, a, c in zip(chosen, patterns.axes, patterns.constants)
    )
    invariants = tuple(
        BlockBasis(None, s.name, _maps(None, s, _NO_AXES, a, i))
        for s, a, i in zip(chosen, patterns.axes, patterns.invariants)
    )
    return LinearBasis(space=space, patterns=patterns, constants=constants, invariants=invariants)
