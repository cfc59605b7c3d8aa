"""The tracer's state: labels of traced values, records of spaces and parameters (with
union-find ties), and the typed weight space assembled from them at the end of the walk."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
from torch import nn

from derive.errors import SpecError
from derive.frontend import trace_ops as ops
from derive.weightspace.model import Axis, NeuronSpace, Role, Scaling, TensorSpec, WeightSpaceSpec

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
    source_slice: tuple[int, int, int] | None = None

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
        self.spaces: dict[int, _SpaceRecord] = {}
        self.parent: dict[int, int] = {}
        self.params: list[_ParamRecord] = []
        self.fixed: dict[str, tuple[int, str]] = {}
        self.replicated: set[str] = set()  # fixed spaces whose positions are copies
        # per layer node: (parameter index, axis position) of its output-row axes, so that a
        # BatchNorm reading it alone can take the scaling of its output (see batch_norm)
        self.rows: dict[fx.Node, list[tuple[int, int]]] = {}
        self.called: set[str] = set()
        #: nodes that are a parameter or buffer, or a reshaped view of one -> its target
        self.param_views: dict[fx.Node, str] = {}
        self.layer = 0
        self.input_key = -1
        self.output_key = -1

    # -- the result ---------------------------------------------------------------------
    def weight_space(self, name: str) -> WeightSpaceSpec:
        """The typed weight space of what the walk found (no group yet)."""
        roots = sorted({self.root_of(key) for key in self.spaces})
        names: dict[int, str] = {
            root: fixed for root in roots if (fixed := self.spaces[root].fixed) is not None
        }
        roots = [root for root in roots if root not in names]
        spaces: list[NeuronSpace] = []
        hidden = 0
        for root in roots:
            record = self.spaces[root]
            role: Role
            if record.is_input:
                names[root], role = "in", "input"
            elif record.is_output:
                names[root], role = "out", "output"
            else:
                hidden += 1
                names[root], role = f"h{hidden}", "hidden"
            spaces.append(
                NeuronSpace(
                    names[root],
                    record.size,
                    role=role,
                    origin=record.origin,
                    ties=tuple(record.ties),
                    activations=tuple(record.activations),
                    constraints=tuple(record.constraints),
                )
            )
        for fixed, (size, what) in sorted(self.fixed.items()):
            kind: Role = "replicated" if fixed in self.replicated else "fixed"
            spaces.append(NeuronSpace(fixed, size, role=kind, origin=what))
        tensors: list[TensorSpec] = []
        buffers: list[TensorSpec] = []
        for param in self.params:
            axes = tuple(self._axis(space, character, names) for space, character in param.axes)
            if param.kind == "buffer":  # named by its state-dict key (unique, never a feature)
                tensor_name = param.source_key
                if param.source_slice is not None:
                    tensor_name += "[{1}:{2}]".format(*param.source_slice)
            else:
                tensor_name = f"{'W' if param.kind == 'weight' else 'b'}{param.layer}"
            (buffers if param.kind == "buffer" else tensors).append(
                TensorSpec(
                    name=tensor_name,
                    kind=param.kind,
                    layer=param.layer,
                    axes=axes,
                    source_key=param.source_key,
                    source_shape=param.shape,
                    source_slice=param.source_slice,
                )
            )
        return WeightSpaceSpec(
            name=name,
            spaces=tuple(spaces),
            tensors=tuple(tensors),
            buffers=tuple(buffers),
            source=self.where,
        )

    def _axis(self, space: int | str, character: int, names: dict[int, str]) -> Axis:
        if isinstance(space, str):
            return Axis(space, character)
        root = self.root_of(space)
        return Axis(names[root], 0 if self.spaces[root].fixed else character)

    # -- errors and bookkeeping ---------------------------------------------------------
    def fail(self, node: fx.Node, message: str, module: nn.Module | None = None) -> SpecError:
        return SpecError(f"{describe(node, module)}: {message}", self.where)

    def new_space(self, size: int, origin: str) -> int:
        key = len(self.spaces)
        self.spaces[key] = _SpaceRecord(key, size, origin)
        self.parent[key] = key
        return key

    def root_of(self, key: int) -> int:
        while self.parent[key] != key:
            key = self.parent[key]
        return key

    def record(self, key: int) -> _SpaceRecord:
        return self.spaces[self.root_of(key)]

    def tie(self, a: int, b: int, why: str) -> None:
        ra, rb = self.root_of(a), self.root_of(b)
        if ra == rb:
            return
        first, second = sorted((ra, rb))
        self.parent[second] = first
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
        part: tuple[int, int, int] | None = None,
    ) -> None:
        """Record a parameter (``part``: its slice ``(dim, start, stop)`` when it is one part
        of the entry, for a layer reading a concatenation)."""
        value = getattr(self.modules[module_path], attr)
        self.params.append(
            _ParamRecord(
                module=module_path,
                attr=attr,
                kind=kind,
                layer=self.layer,
                axes=tuple(axes),
                shape=tuple(int(n) for n in value.shape),
                source_slice=part,
            )
        )

    def part_ranges(self, x: Label, scale: int = 1) -> list[tuple[int, int, int]]:
        """``(space, start, stop)`` of every part along the channel axis (in units of
        ``scale`` entries per channel)."""
        out, start = [], 0
        for key in x.members:
            size = self.record(key).size * scale
            out.append((key, start, start + size))
            start += size
        return out

    def channels(self, x: Label) -> int:
        return sum(self.record(key).size for key in x.members)

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
        for arg in args:
            if isinstance(arg, fx.Node) and arg in self.param_views:
                raise self.fail(
                    node,
                    f"uses the parameter or buffer '{self.param_views[arg]}' directly; only "
                    "parameters of nn.Linear, nn.Conv1d/2d/3d, BatchNorm and LayerNorm modules, "
                    "and per-channel parameters multiplied or added, are supported",
                )
        return False

    def vector_size(self, label: Label) -> int:
        return self.channels(label) * math.prod(label.positions)
