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
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from derive.errors import SpecError
from derive.frontend import trace_ops as ops
from derive.frontend.trace_assembly import assemble
from derive.frontend.trace_attention import AttentionRules
from derive.frontend.trace_layers import LayerRules
from derive.frontend.trace_state import Label, describe, flat_args, shape_of
from derive.frontend.trace_values import ValueRules
from derive.weightspace.model import WeightSpaceSpec
from nfn_runtime.architectures import Activation

__all__ = ["Label", "trace_network"]


class _Tracer(fx.Tracer):
    """torch.fx's tracer, keeping named :class:`Activation` modules as single operations;
    ``buffers``: buffers read in ``forward`` are traced values (a causal mask sliced to the
    number of tokens, ``self.bias[:, :, :T, :T]``) rather than constants."""

    def __init__(self, buffers: bool = False) -> None:
        super().__init__()
        self.proxy_buffer_attributes = buffers

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, Activation) or super().is_leaf_module(m, module_qualified_name)


class _Walker(LayerRules, ValueRules, AttentionRules):
    """Applies :mod:`derive.frontend.trace_ops` to every node of a traced graph: the walk here,
    the rules in :mod:`derive.frontend.trace_layers`, :mod:`derive.frontend.trace_values` and
    :mod:`derive.frontend.trace_attention`."""

    # -- the walk -----------------------------------------------------------------------
    def run(self, graph: fx.Graph) -> None:
        for node in graph.nodes:
            self.refresh()
            if node.op == "placeholder":
                self.placeholder(node)
            elif node.op == "get_attr":
                self.param_views[node] = str(node.target)
            elif node.op == "output":
                self.output(node)
            elif self.attention_step(node):
                continue
            elif not self.check_attrs(node):
                self.check_shuffle(node)
                result = self.call(node)
                if result is not None:
                    self.labels[node] = result
                elif node in self.tuples:
                    continue
                elif self.tensor_args(node) and "tensor_meta" in node.meta:
                    # (queries such as x.size(0) or x.shape return no tensor and pass)
                    raise self.fail(node, "is not a supported operation on network activations")

    def placeholder(self, node: fx.Node) -> None:
        if node.args:  # an optional argument traced at its default: not an input
            return
        if self.input_key >= 0:
            raise self.fail(node, "only networks with one tensor input are supported")
        shape = shape_of(node)
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
        label = self.labels[value]
        if label.parts:
            raise self.fail(node, "returns a concatenation; only one output space is supported")
        for key in label.position_spaces:
            if key is not None:
                self.fix(key, "the network output")
        self.output_key = label.space
        self.record(self.output_key).is_output = True

    def check_shuffle(self, node: fx.Node) -> None:
        """A channel axis viewed as (groups, channels per group) only goes through the swap
        and the view back of a channel shuffle."""
        for arg in self.tensor_args(node):
            if self.labels[arg].shuffle is None:
                continue
            if node.op == "call_method" and node.target in (
                *ops.RESHAPE_METHODS,
                *ops.PERMUTE_METHODS,
                *ops.PASSTHROUGH_METHODS,
            ):
                return
            if node.op == "call_function" and node.target in (
                *ops.RESHAPE_FUNCTIONS,
                *ops.PERMUTE_FUNCTIONS,
            ):
                return
            raise self.fail(
                node,
                "acts on a channel axis viewed as (groups, channels per group); only a channel "
                "shuffle (swap the two, view back) is supported",
            )

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
        if isinstance(module, nn.MultiheadAttention):
            self.tuples[node] = [self.multihead_attention(node, module, path)]
            self.attention.add(node)
            return None
        x = self.label(node, node.args[0] if node.args else None, "its input")
        if isinstance(module, nn.Linear):
            return self.linear(node, module, path, x)
        if type(module) in ops.CONV_MODULES:
            assert isinstance(module, nn.modules.conv._ConvNd)
            return self.conv(node, module, path, x, ops.CONV_MODULES[type(module)])
        if type(module) in ops.TRANSPOSED_CONV_MODULES:
            assert isinstance(module, nn.modules.conv._ConvTransposeNd)
            dims = ops.TRANSPOSED_CONV_MODULES[type(module)]
            return self.transposed_conv(node, module, path, x, dims)
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            return self.batch_norm(node, module, path, x)
        if isinstance(module, nn.LayerNorm):
            return self.layer_norm(node, module, path, x, tuple(module.normalized_shape))
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

    # -- functions and methods ----------------------------------------------------------
    def call_function(self, node: fx.Node, target: Any) -> Label | None:
        args = node.args
        first = args[0] if args else None
        if target is operator.getitem and first in self.tuples:
            index = args[1] if len(args) > 1 else None
            if not isinstance(index, int):
                raise self.fail(node, "indexes the pieces of a split with a non-integer")
            assert isinstance(first, fx.Node)
            if first in self.attention and index == 1:  # the attention weights
                if node.users:
                    raise self.fail(
                        node, "reads the attention weights; only the output is supported"
                    )
                return None
            return self.tuples[first][index]
        if not self.tensor_args(node):
            return None
        if target is operator.getitem and first in self.labels:
            x = self.label(node, first, "its input")
            return self.take_positions(node, x, args[1] if len(args) > 1 else None)
        name = ops.function_activation(target, tuple(args), dict(node.kwargs))
        if name is not None:
            return self.activation(node, self.label(node, first, "its input"), name, describe(node))
        if target in ops.PASSTHROUGH_FUNCTIONS or ops.is_stochastic_depth(target):
            return self.label(node, first, "its input")
        if target in ops.CAT_FUNCTIONS:
            return self.cat(node)
        if target in ops.SPLIT_FUNCTIONS:
            self.split_channels(node, target, first)
            return None
        if target in ops.PERMUTE_FUNCTIONS:
            x = self.label(node, first, "its input")
            order = self.axis_order(node, target, first)
            return self.permute(node, x, order)
        if target in ops.NORM_FUNCTIONS:
            return self.functional_norm(node, ops.NORM_FUNCTIONS[target])
        if target is torch.addcmul:
            return self.affine(node, list(args))
        if target in ops.CLAMP_FUNCTIONS:
            name = ops.clamp_activation(target, tuple(args), dict(node.kwargs))
            return self.activation(node, self.label(node, first, "its input"), name, describe(node))
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
            return self.softmax(node, self.label(node, first, "its input"), describe(node))
        if target in ops.ADD_FUNCTIONS:
            return self.add(node, [*args[:2], node.kwargs.get("other", 0)][:2])
        if target in ops.SCALE_FUNCTIONS:
            return self.scale(node, list(args[:2]), target in ops.DIVIDE_FUNCTIONS)
        return None

    def split_channels(self, node: fx.Node, target: Any, first: Any) -> None:
        """``chunk`` or ``split`` along the channel axis, or along an embedding a layer wrote
        behind tokens as channels (read as the channel axis: a packed q, k, v projection)."""
        x = self.label(node, first, "its input")
        sizes, dim = self.split_of(node, target, x)
        axis, tokens = dim % (2 + len(x.positions)) - 1, x.channel_axis
        swapped = None
        if not x.flat and axis != tokens and 0 <= axis < len(x.layout()):
            swapped = self.swap_channel(x, axis)
            if swapped is not None:
                x = swapped
                sizes, dim = self.split_of(node, target, x)
        length = self.channels(x)
        shape = shape_of(first) if isinstance(first, fx.Node) else None
        if shape is not None and dim % len(shape) == 1 + x.channel_axis and sum(sizes) != length:
            raise self.fail(node, f"splits {length} channels into pieces of {sizes}")
        self.chunks(node, x, sizes, dim)
        if swapped is not None:  # each piece with the tokens as channels again
            pieces = self.tuples[node]
            self.tuples[node] = [self.swap_channel(p, tokens) or p for p in pieces]

    def split_of(self, node: fx.Node, target: Any, x: Label) -> tuple[list[int], int]:
        try:
            return ops.split_sizes(target, tuple(node.args), dict(node.kwargs), self.channels(x))
        except (TypeError, ValueError):
            raise self.fail(node, "splits by sizes computed at run time") from None

    def axis_order(self, node: fx.Node, target: Any, first: Any) -> list[int]:
        try:
            return ops.axis_order(target, tuple(node.args), dict(node.kwargs), self.rank_of(first))
        except (TypeError, ValueError):
            raise self.fail(node, "reorders axes computed at run time") from None

    def rank_of(self, value: Any) -> int:
        shape = shape_of(value) if isinstance(value, fx.Node) else None
        assert shape is not None
        return len(shape)

    def functional_norm(self, node: fx.Node, kind: str) -> Label:
        """``F.batch_norm`` or ``F.layer_norm`` on a norm module's own parameters (timm's norm
        layers, torchvision's LayerNorm2d): the rule of the module that owns them."""
        x = self.label(node, node.args[0] if node.args else None, "its input")
        owners = {
            self.param_views[a].rpartition(".")[0]
            for a in flat_args((node.args[1:], node.kwargs))
            if isinstance(a, fx.Node) and a in self.param_views
        }
        modules = [self.modules.get(path) for path in owners]
        if len(owners) > 1 or any(m is None for m in modules):
            raise self.fail(node, "normalizes with parameters of several modules")
        path = next(iter(owners), "")
        module = self.modules[path] if owners else None
        if path in self.called:
            raise self.fail(node, "is called twice; shared weights are not supported", module)
        self.called.add(path)
        if kind == "batch_norm":
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                raise self.fail(
                    node, "F.batch_norm is supported on a BatchNorm module's own parameters"
                )
            return self.batch_norm(node, module, path, x)
        shape: Any = node.kwargs.get("normalized_shape", node.args[1] if len(node.args) > 1 else ())
        if owners and not isinstance(module, nn.LayerNorm):
            raise self.fail(
                node, "F.layer_norm is supported on a LayerNorm module's own parameters"
            )
        return self.layer_norm(node, module, path, x, tuple(int(n) for n in shape))

    def call_method(self, node: fx.Node, method: str) -> Label | None:
        if not self.tensor_args(node):
            return None
        first = node.args[0]
        if not (isinstance(first, fx.Node) and first in self.labels):
            return None
        x = self.labels[first]
        if method in ops.ACTIVATION_METHODS:
            return self.activation(node, x, ops.ACTIVATION_METHODS[method], describe(node))
        if method in ops.PASSTHROUGH_METHODS:
            return x
        if method in ops.SPLIT_METHODS:
            self.split_channels(node, method, first)
            return None
        if method in ops.PERMUTE_METHODS:
            order = self.axis_order(node, method, first)
            return self.permute(node, x, order)
        if method in ops.CLAMP_METHODS:
            name = ops.clamp_activation(method, tuple(node.args), dict(node.kwargs))
            return self.activation(node, x, name, describe(node))
        if method in ops.ROUNDING_METHODS or node.kwargs.get("rounding_mode") is not None:
            return self.rounding(node, list(node.args[:2]))
        if method in ops.REDUCE_METHODS:
            return self.reduce(node, x, ops.REDUCE_METHODS[method])
        if method in ops.RESHAPE_METHODS:
            return self.reshape(node, x)
        if method in ops.SOFTMAX_METHODS:
            return self.softmax(node, x, describe(node))
        if method in ops.ADD_METHODS:
            return self.add(node, list(node.args[:2]))
        if method in ops.SCALE_METHODS:
            return self.scale(node, list(node.args[:2]), method.startswith("div"))
        if method == "size":
            return None
        return None


def _supported_module(module: nn.Module) -> bool:
    return (
        isinstance(
            module,
            (
                nn.Linear,
                nn.Flatten,
                nn.MultiheadAttention,
                *ops.NORM_MODULES,
                *ops.PASSTHROUGH_MODULES,
            ),
        )
        or type(module) in ops.CONV_MODULES
        or type(module) in ops.TRANSPOSED_CONV_MODULES
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
    modes = {path: m.training for path, m in module.named_modules()}
    try:
        module.eval()  # networks are read in eval mode (dropout, drop path, running statistics)
        try:
            graph = _Tracer().trace(module, concrete_args=_defaults(module))
        except Exception:  # a buffer sliced by a traced size: trace buffers as values
            graph = _Tracer(buffers=True).trace(module, concrete_args=_defaults(module))
        graph_module = fx.GraphModule(module, graph)
    except Exception as exc:  # fx raises many kinds; the message is what the user needs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"torch.fx cannot trace the module: {first}", where) from None
    finally:
        for path, m in module.named_modules():
            m.training = modes[path]
    _check_graph(graph_module, where)
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    example = torch.randn(
        (2, *input_shape), generator=torch.Generator().manual_seed(0), dtype=dtype
    )
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
    return assemble(walker, name)
