"""The tracer's state: labels of traced values, records of spaces and parameters (with
union-find ties), and the typed weight space assembled from them at the end of the walk."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch.fx as fx
from torch import nn

from derive.errors import SpecError
from derive.frontend import trace_ops as ops
from derive.weightspace.model import Scaling

__all__ = ["Label", "WalkState", "describe", "flat_args", "shape_of", "where_of"]


@dataclass
class _SpaceRecord:
    """A neuron space met while tracing (several records may be tied into one space)."""

    key: int
    size: int
    origin: str
    activations: list[tuple[str, str]] = field(default_factory=list)  # (activation, where)
    constraints: list[tuple[Scaling, str]] = field(default_factory=list)  # (allowed, why)
    ties: list[str] = field(default_factory=list)
    is_input: bool = False
    is_output: bool = False
    #: the fixed space this record turned out to be (a token axis a layer wrote, added to the
    #: fixed token positions), or None
    fixed: str | None = None
    #: where the space sorts among the others (creation order; parts after their whole's place)
    order: tuple[int, ...] = ()
    #: the parts this space was split into, in channel order (a grouped convolution or a
    #: channel split reads only some of its channels); empty while it is whole
    children: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _ParamRecord:
    """A parameter or buffer of a traced layer, as axis labels.

    ``axes`` are ``(space key, character)`` for neuron axes and ``(fixed space name, 0)`` for
    kernel axes and flattened or spatial positions.
    """

    module: str
    attr: str
    kind: str  # weight | bias | buffer
    layer: int
    axes: tuple[tuple[int | str, int], ...]
    shape: tuple[int, ...]
    #: per axis, where a neuron axis sits in the state-dict entry: ``(dim, start, unit,
    #: step)``, its k-th neuron at entries ``start + k * step * unit`` to ``+ unit`` of ``dim``
    #: (``unit`` > 1 when positions are flattened behind it); None for fixed axes
    places: tuple[tuple[int, int, int, int] | None, ...] = ()

    @property
    def source_key(self) -> str:
        return f"{self.module}.{self.attr}" if self.module else self.attr


@dataclass(frozen=True)
class Label:
    """The neurons of a traced value: channel space ``space`` and the other ``positions``.

    Unflattened values have the channel axis at ``1 + channel_axis`` of their shape and the
    positions in the other non-batch axes, in order: ``(B, n_space, *positions)`` for
    channels-first maps, ``(B, *positions, n_space)`` for channels-last ones (tokens).
    Flattened ones are ``(B, n_space * prod(positions))`` with the channel as the slow index.
    ``copies``: every position holds the same value (a pool that spread one position over many,
    e.g. an adaptive average pool of a 1x1 map to 7x7), so permuting the positions is a
    symmetry.
    """

    space: int
    positions: tuple[int, ...]
    flat: bool = False
    copies: bool = False
    #: a concatenation along the channel axis: the spaces of its parts, in order (then
    #: ``space`` is the first); empty for one space
    parts: tuple[int, ...] = ()
    #: where the channel axis sits among the non-batch axes (0: channels first)
    channel_axis: int = 0
    #: per position axis, the neuron space a layer acting on that axis wrote (token mixing),
    #: or None for fixed spatial or token positions; empty when every position axis is fixed
    axis_spaces: tuple[int | None, ...] = ()
    #: per member, ``(start, step)``: its k-th neuron is channel ``start + k * step`` (after a
    #: channel shuffle); empty when the members lie one after another
    strides: tuple[tuple[int, int], ...] = ()
    #: ``(groups, per_group, swapped)`` while the channel axis is viewed as two axes (the
    #: middle of a channel shuffle), else None
    shuffle: tuple[int, int, bool] | None = None

    @property
    def members(self) -> tuple[int, ...]:
        """The spaces along the channel axis, in order."""
        return self.parts or (self.space,)

    @property
    def position_spaces(self) -> tuple[int | None, ...]:
        """Per position axis, its neuron space or None (fixed)."""
        return self.axis_spaces or (None,) * len(self.positions)

    @property
    def all_spaces(self) -> tuple[int, ...]:
        """Every neuron space the value's entries are indexed by."""
        return (*self.members, *(k for k in self.position_spaces if k is not None))

    @property
    def plain(self) -> bool:
        """Channels first with fixed positions: the layout convolutions and pools read."""
        return self.channel_axis == 0 and not any(k is not None for k in self.axis_spaces)

    def layout(self) -> list[int | None]:
        """Per non-batch axis: ``-1`` for the channel axis, else its position's space or None."""
        axes: list[int | None] = list(self.position_spaces)
        axes.insert(self.channel_axis, -1)
        return axes


