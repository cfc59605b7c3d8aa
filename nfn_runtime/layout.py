"""Plain description of a weight space: neuron spaces, tensors and their axis labels.

The layout is the runtime's view of what ``derive`` computed: it holds no sympy and no
torch objects, so generated modules can embed it as a literal. Every tensor is a list of
axis labels; each axis names the neuron space it indexes and carries a scaling character
(+1 for a row or bias axis, -1 for a column axis, 0 for an axis no scaling touches).
A space that is neither permuted nor scaled is a fixed axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

#: the entries of a state-dict entry one tensor holds: ``(dim, start, stop, step)`` per sliced
#: dim (a layer reading a concatenation or a channel split has one tensor per part)
SourceSlice = tuple[tuple[int, int, int, int], ...]

__all__ = [
    "SourceSlice",
    "SCALING_KINDS",
    "AxisLayout",
    "HeadsLayout",
    "ScalingKind",
    "SpaceLayout",
    "TensorLayout",
    "WeightSpaceLayout",
]

ScalingKind = Literal["none", "sign", "positive", "nonzero"]
SCALING_KINDS: tuple[ScalingKind, ...] = ("none", "sign", "positive", "nonzero")


@dataclass(frozen=True)
class SpaceLayout:
    """A neuron space: ``size`` neurons, permuted or not, with the scaling its activation allows."""

    name: str
    size: int
    permuted: bool
    scaling: ScalingKind = "none"

    def __post_init__(self) -> None:
        if self.scaling not in SCALING_KINDS:
            raise ValueError(f"space {self.name!r}: unknown scaling {self.scaling!r}")
        if self.size < 1:
            raise ValueError(f"space {self.name!r}: size must be positive, got {self.size}")

    @property
    def is_fixed(self) -> bool:
        """True when no group element moves this axis."""
        return not self.permuted and self.scaling == "none"


@dataclass(frozen=True)
class AxisLayout:
    """One tensor axis: the space it indexes and its scaling character."""

    space: str
    character: int


@dataclass(frozen=True)
class TensorLayout:
    """One tensor of the weight space.

    ``kind`` and ``layer`` place it in :class:`nfn_runtime.WeightSpace`
    (``weights[layer - 1]`` or ``biases[layer - 1]``); a ``buffer`` (e.g. BatchNorm running
    statistics) is not a feature but is acted on by the group. ``source_key`` and ``source_shape``
    name the matching entry of the network's ``state_dict`` (whose shape may be a reshape of
    the axis shape, e.g. a linear layer after ``flatten``).
    """

    name: str
    kind: Literal["weight", "bias", "buffer"]
    layer: int
    axes: tuple[AxisLayout, ...]
    source_key: str = ""
    source_shape: tuple[int, ...] = ()
    #: the slices ``(dim, start, stop, step)`` when the tensor is one part of its state-dict
    #: entry (a layer reading a concatenation, a grouped convolution, a channel split has one
    #: tensor per part); ``source_shape`` is the whole entry's
    source_slice: SourceSlice | None = None

    def part_shape(self) -> tuple[int, ...]:
        """The shape of the tensor's entries in the state dict (its slice, if any)."""
        shape = list(self.source_shape)
        for dim, start, stop, step in self.source_slice or ():
            shape[dim] = len(range(start, stop, step))
        return tuple(shape)

    def source_index(self) -> tuple[slice, ...]:
        """The index of the tensor's entries in its state-dict entry."""
        index = [slice(None)] * len(self.source_shape)
        for dim, start, stop, step in self.source_slice or ():
            index[dim] = slice(start, stop, step)
        return tuple(index)


@dataclass(frozen=True)
class HeadsLayout:
    """The heads of one attention operation, permuted as wholes by the group.

    ``spaces[h]`` are head ``h``'s spaces and ``tensors[h]`` its tensors and buffers; entry
    ``k`` of every head corresponds (the same size, scaling, kind and axes up to the head's
    spaces). Moving head ``h`` to head ``h'`` moves each of its spaces' permutation and scales
    and each of its tensors' entries to entry ``k`` of head ``h'``.
    """

    spaces: tuple[tuple[str, ...], ...]
    tensors: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.spaces) != len(self.tensors) or len(self.spaces) < 2:
            raise ValueError("HeadsLayout needs the spaces and tensors of at least two heads")
        for field_name, entries in (("spaces", self.spaces), ("tensors", self.tensors)):
            if len({len(entry) for entry in entries}) != 1:
                raise ValueError(f"HeadsLayout: every head needs as many {field_name}")

    @property
    def count(self) -> int:
        """The number of heads."""
        return len(self.spaces)


