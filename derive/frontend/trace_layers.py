"""What layers with parameters do to the spaces they touch (linear, conv, norms): new spaces,
parameters as axis labels, and the scaling a norm leaves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch.fx as fx
from torch import nn

from derive.frontend.trace_state import Label, WalkState, shape_of
from derive.weightspace.model import Scaling

__all__ = ["LayerRules"]


class LayerRules(WalkState):
    """Linear, convolution, BatchNorm and LayerNorm."""

    def linear(self, node: fx.Node, module: nn.Linear, path: str, x: Label) -> Label:
        shape = shape_of(node.args[0]) if isinstance(node.args[0], fx.Node) else None
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
        self._weight_parts(path, out, x, rest, count)
        self._bias_and_rows(node, module.bias is not None, path, out, start)
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
        out_shape = shape_of(node)
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
            self._weight_parts(path, out, x, kernel)
        self._bias_and_rows(node, module.bias is not None, path, out, start)
        return Label(out, out_shape[2:])

    def _weight_parts(
        self,
        path: str,
        out: int,
        x: Label,
        rest: Sequence[tuple[int | str, int]],
        scale: int = 1,
    ) -> None:
        """The weight ``(out +1, in -1, *rest)``: one tensor per part of a concatenation
        (column slices of the entry, ``scale`` columns per channel), each its own layer."""
        for k, (key, lo, hi) in enumerate(self.part_ranges(x, scale)):
            self.layer += k > 0
            part = (1, lo, hi) if x.parts else None
            self.add_param(path, "weight", "weight", [(out, 1), (key, -1), *rest], part)

    def _bias_and_rows(
        self, node: fx.Node, has_bias: bool, path: str, out: int, start: int
    ) -> None:
        """The bias, in the layer of the first weight part; then the output-row axes of every
        parameter recorded since ``start``, for a norm that may read this layer alone."""
        last = self.layer
        self.layer = self.params[start].layer
        if has_bias:
            self.add_param(path, "bias", "bias", [(out, 1)])
        self.layer = last
        self.rows[node] = [(index, 0) for index in range(start, len(self.params))]

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
        shape = shape_of(node)
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
