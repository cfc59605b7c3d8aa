"""The typed weight-space model that every stage reads (docs/math.md section 1).

The front end builds it (spaces with where they come from and what touches them, tensors with
their state-dict sources, buffers); :mod:`derive.symmetry.group` fills in each space's group;
the basis, plan, codegen and verification stages read it; :meth:`WeightSpaceSpec.to_layout`
emits the runtime's torch-free description and :func:`derive.weightspace.graph.weight_space_graph`
its networkx view.

Every tensor is a tuple of :class:`Axis` labels, each naming the :class:`NeuronSpace` it
indexes and carrying a scaling character (+1 row or bias axis, -1 column axis, 0 an axis
that no scaling touches). A space that is neither permuted nor scaled is a fixed axis; no
layer, group or basis code ever special-cases "first layer" or "last layer".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import Literal

from nfn_runtime.layout import (
    AxisLayout,
    HeadsLayout,
    SourceSlice,
    SpaceLayout,
    TensorLayout,
    WeightSpaceLayout,
)

__all__ = [
    "Scaling",
    "Role",
    "NeuronSpace",
    "Axis",
    "TensorSpec",
    "Head",
    "HeadBlock",
    "WeightSpaceSpec",
    "QUERY_KEY_REASON",
    "VALUE_REASON",
]

#: what the front end says of an attention head's query/key dimensions and of its value
#: dimensions (in ``NeuronSpace.constraints``, after ``head N``); the symmetry report reads them
#: to say which symmetries of attention the monomial group leaves out (docs/math.md 8.6)
QUERY_KEY_REASON = "reads q . k"
VALUE_REASON = "sums values over tokens"

#: what a neuron space is to the network: its input, an inner space, its output, a fixed axis
#: (kernel offsets, spatial or flattened positions), or positions that are copies of one value
#: (permuting them is a symmetry; no scaling of a single copy is)
Role = Literal["input", "hidden", "output", "fixed", "replicated"]


class Scaling(str, Enum):
    """The diagonal scalings a neuron space admits (docs/math.md section 2)."""

    NONE = "none"
    SIGN = "sign"
    POSITIVE = "positive"
    NONZERO = "nonzero"

    def allows_sign(self) -> bool:
        return self in (Scaling.SIGN, Scaling.NONZERO)

    def allows_positive(self) -> bool:
        return self in (Scaling.POSITIVE, Scaling.NONZERO)

    def meet(self, other: Scaling) -> Scaling:
        """The largest scaling allowed by both (what every user of a shared space allows)."""
        sign = self.allows_sign() and other.allows_sign()
        positive = self.allows_positive() and other.allows_positive()
        return _FROM_FLAGS[(sign, positive)]

    def balances(self, exponent: int) -> bool:
        """Whether ``d ** exponent == 1`` for every scale ``d`` of this kind."""
        if self is Scaling.NONE:
            return True
        if self is Scaling.SIGN:
            return exponent % 2 == 0
        return exponent == 0


_FROM_FLAGS = {
    (False, False): Scaling.NONE,
    (True, False): Scaling.SIGN,
    (False, True): Scaling.POSITIVE,
    (True, True): Scaling.NONZERO,
}


@dataclass(frozen=True)
class NeuronSpace:
    """A space of ``size`` neurons: what the front end found, and the group acting on it.

    The front end fills ``role``, ``origin`` (the operation creating the space), ``ties``
    (spaces merged into it, e.g. by a residual addition), ``activations`` (name, where) and
    ``constraints`` (the scaling another operation allows, why). The symmetry stage fills
    ``permuted``, ``scaling`` and ``decided_by`` (the reason, shown by ``inspect``).
    """

    name: str
    size: int
    permuted: bool = False
    scaling: Scaling = Scaling.NONE
    decided_by: str = ""
    role: Role = "hidden"
    origin: str = ""
    ties: tuple[str, ...] = ()
    activations: tuple[tuple[str, str], ...] = ()
    constraints: tuple[tuple[Scaling, str], ...] = ()

    @property
    def is_fixed(self) -> bool:
        """True when no group element moves this axis (it is never partitioned)."""
        return not self.permuted and self.scaling is Scaling.NONE


@dataclass(frozen=True)
class Axis:
    """One tensor axis: the space it indexes and its scaling character."""

    space: str
    character: int


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the weight space, described only by its axis labels."""

    name: str
    kind: str  # "weight", "bias", "buffer" or "virtual"
    layer: int
    axes: tuple[Axis, ...]
    source_key: str = ""
    source_shape: tuple[int, ...] = ()
    #: ``((dim, start, stop, step), ...)``: the tensor is this slice of its state-dict entry
    #: (one part of a layer that reads a concatenation or a channel split, one group of a
    #: grouped convolution); ``source_shape`` is the whole entry's shape
    source_slice: SourceSlice | None = None


