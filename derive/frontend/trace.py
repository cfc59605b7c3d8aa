"""Capture a PyTorch module with ``torch.fx`` and read off its weight space.

The module is traced symbolically, run once on an example input to learn every shape
(``ShapeProp``), and walked node by node. Every tensor value that carries neurons gets a
:class:`Label`: the neuron space of its channel axis and its fixed spatial positions (or, once
flattened, the positions folded behind the channel). Layers create spaces and record their
parameters as axis labels; activations, pooling and normalizations record what scaling they
allow on the space they touch; additions tie two spaces into one. The result is the typed
weight-space model (:class:`derive.weightspace.model.WeightSpaceSpec`, before the symmetry stage
decides its group). Every spec, an ``--mlp`` shorthand included, comes through here.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from derive.errors import SpecError
from derive.frontend import trace_ops as ops
from derive.weightspace.model import Axis, NeuronSpace, Role, Scaling, TensorSpec, WeightSpaceSpec
from nfn_runtime.architectures import Activation

__all__ = ["Label", "trace_network"]


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
    """The neurons of a traced value: channel space ``space`` and spatial ``positions``.

    Unflattened values have shape ``(B, n_space, *positions)``; flattened ones
    ``(B, n_space * prod(positions))`` with the channel as the slow index. ``copies``: every
    position holds the same value (a pool that spread one position over many, e.g. an adaptive
    average pool of a 1x1 map to 7x7), so permuting the positions is a symmetry.
    """

    space: int
    positions: tuple[int, ...]
    flat: bool = False
    copies: bool = False
    #: a concatenation along the channel axis: the spaces of its parts, in order (then
    #: ``space`` is the first); empty for one space
    parts: tuple[int, ...] = ()

    @property
    def members(self) -> tuple[int, ...]:
        """The spaces along the channel axis, in order."""
        return self.parts or (self.space,)


def _where(node: fx.Node) -> str:
    """The module path of a node, for messages."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        return str(next(reversed(stack)))
    return "the top-level forward"


def _describe(node: fx.Node, module: nn.Module | None = None) -> str:
    if module is not None:
        return f"{type(module).__name__} at '{node.target}'"
    return f"{ops.target_name(node.target)} in '{_where(node)}' (fx node {node.name})"


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(n) for n in shape) if shape is not None else None


