"""The complete basis of equivariant linear maps, constants and invariant functionals.

For a block ``T <- S`` (output tensor T, input tensor S) the positions of every permuted
space in T and S are partitioned into blocks (:mod:`derive.basis.partitions`). A partition
survives when every block balances the scaling character of its space (the input exponent
equals the output exponent, in Z or mod 2) and the space has at least as many neurons as the
partition has blocks. Fixed axes are never partitioned: each map carries a dense parameter
over (output fixed index, input fixed index) pairs. Constants are the same rule with no
input; invariant functionals the same rule with no output.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from math import prod

from derive.basis.partitions import set_partitions
from derive.weightspace.model import Scaling, TensorSpec, WeightSpaceSpec

__all__ = [
    "Block",
    "BasisMap",
    "BlockBasis",
    "LinearBasis",
    "enumerate_block",
    "linear_basis",
    "block_key",
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


@dataclass(frozen=True)
class LinearBasis:
    """The complete equivariant linear basis of a weight space, block by block."""

    space: WeightSpaceSpec
    blocks: tuple[BlockBasis, ...]
    constants: tuple[BlockBasis, ...]
    invariants: tuple[BlockBasis, ...]

    @property
    def dim(self) -> int:
        """Dimension of equivariant linear maps for one input and one output channel."""
        return sum(block.dim for block in self.blocks)

    @property
    def constant_dim(self) -> int:
        return sum(block.dim for block in self.constants)

    @property
    def invariant_dim(self) -> int:
        return sum(block.dim for block in self.invariants)

    @property
    def num_maps(self) -> int:
        return sum(len(block.maps) for block in self.blocks)

    @cached_property
    def by_key(self) -> dict[str, BlockBasis]:
        return {b.key: b for b in (*self.blocks, *self.constants, *self.invariants)}

    def __str__(self) -> str:
        return (
            f"LinearBasis of {self.space.name}: dimension {self.dim} per channel pair in "
            f"{self.num_maps} maps over {len(self.blocks)} blocks; {self.constant_dim} "
            f"constants; {self.invariant_dim} invariant functionals"
        )

    def __repr__(self) -> str:
        return f"<{self}>"


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


def _positions(
    space: WeightSpaceSpec, tensor: TensorSpec | None
) -> tuple[dict[str, list[int]], list[int]]:
    """Per permuted space, the axis positions carrying it; and the fixed axis positions."""
    by_space: dict[str, list[int]] = {}
    fixed: list[int] = []
    if tensor is None:
        return by_space, fixed
    for position, axis in enumerate(tensor.axes):
        if space.is_fixed_axis(axis):
            fixed.append(position)
        else:
            by_space.setdefault(axis.space, []).append(position)
    return by_space, fixed


def enumerate_block(
    space: WeightSpaceSpec, output: TensorSpec | None, input: TensorSpec | None
) -> tuple[BasisMap, ...]:
    """Every equivariant map ``output <- input`` (None: constant or invariant functional)."""
    out_pos, out_fixed = _positions(space, output)
    in_pos, in_fixed = _positions(space, input)
    names = list(dict.fromkeys([*out_pos, *in_pos]))
    per_space: list[list[tuple[Block, ...]]] = []
    for name in names:
        neuron_space = space.space(name)
        outs = out_pos.get(name, [])
        ins = in_pos.get(name, [])
        assert output is not None or not outs
        out_chars = tuple(output.axes[p].character for p in outs) if output else ()
        in_chars = tuple(input.axes[p].character for p in ins) if input else ()
        options = []
        for pattern in _space_patterns(
            neuron_space.scaling, neuron_space.size, out_chars, in_chars
        ):
            options.append(
                tuple(
                    Block(name, tuple(outs[s] for s in o), tuple(ins[s] for s in i))
                    for o, i in pattern
                )
            )
        if not options:
            return ()
        per_space.append(options)
    sizes_out = [space.space(output.axes[p].space).size for p in out_fixed] if output else []
    sizes_in = [space.space(input.axes[p].space).size for p in in_fixed] if input else []
    num_params = prod(sizes_out) * prod(sizes_in)
    maps = []
    for combo in itertools.product(*per_space):
        blocks = tuple(sorted((b for group in combo for b in group), key=_block_order))
        maps.append(
            BasisMap(
                output=output.name if output else None,
                input=input.name if input else None,
                blocks=blocks,
                out_fixed=tuple(out_fixed),
                in_fixed=tuple(in_fixed),
                num_params=num_params,
            )
        )
    return tuple(maps)


def _block_order(block: Block) -> tuple[int, int, int]:
    """Blocks ordered by first output position, then first input position."""
    first_out = block.outputs[0] if block.outputs else 1 << 30
    first_in = block.inputs[0] if block.inputs else 1 << 30
    return (0 if block.outputs else 1, first_out, first_in)


def linear_basis(
    space: WeightSpaceSpec, tensors: Sequence[TensorSpec] | None = None
) -> LinearBasis:
    """The complete basis for every block, the constants and the invariant functionals."""
    chosen = tuple(tensors) if tensors is not None else space.tensors
    blocks = tuple(
        BlockBasis(t.name, s.name, enumerate_block(space, t, s)) for t in chosen for s in chosen
    )
    constants = tuple(BlockBasis(t.name, None, enumerate_block(space, t, None)) for t in chosen)
    invariants = tuple(BlockBasis(None, s.name, enumerate_block(space, None, s)) for s in chosen)
    return LinearBasis(space=space, blocks=blocks, constants=constants, invariants=invariants)