@dataclass(frozen=True)
class Head:
    """One attention head: the spaces of its query/key dimensions and of its value dimensions
    (usually one each; several where a head's dimensions were split into parts)."""

    query_key: tuple[str, ...]
    value: tuple[str, ...]

    @property
    def spaces(self) -> tuple[str, ...]:
        """Every space of the head: query/key first, then value."""
        return (*self.query_key, *self.value)


@dataclass(frozen=True)
class HeadBlock:
    """The heads of one attention operation (docs/math.md 8.6), as the front end found them.

    The symmetry stage decides whether relabelling the heads (head ``h`` moved to ``h'``: its
    spaces, and the tensors on them, moved together) is part of the group: ``permuted`` and
    ``decided_by``; ``tensors[h]`` then lists the tensors and buffers of head ``h``, position
    ``k`` of every head's tuple corresponding (the same axes up to the head's spaces).
    """

    where: str
    heads: tuple[Head, ...]
    permuted: bool = False
    decided_by: str = ""
    tensors: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class WeightSpaceSpec:
    """A weight space with its symmetry group: the input of every derivation step.

    ``buffers`` (e.g. BatchNorm running statistics) are acted on by the group like tensors,
    so that a group element maps a network to one computing the same function, but they are
    not features of the weight space (no layer reads or writes them).
    """

    name: str
    spaces: tuple[NeuronSpace, ...]
    tensors: tuple[TensorSpec, ...]
    buffers: tuple[TensorSpec, ...] = ()
    source: str = ""
    #: the symmetry options the group was derived with ("" before the symmetry stage)
    setting: str = ""
    #: the attention heads, per attention operation (empty without attention)
    head_blocks: tuple[HeadBlock, ...] = ()

    @property
    def permuted_heads(self) -> tuple[HeadBlock, ...]:
        """The head blocks whose whole-head permutations are part of the group."""
        return tuple(block for block in self.head_blocks if block.permuted)

    def __str__(self) -> str:
        spaces = ", ".join(f"{s.name}={s.size}" for s in self.spaces)
        tensors = ", ".join(
            f"{t.name}{list(self.shape(t))}" for t in (*self.tensors, *self.buffers)
        )
        return f"WeightSpace {self.name} [{self.setting or 'no group yet'}]: spaces {spaces}; tensors {tensors}"

    def __repr__(self) -> str:
        return f"<{self}>"

    @cached_property
    def _spaces(self) -> dict[str, NeuronSpace]:
        return {space.name: space for space in self.spaces}

    @cached_property
    def _tensors(self) -> dict[str, TensorSpec]:
        return {tensor.name: tensor for tensor in self.tensors}

    def space(self, name: str) -> NeuronSpace:
        return self._spaces[name]

    def tensor(self, name: str) -> TensorSpec:
        return self._tensors[name]

    def shape(self, tensor: TensorSpec) -> tuple[int, ...]:
        return tuple(self.space(axis.space).size for axis in tensor.axes)

    def is_fixed_axis(self, axis: Axis) -> bool:
        return self.space(axis.space).is_fixed

    def to_layout(self) -> WeightSpaceLayout:
        """The torch-free runtime description of this weight space."""

        def tensor_layout(t: TensorSpec, kind: Literal["weight", "bias", "buffer"]) -> TensorLayout:
            return TensorLayout(
                name=t.name,
                kind=kind,
                layer=t.layer,
                axes=tuple(AxisLayout(a.space, a.character) for a in t.axes),
                source_key=t.source_key,
                source_shape=t.source_shape,
                source_slice=t.source_slice,
            )

        return WeightSpaceLayout(
            spaces=tuple(
                SpaceLayout(s.name, s.size, s.permuted, s.scaling.value) for s in self.spaces
            ),
            tensors=tuple(
                tensor_layout(t, "weight" if t.kind == "weight" else "bias") for t in self.tensors
            ),
            buffers=tuple(tensor_layout(t, "buffer") for t in self.buffers),
            heads=tuple(
                HeadsLayout(tuple(h.spaces for h in block.heads), block.tensors)
                for block in self.permuted_heads
            ),
        )