def where_of(node: fx.Node) -> str:
    """The module path of a node, for messages."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        return str(next(reversed(stack)))
    return "the top-level forward"


def describe(node: fx.Node, module: nn.Module | None = None) -> str:
    if module is not None:
        return f"{type(module).__name__} at '{node.target}'"
    return f"{ops.target_name(node.target)} in '{where_of(node)}' (fx node {node.name})"


def shape_of(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(n) for n in shape) if shape is not None else None


def _axis_dims(shape: Sequence[int], sizes: Sequence[int]) -> list[tuple[int, int]]:
    """Per axis of sizes ``sizes``, the dim of ``shape`` it lies in and the entries each of its
    indices spans there (axes flattened into one dim: the later ones are the fast index; dims
    of size 1 that no axis fills are broadcast dims)."""
    out: list[tuple[int, int]] = []
    dim, j = 0, 0
    while j < len(sizes):
        while dim < len(shape) and shape[dim] == 1 and sizes[j] != 1:
            dim += 1
        if dim == len(shape):
            raise ValueError(f"axes of sizes {list(sizes)} do not fit the shape {list(shape)}")
        group, product = [j], sizes[j]
        j += 1
        while product < shape[dim] and j < len(sizes):
            group.append(j)
            product *= sizes[j]
            j += 1
        if product != shape[dim]:
            raise ValueError(f"axes of sizes {list(sizes)} do not fit the shape {list(shape)}")
        for index in range(len(group)):
            out.append((dim, math.prod(sizes[k] for k in group[index + 1 :])))
        dim += 1
    return out


def flat_args(value: Any) -> Iterator[Any]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from flat_args(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from flat_args(item)
    else:
        yield value


class WalkState:
    """What the walk has found so far, and the bookkeeping every rule uses."""

    def __init__(self, root: nn.Module, where: str) -> None:
        self.root = root
        self.where = where
        self.modules = dict(root.named_modules())
        self.labels: dict[fx.Node, Label] = {}
        #: nodes that return several values (chunk, split) -> their labels
        self.tuples: dict[fx.Node, list[Label]] = {}
        #: nn.MultiheadAttention calls: their tuple holds the output; index 1 (the attention
        #: weights) is refused where it is read
        self.attention: set[fx.Node] = set()
        self.spaces: dict[int, _SpaceRecord] = {}
        self.parent: dict[int, int] = {}
        #: per key, whether its neurons scale inversely to its parent's (a key tied to a query
        #: by ``q . k``: its axes' characters are negated in the weight space)
        self.flip: dict[int, bool] = {}
        self.members: dict[int, list[int]] = {}  # union-find root -> the keys tied to it
        self.stale = False  # spaces were split since the labels were last brought up to date
        self.params: list[_ParamRecord] = []
        self.fixed: dict[str, tuple[int, str]] = {}
        self.replicated: set[str] = set()  # fixed spaces whose positions are copies
        # per layer node: (parameter index, axis position) of its output-row axes, so that a
        # BatchNorm reading it alone can take the scaling of its output (see batch_norm)
        self.rows: dict[fx.Node, list[tuple[int, int]]] = {}
        self.called: set[str] = set()
        #: nodes that are a parameter or buffer, or a reshaped view of one -> its target
        self.param_views: dict[fx.Node, str] = {}
        #: attention operations: (where, per head (query/key keys, value keys)), for
        #: the head blocks of the weight space (whole-head permutations)
        self.head_blocks: list[tuple[str, list[tuple[tuple[int, ...], tuple[int, ...]]]]] = []
        self.layer = 0
        self.input_key = -1
        self.output_key = -1

    # -- errors and bookkeeping ---------------------------------------------------------
    def fail(self, node: fx.Node, message: str, module: nn.Module | None = None) -> SpecError:
        return SpecError(f"{describe(node, module)}: {message}", self.where)

    def new_space(self, size: int, origin: str, order: tuple[int, ...] = ()) -> int:
        key = len(self.spaces)
        self.spaces[key] = _SpaceRecord(key, size, origin, order=order or (key,))
        self.parent[key] = key
        self.flip[key] = False
        self.members[key] = [key]
        return key

    # -- parts of spaces ----------------------------------------------------------------
    def leaves(self, key: int) -> list[int]:
        """The whole spaces ``key`` consists of now, in channel order (itself unless split)."""
        children = self.spaces[key].children
        return [leaf for child in children for leaf in self.leaves(child)] if children else [key]

    def size_of(self, key: int) -> int:
        return self.spaces[key].size

    def split(self, leaf: int, offset: int, why: str) -> None:
        """Split a whole space at ``offset`` into two spaces (every space tied to it splits the
        same way, and the parts stay tied). Labels are brought up to date by :meth:`refresh`
        (labels in hand by :meth:`resolve`)."""
        root = self.root_of(leaf)
        size = self.spaces[root].size
        assert 0 < offset < size and not self.spaces[leaf].children
        if self.spaces[root].is_input or self.spaces[root].is_output:
            end = "input" if self.spaces[root].is_input else "output"
            raise SpecError(
                f"{why} splits the network {end}'s channels into parts; not supported", self.where
            )
        members = [
            k for k in self.spaces if not self.spaces[k].children and self.root_of(k) == root
        ]
        members.sort(key=lambda k: k != root)
        whole = self.spaces[root]
        firsts: list[int] = []
        for member in members:
            record = self.spaces[member]
            flipped = self.flipped(member)
            for index, (lo, hi) in enumerate(((0, offset), (offset, size))):
                child = self.new_space(
                    hi - lo,
                    f"{record.origin} [channels {lo}:{hi}, {why}]",
                    order=(*record.order, index),
                )
                record.children.append(child)
                if member == root:
                    part = self.spaces[child]
                    part.activations = list(whole.activations)
                    part.constraints = list(whole.constraints)
                    part.ties = list(whole.ties)
                    part.is_input, part.is_output = whole.is_input, whole.is_output
                    part.fixed = whole.fixed
                    firsts.append(child)
                else:
                    self.parent[child] = firsts[index]
                    self.flip[child] = flipped
                    self.members[firsts[index]] += self.members.pop(child)
        self.stale = True

    def refresh(self) -> None:
        """Bring every label up to date after spaces were split (once per node of the walk)."""
        if self.stale:
            for node, label in self.labels.items():
                self.labels[node] = self.resolve(label)
            for node, labels in self.tuples.items():
                self.tuples[node] = [self.resolve(label) for label in labels]
            self.stale = False

    def cut(self, key: int, offset: int, why: str) -> None:
        """Make ``offset`` (in ``key``'s channel order) a boundary between whole spaces."""
        start = 0
        for leaf in self.leaves(key):
            size = self.size_of(leaf)
            if start < offset < start + size:
                self.split(leaf, offset - start, why)
                return
            start += size

    def segments(self, x: Label) -> list[tuple[int, int, int]]:
        """``(whole space, start, step)`` of every part of the channel axis: its k-th neuron is
        channel ``start + k * step``."""
        out: list[tuple[int, int, int]] = []
        position = 0
        for index, key in enumerate(x.members):
            start, step = x.strides[index] if x.strides else (position, 1)
            offset = 0
            for leaf in self.leaves(key):
                out.append((leaf, start + offset * step, step))
                offset += self.size_of(leaf)
            position += offset
        return out

    def resolve(self, x: Label) -> Label:
        """``x`` with every split member replaced by its parts."""
        if not any(self.spaces[key].children for key in x.members):
            return x
        return self.with_segments(x, self.segments(x))

    def with_segments(self, x: Label, segments: list[tuple[int, int, int]]) -> Label:
        keys = tuple(key for key, _, _ in segments)
        position, contiguous = 0, True
        for key, start, step in segments:
            contiguous &= start == position and step == 1
            position += self.size_of(key)
        strides = () if contiguous else tuple((start, step) for _, start, step in segments)
        return replace(x, space=keys[0], parts=keys if len(keys) > 1 else (), strides=strides)

    def cut_at(self, x: Label, bounds: Sequence[int], why: str) -> Label:
        """Split the spaces of ``x`` so that no part has neurons on both sides of any channel
        position in ``bounds``; returns ``x`` brought up to date."""
        for bound in bounds:
            for key, start, step in self.segments(self.resolve(x)):
                inside = -(-(bound - start) // step)  # neurons before the bound
                if 0 < inside < self.size_of(key):
                    self.cut(key, inside, why)
        return self.resolve(x)

    def select(self, x: Label, lo: int, hi: int, why: str) -> Label:
        """The channels ``lo:hi`` of ``x`` (a chunk, one group of a grouped convolution):
        spaces that straddle the bounds are split first."""
        x = self.cut_at(x, (lo, hi), why)
        chosen = [
            (key, start - lo, step) for key, start, step in self.segments(x) if lo <= start < hi
        ]
        return self.with_segments(replace(x, parts=(), strides=()), chosen)

    def root_of(self, key: int) -> int:
        return self.find(key)[0]

    def flipped(self, key: int) -> bool:
        """Whether ``key``'s neurons scale inversely to those of the space it is tied to."""
        return self.find(key)[1]

    def find(self, key: int) -> tuple[int, bool]:
        """The union-find root of ``key`` and whether ``key`` is flipped relative to it (the
        path is compressed on the way)."""
        path = []
        root = key
        while self.parent[root] != root:
            path.append(root)
            root = self.parent[root]
        for node in reversed(path):  # nearest the root first: its parent is compressed already
            above = self.parent[node]
            self.flip[node] ^= above != root and self.flip[above]
            self.parent[node] = root
        return root, bool(path) and self.flip[key]

    def record(self, key: int) -> _SpaceRecord:
        return self.spaces[self.root_of(key)]

    def tie(self, a: int, b: int, why: str, inverse: bool = False) -> None:
        """Make two spaces one (split ones part by part, splitting the other to match).
        ``inverse``: neuron i of ``b`` scales by the inverse of neuron i of ``a``'s factor (a
        key tied to a query by ``q . k``); tied both ways, only sign flips pass."""
        if self.spaces[a].children or self.spaces[b].children:
            for offset in itertools.accumulate(self.size_of(k) for k in self.leaves(a)):
                self.cut(b, offset, why)
            for offset in itertools.accumulate(self.size_of(k) for k in self.leaves(b)):
                self.cut(a, offset, why)
            for leaf_a, leaf_b in zip(self.leaves(a), self.leaves(b), strict=True):
                self.tie(leaf_a, leaf_b, why, inverse)
            return
        (ra, fa), (rb, fb) = self.find(a), self.find(b)
        if ra == rb:
            if fa ^ fb != inverse:
                self.spaces[ra].constraints.append(
                    (Scaling.SIGN, f"{why} ties the space to itself with inverse factors")
                )
            return
        first, second = sorted((ra, rb))
        self.parent[second] = first
        self.flip[second] = fa ^ fb ^ inverse
        self.members[first] += self.members.pop(second)
        keep, gone = self.spaces[first], self.spaces[second]
        keep.activations += gone.activations
        keep.constraints += gone.constraints
        keep.ties += [*gone.ties, f"{gone.origin} (tied by {why})"]
        keep.is_input |= gone.is_input
        keep.is_output |= gone.is_output
        keep.fixed = keep.fixed or gone.fixed

    def fix(self, key: int, why: str) -> None:
        """Make a space fixed: a token axis a layer wrote that meets fixed positions (its
        parameters' axes on it become the fixed space of its size)."""
        record = self.record(key)
        if record.fixed is None and not (record.is_input or record.is_output):
            record.fixed = self.fixed_space("x", record.size, f"positions ({why})")

    def fixed_space(self, prefix: str, size: int, what: str) -> str:
        name = f"{prefix}{size}"
        self.fixed.setdefault(name, (size, what))
        return name

    def add_param(
        self,
        module_path: str,
        attr: str,
        kind: str,
        axes: list[tuple[int | str, int]],
        part: dict[int, tuple[int, int, int]] | None = None,
    ) -> None:
        """Record a parameter. ``part``: when it is one part of the entry (a layer reading a
        concatenation, one group of a grouped convolution), per sliced dim ``(start, step,
        count)`` (``count`` entries from ``start`` every ``step``)."""
        value = getattr(self.modules[module_path], attr)
        shape = tuple(int(n) for n in value.shape)
        part = part or {}
        extent = [part[d][2] if d in part else n for d, n in enumerate(shape)]
        sizes = [self.axis_size(space) for space, _ in axes]
        places: list[tuple[int, int, int, int] | None] = []
        for (space, _), (dim, unit) in zip(axes, _axis_dims(extent, sizes)):
            start, step, _ = part.get(dim, (0, 1, 0))
            places.append(None if isinstance(space, str) else (dim, start, unit, step))
        self.params.append(
            _ParamRecord(
                module=module_path,
                attr=attr,
                kind=kind,
                layer=self.layer,
                axes=tuple(axes),
                shape=shape,
                places=tuple(places),
            )
        )

    def parts_of(
        self, x: Label, dim: int, unit: int = 1
    ) -> list[tuple[int, dict[int, tuple[int, int, int]] | None]]:
        """Per part of the channel axis, its space and the ``part`` of a parameter whose
        ``dim`` holds the channels (``unit`` entries per channel); None for one whole space."""
        segments = self.segments(x)
        if len(segments) == 1 and segments[0][1:] == (0, 1):
            return [(segments[0][0], None)]
        out: list[tuple[int, dict[int, tuple[int, int, int]] | None]] = []
        for key, start, step in segments:
            assert unit == 1 or step == 1, "strided channels with positions flattened behind"
            out.append((key, {dim: (start * unit, step, self.size_of(key) * unit)}))
        return out

    def axis_size(self, space: int | str) -> int:
        return self.fixed[space][0] if isinstance(space, str) else self.size_of(space)

    def channels(self, x: Label) -> int:
        return sum(self.size_of(key) for key in x.members)

    def constrain(self, x: Label, scaling: Scaling, why: str) -> None:
        """Record what scaling passes on every space the value's entries are indexed by."""
        for key in dict.fromkeys(self.root_of(k) for k in x.all_spaces):
            self.spaces[key].constraints.append((scaling, why))

    def label(self, node: fx.Node, value: Any, what: str) -> Label:
        if isinstance(value, fx.Node) and value in self.labels:
            return self.labels[value]
        raise self.fail(node, f"{what} does not come from the network input")

    def tensor_args(self, node: fx.Node) -> list[fx.Node]:
        return [
            a
            for a in flat_args((node.args, node.kwargs))
            if isinstance(a, fx.Node) and a in self.labels
        ]

    def check_attrs(self, node: fx.Node) -> bool:
        """Follow parameters through reshapes (True: ``node`` is such a view, nothing more to
        do); refuse them anywhere but the operations that read them (products, additions,
        addcmul, functional norms)."""
        args = list(flat_args((node.args, node.kwargs)))
        first = node.args[0] if node.args else None
        if (
            isinstance(first, fx.Node)
            and first in self.param_views
            and not self.tensor_args(node)
            and ops.is_view(node)
        ):
            self.param_views[node] = self.param_views[first]
            return True
        if ops.reads_parameters(node):
            return False
        views = [a for a in args if isinstance(a, fx.Node) and a in self.param_views]
        if views and not self.tensor_args(node) and not any(self.is_parameter(a) for a in views):
            return True  # computed from buffers alone (a mask): a constant, it meets no group
        if node.op == "call_module" and isinstance(
            self.modules.get(str(node.target)), nn.MultiheadAttention
        ):
            args = [node.kwargs.get(name) for name in ("query", "key", "value")]
            args += node.args[:3]  # masks may be buffers: they do not meet the group
        for arg in args:
            if isinstance(arg, fx.Node) and arg in self.param_views:
                raise self.fail(
                    node,
                    f"uses the parameter or buffer '{self.param_views[arg]}' directly; only "
                    "parameters of nn.Linear, nn.Conv1d/2d/3d, BatchNorm and LayerNorm modules, "
                    "and per-channel parameters multiplied or added, are supported",
                )
        return False

    def is_parameter(self, view: fx.Node) -> bool:
        """Whether a node viewing a parameter or buffer views a parameter."""
        module_path, _, attr = self.param_views[view].rpartition(".")
        module = self.modules.get(module_path)
        return isinstance(getattr(module, attr, None), nn.Parameter)

    def vector_size(self, label: Label) -> int:
        return self.channels(label) * math.prod(label.positions)