@dataclass(frozen=True)
class WeightSpaceLayout:
    """All spaces and tensors of one weight space, in a fixed order.

    ``buffers`` are network state the group acts on (running statistics) but no layer reads.
    ``heads`` lists the attention heads the group permutes as wholes (empty without attention).
    """

    spaces: tuple[SpaceLayout, ...]
    tensors: tuple[TensorLayout, ...]
    buffers: tuple[TensorLayout, ...] = ()
    heads: tuple[HeadsLayout, ...] = ()

    def __post_init__(self) -> None:
        names = {space.name for space in self.spaces}
        for tensor in (*self.tensors, *self.buffers):
            if (tensor.kind == "buffer") != (tensor in self.buffers):
                raise ValueError(f"tensor {tensor.name!r}: buffers go in 'buffers', only there")
            for axis in tensor.axes:
                if axis.space not in names:
                    raise ValueError(f"tensor {tensor.name!r} names unknown space {axis.space!r}")
        tensor_names = {t.name for t in (*self.tensors, *self.buffers)}
        for block in self.heads:
            for space in (s for head in block.spaces for s in head):
                if space not in names:
                    raise ValueError(f"heads name unknown space {space!r}")
            for tensor_name in (t for head in block.tensors for t in head):
                if tensor_name not in tensor_names:
                    raise ValueError(f"heads name unknown tensor {tensor_name!r}")
        # lookup tables built here, not lazily: a cached_property's lock cannot be entered
        # inside torch.compile (generated layers look shapes up in forward)
        object.__setattr__(self, "_spaces_by_name", {space.name: space for space in self.spaces})
        object.__setattr__(self, "_tensors_by_name", {t.name: t for t in self.tensors})

    _spaces_by_name: dict[str, SpaceLayout] = field(init=False, repr=False, compare=False)
    _tensors_by_name: dict[str, TensorLayout] = field(init=False, repr=False, compare=False)

    def space(self, name: str) -> SpaceLayout:
        """The space called ``name``."""
        return self._spaces_by_name[name]

    def tensor(self, name: str) -> TensorLayout:
        """The tensor called ``name``."""
        return self._tensors_by_name[name]

    def head_entry(self, tensor: str) -> tuple[int, int] | None:
        """``(attention, k)`` when ``tensor`` is entry ``k`` of a head of attention number
        ``attention`` in :attr:`heads` (the tensors that a relabelling of heads moves onto each
        other share it), else None."""
        for block, heads in enumerate(self.heads):
            for names in heads.tensors:
                if tensor in names:
                    return block, names.index(tensor)
        return None

    def shape(self, tensor: TensorLayout | str) -> tuple[int, ...]:
        """Axis sizes of one tensor, without the batch and channel axes."""
        spec = self.tensor(tensor) if isinstance(tensor, str) else tensor
        return tuple(self.space(axis.space).size for axis in spec.axes)

    @property
    def num_layers(self) -> int:
        """Number of weight tensors (the length of ``WeightSpace.weights``)."""
        layers = [t.layer for t in self.tensors if t.kind == "weight"]
        return max(layers) if layers else 0  # (no max(default=): torch.compile traces this)

    @property
    def has_bias(self) -> tuple[bool, ...]:
        """Per layer, whether the layer has a bias tensor."""
        layers = {t.layer for t in self.tensors if t.kind == "bias"}
        return tuple(layer in layers for layer in range(1, self.num_layers + 1))

    def with_source_keys(self, keys: Mapping[str, str]) -> WeightSpaceLayout:
        """The same layout reading other state-dict keys: ``keys`` maps a tensor's name or its
        current ``source_key`` to the key of the user's own model (e.g. ``{"0.weight":
        "fc1.weight"}``); tensors not named keep their keys."""
        known = {t.name for t in (*self.tensors, *self.buffers)}
        known |= {t.source_key for t in (*self.tensors, *self.buffers) if t.source_key}
        unknown = sorted(set(keys) - known)
        if unknown:
            raise ValueError(f"no tensor of the layout is named or read from {unknown[0]!r}")

        def renamed(t: TensorLayout) -> TensorLayout:
            key = keys.get(t.name, keys.get(t.source_key, t.source_key))
            return replace(t, source_key=key)

        return replace(
            self,
            tensors=tuple(renamed(t) for t in self.tensors),
            buffers=tuple(renamed(t) for t in self.buffers),
        )

    def matched_to(self, shapes: Mapping[str, Sequence[int]]) -> WeightSpaceLayout:
        """The same layout reading the entries of a user's ``state_dict`` (or any mapping of
        key -> tensor or shape) whose keys differ from the layout's, e.g. a model with named
        layers or extra modules such as dropout shifting ``nn.Sequential`` indices.

        Keys the layout already reads (with the right shape) are kept; every other tensor and buffer takes, in layout
        order, the next unused key in the mapping's order with the same shape. A ``ValueError``
        names the first tensor that finds none."""
        sizes = {key: tuple(getattr(value, "shape", value)) for key, value in shapes.items()}

        def want(t: TensorLayout) -> tuple[int, ...]:
            return tuple(t.source_shape) or self.shape(t)  # the whole entry, for a part too

        def fits(t: TensorLayout) -> bool:
            return sizes.get(t.source_key) == want(t)

        used = {t.source_key for t in (*self.tensors, *self.buffers) if fits(t)}
        order = [key for key in sizes if key not in used]
        keys: dict[str, str] = {}

        def take(t: TensorLayout, candidates: list[str]) -> str:
            for key in candidates:
                if key not in used and sizes[key] == want(t):
                    used.add(key)
                    keys[t.name] = key
                    return key
            raise ValueError(
                f"no state-dict entry of shape {want(t)} left for tensor {t.name!r} "
                f"(layout key {t.source_key!r})"
            )

        position = 0  # parameters keep their order; buffers may sit anywhere
        for t in self.tensors:
            if not fits(t):
                position = order.index(take(t, order[position:])) + 1
        for t in self.buffers:
            if not fits(t):
                take(t, order)
        return self.with_source_keys(keys)

    def without_heads(self) -> WeightSpaceLayout:
        """The same layout with no whole-head permutations in its group."""
        return replace(self, heads=())

    def num_params(self) -> int:
        """Number of scalar entries in one network of this weight space."""
        total = 0
        for tensor in self.tensors:
            count = 1
            for size in self.shape(tensor):
                count *= size
            total += count
        return total