def _flat_args(value: Any) -> Iterator[Any]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flat_args(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flat_args(item)
    else:
        yield value


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping named :class:`Activation` modules as single operations."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, Activation) or super().is_leaf_module(m, module_qualified_name)


class _Walker:
    """Applies :mod:`derive.frontend.trace_ops` to every node of a traced graph."""

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
        self.layer = 0
        self.input_key = -1
        self.output_key = -1

    # -- the result ---------------------------------------------------------------------
    def weight_space(self, name: str) -> WeightSpaceSpec:
        """The typed weight space of what the walk found (no group yet)."""
        roots = sorted({self.root_of(key) for key in self.spaces})
        names: dict[int, str] = {}
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
            axes = tuple(
                Axis(space if isinstance(space, str) else names[self.root_of(space)], character)
                for space, character in param.axes
            )
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

    # -- errors and bookkeeping ---------------------------------------------------------
    def fail(self, node: fx.Node, message: str, module: nn.Module | None = None) -> SpecError:
        return SpecError(f"{_describe(node, module)}: {message}", self.where)

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
        for key in dict.fromkeys(self.root_of(k) for k in x.members):
            self.spaces[key].constraints.append((scaling, why))

    def label(self, node: fx.Node, value: Any, what: str) -> Label:
        if isinstance(value, fx.Node) and value in self.labels:
            return self.labels[value]
        raise self.fail(node, f"{what} does not come from the network input")

    def tensor_args(self, node: fx.Node) -> list[fx.Node]:
        return [
            a
            for a in _flat_args((node.args, node.kwargs))
            if isinstance(a, fx.Node) and a in self.labels
        ]

    def check_attrs(self, node: fx.Node) -> None:
        if ops.is_product(node):
            return  # a per-channel parameter times activations: decided in scale()
        for arg in _flat_args((node.args, node.kwargs)):
            if isinstance(arg, fx.Node) and arg.op == "get_attr":
                raise self.fail(
                    node,
                    f"uses the parameter or buffer '{arg.target}' directly; only parameters "
                    "of nn.Linear, nn.Conv1d/2d/3d, BatchNorm and LayerNorm modules are supported",
                )

    def vector_size(self, label: Label) -> int:
        return self.channels(label) * math.prod(label.positions)

    # -- the walk -----------------------------------------------------------------------
    def run(self, graph: fx.Graph) -> None:
        for node in graph.nodes:
            if node.op == "placeholder":
                self.placeholder(node)
            elif node.op == "get_attr":
                continue
            elif node.op == "output":
                self.output(node)
            else:
                self.check_attrs(node)
                result = self.call(node)
                if result is not None:
                    self.labels[node] = result
                elif self.tensor_args(node) and "tensor_meta" in node.meta:
                    # (queries such as x.size(0) or x.shape return no tensor and pass)
                    raise self.fail(node, "is not a supported operation on network activations")

    def placeholder(self, node: fx.Node) -> None:
        if node.args:  # an optional argument traced at its default: not an input
            return
        if self.input_key >= 0:
            raise self.fail(node, "only networks with one tensor input are supported")
        shape = _shape(node)
        assert shape is not None
        if len(shape) < 2:
            raise self.fail(node, "the input needs a batch axis and a feature or channel axis")
        key = self.new_space(shape[1], "network input")
        self.spaces[key].is_input = True
        self.input_key = key
        self.labels[node] = Label(key, shape[2:])

    def output(self, node: fx.Node) -> None:
        value = node.args[0]
        if not (isinstance(value, fx.Node) and value in self.labels):
            raise self.fail(node, "the network must return one tensor computed from its input")
        if self.labels[value].parts:
            raise self.fail(node, "returns a concatenation; only one output space is supported")
        self.output_key = self.labels[value].space
        self.record(self.output_key).is_output = True

    def call(self, node: fx.Node) -> Label | None:
        if node.op == "call_module":
            return self.call_module(node)
        target = node.target
        if node.op == "call_method":
            assert isinstance(target, str)
            return self.call_method(node, target)
        return self.call_function(node, target)

    # -- modules ------------------------------------------------------------------------
    def call_module(self, node: fx.Node) -> Label | None:
        path = str(node.target)
        module = self.modules[path]
        if not self.tensor_args(node):
            return None
        if any(True for _ in module.parameters(recurse=False)) or isinstance(
            module, ops.NORM_MODULES
        ):
            if path in self.called:
                raise self.fail(node, "is called twice; shared weights are not supported", module)
            self.called.add(path)
        x = self.label(node, node.args[0] if node.args else None, "its input")
        if isinstance(module, nn.Linear):
            return self.linear(node, module, path, x)
        if type(module) in ops.CONV_MODULES:
            assert isinstance(module, nn.modules.conv._ConvNd)
            return self.conv(node, module, path, x, ops.CONV_MODULES[type(module)])
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            return self.batch_norm(node, module, path, x)
        if isinstance(module, nn.LayerNorm):
            return self.layer_norm(node, module, path, x)
        activation = ops.module_activation(module)
        if activation is not None:
            return self.activation(node, x, activation, f"{type(module).__name__} at '{path}'")
        if isinstance(module, ops.PASSTHROUGH_MODULES):
            return x
        if type(module) in ops.POOL_MODULES:
            return self.pool(node, x, ops.POOL_MODULES[type(module)], f"{type(module).__name__}")
        if isinstance(module, ops.SOFTMAX_MODULES):
            return self.softmax(node, x, f"{type(module).__name__} at '{path}'")
        if isinstance(module, ops.SPATIAL_MODULES):
            return self.spatial(node, x, ops.pad_value(module, (), {}), type(module).__name__)
        if isinstance(module, nn.Flatten):
            return self.reshape(node, x)
        if isinstance(module, nn.PReLU):
            raise self.fail(node, "learned activation slopes are not supported", module)
        raise self.fail(node, "this module is not supported", module)

    def linear(self, node: fx.Node, module: nn.Linear, path: str, x: Label) -> Label:
        shape = _shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        if shape is None or len(shape) != 2:
            raise self.fail(
                node,
                f"acts on a tensor of shape {shape}; only (batch, features) is supported",
                module,
            )
        if x.positions and not x.flat:
            raise self.fail(node, "acts on an unflattened feature map; flatten it first", module)
        self.layer += 1
        out = self.new_space(module.out_features, f"output of {path} (Linear)")
        rest: list[tuple[int | str, int]] = []
        count = math.prod(x.positions)
        if x.positions:
            if x.copies:
                name = self.fixed_space("r", count, "flattened copies of one spatial position")
                self.replicated.add(name)
            else:
                name = self.fixed_space("p", count, "flattened spatial positions")
            rest.append((name, 0))
        start = len(self.params)
        if x.parts:  # one weight per part of the concatenation it reads (column slices)
            for k, (key, lo, hi) in enumerate(self.part_ranges(x, count)):
                self.layer += k > 0
                self.add_param(path, "weight", "weight", [(out, 1), (key, -1), *rest], (1, lo, hi))
            first = self.params[start].layer
            self.layer, last = first, self.layer
        else:
            self.add_param(path, "weight", "weight", [(out, 1), (x.space, -1), *rest])
        if module.bias is not None:
            self.add_param(path, "bias", "bias", [(out, 1)])
        if x.parts:
            self.layer = last
        self.rows[node] = [(index, 0) for index in range(start, len(self.params))]
        return Label(out, ())

    def conv(
        self, node: fx.Node, module: nn.modules.conv._ConvNd, path: str, x: Label, dims: int
    ) -> Label:
        if x.flat or len(x.positions) != dims:
            raise self.fail(
                node,
                f"expects (batch, channels, {dims} spatial axes) from the layer before",
                module,
            )
        depthwise = module.groups == module.in_channels == module.out_channels
        if module.groups != 1 and not depthwise:
            raise self.fail(
                node,
                f"grouped convolutions (groups={module.groups}, {module.in_channels} -> "
                f"{module.out_channels} channels) are not supported; depthwise ones (groups = "
                "in = out channels) and groups=1 are",
                module,
            )
        self.layer += 1
        out_shape = _shape(node)
        assert out_shape is not None
        kernel = [(self.fixed_space("k", int(k), "kernel offsets"), 0) for k in module.kernel_size]
        start = len(self.params)
        if depthwise and x.parts:
            raise self.fail(node, "a depthwise convolution of a concatenation", module)
        if depthwise:
            # channel c maps x[c] to y[c]: one permutation for input and output, so the output
            # is the input's space and the weight's channel axis carries d_out / d_in = 1
            out = x.space
            self.add_param(path, "weight", "weight", [(out, 0), *kernel])
        else:
            out = self.new_space(module.out_channels, f"output of {path} ({type(module).__name__})")
            for k, (key, lo, hi) in enumerate(self.part_ranges(x)):
                self.layer += k > 0  # one weight per part of a concatenation (column slices)
                part = (1, lo, hi) if x.parts else None
                self.add_param(path, "weight", "weight", [(out, 1), (key, -1), *kernel], part)
        last = self.layer
        self.layer = self.params[start].layer
        if module.bias is not None:
            self.add_param(path, "bias", "bias", [(out, 1)])
        self.layer = last
        self.rows[node] = [(index, 0) for index in range(start, len(self.params))]
        return Label(out, out_shape[2:])

    def batch_norm(
        self, node: fx.Node, module: nn.modules.batchnorm._BatchNorm, path: str, x: Label
    ) -> Label:
        if x.flat:
            raise self.fail(node, "acts on a flattened feature map", module)
        space = self.record(x.space)
        source = node.args[0]
        what = f"{type(module).__name__} at '{path}'"
        if x.parts:
            return self._batch_norm_parts(module, path, x, what)
        if module.affine and isinstance(source, fx.Node) and self._sole_layer_output(source):
            # The layer before feeds this norm alone: leave its rows and the running statistics
            # unscaled, and let the affine parameters carry the output's scaling (y -> d y).
            for index, position in self.rows[source]:
                self._unscale(index, position)
            space.constraints.append(
                (
                    Scaling.NONZERO,
                    f"{what} takes its output's scaling into its affine parameters (the rows of "
                    "the layer before and the running statistics stay unscaled)",
                )
            )
            self.layer += 1
            self.add_param(path, "weight", "weight", [(x.space, 1)])
            self.add_param(path, "bias", "bias", [(x.space, 1)])
            if module.track_running_stats:
                self.add_param(path, "running_mean", "buffer", [(x.space, 0)])
                self.add_param(path, "running_var", "buffer", [(x.space, 0)])
            return x
        space.constraints.append(
            (
                Scaling.SIGN,
                f"{what} (eps in sqrt(var + eps) breaks positive scaling; sign flips pass with "
                "the running mean flipped)",
            )
        )
        if module.affine:
            self.layer += 1
            self.add_param(path, "weight", "weight", [(x.space, 0)])
            self.add_param(path, "bias", "bias", [(x.space, 1)])
        if module.track_running_stats:
            self.add_param(path, "running_mean", "buffer", [(x.space, 1)])
            self.add_param(path, "running_var", "buffer", [(x.space, 0)])
        return x

    def _batch_norm_parts(
        self, module: nn.modules.batchnorm._BatchNorm, path: str, x: Label, what: str
    ) -> Label:
        """A norm over a concatenation: per part, sign flips only (as without a layer of its
        own before it), its parameters and statistics sliced along the channels."""
        self.constrain(
            x,
            Scaling.SIGN,
            f"{what} over a concatenation (eps in sqrt(var + eps) breaks positive scaling; sign "
            "flips pass with the running mean flipped)",
        )
        for key, lo, hi in self.part_ranges(x):
            self.layer += 1
            part = (0, lo, hi)
            if module.affine:
                self.add_param(path, "weight", "weight", [(key, 0)], part)
                self.add_param(path, "bias", "bias", [(key, 1)], part)
            if module.track_running_stats:
                self.add_param(path, "running_mean", "buffer", [(key, 1)], part)
                self.add_param(path, "running_var", "buffer", [(key, 0)], part)
        return x

    def _sole_layer_output(self, source: fx.Node) -> bool:
        """Whether ``source`` is a linear or conv layer's output read by one node only."""
        return source in self.rows and len(source.users) == 1

    def _unscale(self, index: int, position: int) -> None:
        """Remove the output-row character (+1) of one axis of a recorded parameter."""
        record = self.params[index]
        axes = list(record.axes)
        space, character = axes[position]
        axes[position] = (space, character - 1)
        self.params[index] = replace(record, axes=tuple(axes))

    def layer_norm(self, node: fx.Node, module: nn.LayerNorm, path: str, x: Label) -> Label:
        shape = _shape(node)
        assert shape is not None
        if tuple(module.normalized_shape) != shape[1:]:
            raise self.fail(
                node,
                f"normalizes over {tuple(module.normalized_shape)}; only a LayerNorm over all "
                f"non-batch axes {shape[1:]} (the whole neuron space) is supported",
                module,
            )
        self.constrain(
            x,
            Scaling.NONE,
            f"LayerNorm at '{path}' (its mean and variance mix the neurons of the space, "
            "so no per-neuron scaling passes)",
        )
        if module.elementwise_affine:
            rest: list[tuple[int | str, int]]
            if x.flat and x.positions:
                rest = [
                    (
                        self.fixed_space(
                            "p", math.prod(x.positions), "flattened spatial positions"
                        ),
                        0,
                    )
                ]
            else:
                rest = [(self.fixed_space("x", n, "spatial positions"), 0) for n in x.positions]
            per_channel = math.prod(x.positions) if x.flat else 1
            for key, lo, hi in self.part_ranges(x, per_channel):
                self.layer += 1
                part = (0, lo, hi) if x.parts else None
                self.add_param(path, "weight", "weight", [(key, 0), *rest], part)
                if module.bias is not None:
                    self.add_param(path, "bias", "bias", [(key, 1), *rest], part)
        return replace(x, copies=False)  # positions differ after the affine

    # -- shared by modules, functions and methods ---------------------------------------
    def activation(self, node: fx.Node, x: Label, name: str, where: str) -> Label:
        for key in dict.fromkeys(self.root_of(k) for k in x.members):
            self.spaces[key].activations.append((name, where))
        return x

    def softmax(self, node: fx.Node, x: Label, where: str) -> Label:
        self.constrain(x, Scaling.NONE, f"{where} (normalizes across neurons; no scaling passes)")
        return x

    def pool(self, node: fx.Node, x: Label, is_max: bool, what: str) -> Label:
        out_shape = _shape(node)
        in_shape = _shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        if x.flat or out_shape is None or in_shape is None or out_shape[:2] != in_shape[:2]:
            raise self.fail(node, "pools over something other than spatial positions")
        if is_max:
            self.constrain(
                x,
                Scaling.POSITIVE,
                f"{what} in '{_where(node)}' (max commutes with positive scaling; "
                "a sign flip turns max into min)",
            )
        spread = math.prod(in_shape[2:]) == 1 and math.prod(out_shape[2:]) > 1
        return replace(x, positions=out_shape[2:], copies=x.copies or spread)

    def spatial(self, node: fx.Node, x: Label, pad_value: float, what: str) -> Label:
        """Resampling or padding of the spatial positions, channel by channel."""
        if pad_value != 0:
            self.constrain(
                x, Scaling.NONE, f"{what} in '{_where(node)}' pads with the constant {pad_value:g}"
            )
        label = self.pool(node, x, False, what)
        if "pad" in what.lower():  # padded positions are not copies of the others
            return replace(label, copies=False)
        return label

    def reshape(self, node: fx.Node, x: Label) -> Label:
        out_shape = _shape(node)
        in_shape = _shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        assert out_shape is not None and in_shape is not None
        size = self.channels(x)
        if x.flat:
            if out_shape == in_shape:
                return x
        elif (
            len(out_shape) == 2
            and out_shape[0] == in_shape[0]
            and out_shape[1] == size * math.prod(x.positions)
        ):
            return (
                replace(x, flat=True)
                if math.prod(x.positions) > 1
                else replace(x, positions=(), copies=False)
            )
        elif out_shape[:2] == in_shape[:2] and math.prod(out_shape[2:]) == math.prod(x.positions):
            return replace(x, positions=out_shape[2:])
        raise self.fail(
            node,
            f"reshapes {in_shape} to {out_shape}; only flattening (batch, channels, ...) into "
            "(batch, features) or reshaping the spatial axes is supported",
        )

    def add(self, node: fx.Node, operands: Sequence[Any]) -> Label:
        labelled = [a for a in operands if isinstance(a, fx.Node) and a in self.labels]
        others = [a for a in operands if not (isinstance(a, fx.Node) and a in self.labels)]
        if len(labelled) == 2:
            a, b = (self.labels[n] for n in labelled)
            shapes = {_shape(n) for n in labelled}
            if len(shapes) != 1 or a.positions != b.positions or a.flat != b.flat:
                raise self.fail(
                    node, f"adds tensors of different shapes {sorted(map(str, shapes))}"
                )
            sizes_a = [self.record(k).size for k in a.members]
            sizes_b = [self.record(k).size for k in b.members]
            if sizes_a != sizes_b:
                raise self.fail(
                    node, f"adds concatenations whose parts differ ({sizes_a} and {sizes_b})"
                )
            for key_a, key_b in zip(a.members, b.members):
                self.tie(key_a, key_b, f"the addition in '{_where(node)}'")
            return replace(a, copies=a.copies and b.copies)
        (x,) = (self.labels[n] for n in labelled)
        if any(isinstance(o, fx.Node) for o in others):
            raise self.fail(node, "adds a tensor that does not come from the network input")
        if any(o != 0 for o in others):
            self.constrain(
                x, Scaling.NONE, f"the constant added in '{_where(node)}' (shifts break scaling)"
            )
        return x

    def scale(self, node: fx.Node, operands: Sequence[Any], divides: bool) -> Label:
        labelled = [a for a in operands if isinstance(a, fx.Node) and a in self.labels]
        others = [a for a in operands if isinstance(a, fx.Node) and a not in labelled]
        if not divides and len(labelled) == 2:
            return self.gate(node, [self.labels[a] for a in labelled])
        if not divides and len(labelled) == 1 and len(others) == 1 and others[0].op == "get_attr":
            return self.channel_scale(node, self.labels[labelled[0]], str(others[0].target))
        if len(labelled) != 1 or others:
            raise self.fail(
                node, "multiplies network activations by a tensor; only constants are supported"
            )
        if divides and operands[0] is not labelled[0]:
            raise self.fail(node, "divides by network activations (not a linear map)")
        return self.labels[labelled[0]]

    def gate(self, node: fx.Node, factors: list[Label]) -> Label:
        """``x * g(x)`` (squeeze-excite, hand-written SiLU): an elementwise product of two
        activations with one channel index. Both factors carry one permutation, so their
        spaces are tied; the product is quadratic in a common scale, so no scaling passes."""
        out_shape = _shape(node)
        assert out_shape is not None
        a, b = factors
        sizes = [[self.record(k).size for k in x.members] for x in factors]
        if a.flat or b.flat or sizes[0] != sizes[1]:
            raise self.fail(
                node,
                "multiplies activations of different channels; only gates x * g(x) with one "
                "value per channel (and position) are supported",
            )
        for key_a, key_b in zip(a.members, b.members):
            self.tie(key_a, key_b, f"the gate in '{_where(node)}'")
        self.constrain(
            a,
            Scaling.NONE,
            f"the gate x * g in '{_where(node)}' (a product of two activations of the space: "
            "no scaling passes)",
        )
        wide = a if tuple(out_shape[2:]) == a.positions else b
        return replace(wide, copies=a.copies and b.copies)

    def channel_scale(self, node: fx.Node, x: Label, target: str) -> Label:
        """``gamma * x`` with a parameter of one value per channel (layer scale): a tensor of
        the weight space on the channel axis, character 0 (the product scales with x)."""
        module_path, _, attr = target.rpartition(".")
        value = getattr(self.modules[module_path], attr, None)
        size = self.channels(x)
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
        rank = 1 + len(x.positions)  # channel and positions, without the batch axis
        trimmed = shape[1:] if len(shape) == rank + 1 and shape[0] == 1 else shape
        per_channel = len(trimmed) == rank and trimmed[0] == size and set(trimmed[1:]) <= {1}
        if not isinstance(value, nn.Parameter) or x.parts or x.flat or not per_channel:
            raise self.fail(
                node,
                f"multiplies network activations by '{target}' of shape {shape}; only a "
                f"parameter with one value per channel (shape ({size},) or ({size}, 1, ...)) is "
                "supported",
            )
        if any(p.source_key == target for p in self.params):
            raise self.fail(node, f"uses the parameter '{target}' twice")
        self.layer += 1
        self.add_param(module_path, attr, "weight", [(x.space, 0)])
        return x

    def cat(self, node: fx.Node) -> Label:
        """Concatenation along the channel axis: a direct sum of the parts' spaces (each part
        keeps its own permutation and scaling; layers reading it get one weight per part)."""
        values = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if not isinstance(values, (list, tuple)) or not values:
            raise self.fail(node, "concatenates something other than a list of tensors")
        labels = [self.label(node, value, "a concatenated tensor") for value in values]
        first = labels[0]
        rank = 2 + (0 if first.flat else len(first.positions))
        if not isinstance(dim, int) or dim % rank != 1:
            raise self.fail(
                node, f"concatenates along dim {dim}; only the channel axis (dim 1) is supported"
            )
        if any(x.flat or x.positions != first.positions for x in labels):
            raise self.fail(node, "concatenates tensors of different spatial shapes or flattened")
        members = tuple(key for x in labels for key in x.members)
        return Label(
            members[0],
            first.positions,
            copies=all(x.copies for x in labels),
            parts=members if len(members) > 1 else (),
        )

    def rounding(self, node: fx.Node, operands: Sequence[Any]) -> Label:
        """Floor division and rounding: elementwise, so permutations pass; no scaling does."""
        labelled = [a for a in operands if isinstance(a, fx.Node) and a in self.labels]
        if len(labelled) != 1 or operands[0] is not labelled[0]:
            raise self.fail(node, "rounds a quotient of network activations by a tensor")
        if any(isinstance(a, fx.Node) for a in operands[1:]):
            raise self.fail(node, "divides network activations by a tensor")
        x = self.labels[labelled[0]]
        self.constrain(
            x,
            Scaling.NONE,
            f"{ops.target_name(node.target)} in '{_where(node)}' rounds (floor(d x) differs "
            "from d floor(x))",
        )
        return x

    def reduce(self, node: fx.Node, x: Label, is_max: bool) -> Label:
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        rank = 2 + len(x.positions)
        if dims is None or x.flat:
            raise self.fail(
                node, "reduces over neurons; only reductions over spatial axes are supported"
            )
        listed = (
            [dims]
            if isinstance(dims, int)
            else list(dims)
            if isinstance(dims, (list, tuple))
            else [None]
        )
        if any(not isinstance(d, int) or d % rank < 2 for d in listed):
            raise self.fail(
                node, f"reduces over dims {dims}; only spatial axes (2 and up) are supported"
            )
        return self.pool(node, x, is_max, ops.target_name(node.target))

    # -- functions and methods ----------------------------------------------------------
    def call_function(self, node: fx.Node, target: Any) -> Label | None:
        if not self.tensor_args(node):
            return None
        args = node.args
        first = args[0] if args else None
        name = ops.function_activation(target, tuple(args), dict(node.kwargs))
        if name is not None:
            return self.activation(
                node, self.label(node, first, "its input"), name, _describe(node)
            )
        if target in ops.PASSTHROUGH_FUNCTIONS or ops.is_stochastic_depth(target):
            return self.label(node, first, "its input")
        if target in ops.CAT_FUNCTIONS:
            return self.cat(node)
        if target in ops.CLAMP_FUNCTIONS:
            name = ops.clamp_activation(target, tuple(args), dict(node.kwargs))
            return self.activation(
                node, self.label(node, first, "its input"), name, _describe(node)
            )
        if ops.rounds(target, dict(node.kwargs)):
            return self.rounding(node, list(args[:2]))
        if target in ops.POOL_FUNCTIONS:
            return self.pool(
                node,
                self.label(node, first, "its input"),
                ops.POOL_FUNCTIONS[target],
                ops.target_name(target),
            )
        if target in ops.REDUCE_FUNCTIONS:
            return self.reduce(
                node, self.label(node, first, "its input"), ops.REDUCE_FUNCTIONS[target]
            )
        if target in ops.RESHAPE_FUNCTIONS:
            return self.reshape(node, self.label(node, first, "its input"))
        if target in ops.SPATIAL_FUNCTIONS:
            value = ops.pad_value(target, tuple(args), dict(node.kwargs))
            return self.spatial(
                node, self.label(node, first, "its input"), value, ops.target_name(target)
            )
        if target in ops.SOFTMAX_FUNCTIONS:
            return self.softmax(node, self.label(node, first, "its input"), _describe(node))
        if target in ops.ADD_FUNCTIONS:
            return self.add(node, [*args[:2], node.kwargs.get("other", 0)][:2])
        if target in ops.SCALE_FUNCTIONS:
            return self.scale(node, list(args[:2]), target in ops.DIVIDE_FUNCTIONS)
        return None

    def call_method(self, node: fx.Node, method: str) -> Label | None:
        if not self.tensor_args(node):
            return None
        first = node.args[0]
        if not (isinstance(first, fx.Node) and first in self.labels):
            return None
        x = self.labels[first]
        if method in ops.ACTIVATION_METHODS:
            return self.activation(node, x, ops.ACTIVATION_METHODS[method], _describe(node))
        if method in ops.PASSTHROUGH_METHODS:
            return x
        if method in ops.CLAMP_METHODS:
            name = ops.clamp_activation(method, tuple(node.args), dict(node.kwargs))
            return self.activation(node, x, name, _describe(node))
        if method in ops.ROUNDING_METHODS or node.kwargs.get("rounding_mode") is not None:
            return self.rounding(node, list(node.args[:2]))
        if method in ops.REDUCE_METHODS:
            return self.reduce(node, x, ops.REDUCE_METHODS[method])
        if method in ops.RESHAPE_METHODS:
            return self.reshape(node, x)
        if method in ops.SOFTMAX_METHODS:
            return self.softmax(node, x, _describe(node))
        if method in ops.ADD_METHODS:
            return self.add(node, list(node.args[:2]))
        if method in ops.SCALE_METHODS:
            return self.scale(node, list(node.args[:2]), method.startswith("div"))
        if method == "size":
            return None
        return None


def _supported_module(module: nn.Module) -> bool:
    return (
        isinstance(module, (nn.Linear, nn.Flatten, *ops.NORM_MODULES, *ops.PASSTHROUGH_MODULES))
        or type(module) in ops.CONV_MODULES
        or type(module) in ops.POOL_MODULES
        or isinstance(module, ops.SPATIAL_MODULES)
        or isinstance(module, ops.SOFTMAX_MODULES)
        or ops.module_activation(module) is not None
    )


def _defaults(module: nn.Module) -> dict[str, Any]:
    """The forward arguments with a default that is not a tensor (a mask, a flag, a scale):
    traced at their default, so they are not network inputs."""
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {
        p.name: p.default
        for p in parameters
        if p.default is not inspect.Parameter.empty
        and not isinstance(p.default, torch.Tensor)
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _check_graph(graph_module: fx.GraphModule, where: str) -> None:
    """Errors that need no shapes: several inputs, unsupported modules."""
    inputs = [n for n in graph_module.graph.nodes if n.op == "placeholder" and not n.args]
    if len(inputs) != 1:
        raise SpecError(
            f"the network takes {len(inputs)} inputs ({', '.join(n.name for n in inputs)}); "
            "only networks with one tensor input are supported",
            where,
        )
    modules = dict(graph_module.named_modules())
    for node in graph_module.graph.nodes:
        if node.op != "call_module":
            continue
        module = modules[str(node.target)]
        if isinstance(module, nn.PReLU):
            raise SpecError(
                f"PReLU at '{node.target}': learned activation slopes are not supported", where
            )
        if not _supported_module(module):
            raise SpecError(
                f"{type(module).__name__} at '{node.target}': this module is not supported", where
            )


def trace_network(
    module: nn.Module, input_shape: Sequence[int], where: str, name: str = "network"
) -> WeightSpaceSpec:
    """Trace ``module`` on inputs of shape ``(batch, *input_shape)`` into its weight space.

    Spaces are named ``in``, ``out`` and ``h1, h2, ...`` in the order the forward pass creates
    them (tied spaces merged into one); fixed axes ``k<n>`` (kernel offsets), ``p<n>``
    (flattened positions) and ``x<n>`` (spatial positions). Tensors are ``W<k>`` and ``b<k>``
    for the k-th layer with parameters; buffers are named by their state-dict key.

    Raises :class:`SpecError` naming the operation and the module path for anything
    unsupported.
    """
    if not isinstance(module, nn.Module):
        raise SpecError(f"expected an nn.Module, got {type(module).__name__}", where)
    if not input_shape or any(not isinstance(n, int) or n < 1 for n in input_shape):
        raise SpecError(
            f"input shape must be positive integers without the batch axis, got {list(input_shape)}",
            where,
        )
    try:
        graph = _Tracer().trace(module, concrete_args=_defaults(module))
        graph_module = fx.GraphModule(module, graph)
    except Exception as exc:  # fx raises many kinds; the message is what the user needs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"torch.fx cannot trace the module: {first}", where) from None
    _check_graph(graph_module, where)
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    example = torch.randn(
        (2, *input_shape), generator=torch.Generator().manual_seed(0), dtype=dtype
    )
    modes = {path: m.training for path, m in module.named_modules()}
    try:
        module.eval()
        # ShapeProp prints a traceback before re-raising; the one-line error below replaces it
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(graph_module).propagate(example)
    except Exception as exc:
        cause = exc.__cause__ or exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise SpecError(
            f"the module fails on an input of shape {tuple(example.shape)}: {first}", where
        ) from None
    finally:
        for path, m in module.named_modules():
            m.training = modes[path]
    walker = _Walker(module, where)
    walker.run(graph_module.graph)
    covered = {p.source_key for p in walker.params}
    for key, _ in module.named_parameters():
        if key not in covered:
            raise SpecError(
                f"parameter '{key}' is not used by a supported layer (nn.Linear, nn.Conv1d/2d/3d, "
                "BatchNorm, LayerNorm) on the path from input to output",
                where,
            )
    if walker.layer == 0:
        raise SpecError("the module has no supported layer with parameters", where)
    return walker.weight_space(name)
