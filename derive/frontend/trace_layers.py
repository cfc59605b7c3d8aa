"""What layers with parameters do to the spaces they touch (linear, conv, norms): new spaces,
parameters as axis labels, and the scaling a norm leaves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch.fx as fx
from torch import nn

from derive.frontend import trace_ops as ops
from derive.frontend.trace_axes import AxisRules
from derive.frontend.trace_state import Label, shape_of
from derive.weightspace.model import QUERY_KEY_REASON, VALUE_REASON, Scaling

__all__ = ["LayerRules"]


class LayerRules(AxisRules):
    """Linear, convolution, BatchNorm and LayerNorm."""

    def linear(self, node: fx.Node, module: nn.Linear, path: str, x: Label) -> Label:
        if x.positions and not x.flat:
            return self._last_axis_linear(node, module, path, x)
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

    def _last_axis_linear(self, node: fx.Node, module: nn.Linear, path: str, x: Label) -> Label:
        """nn.Linear on the last axis of a map with positions: a 1x1 convolution when the
        channel axis is last (channels-last layouts), else a token-mixing layer whose output
        is a new space on that position axis (fixed again if it meets fixed positions)."""
        self.layer += 1
        start = len(self.params)
        bias = module.bias is not None
        shared = f"the bias of Linear at '{path}' is shared along the other axes"
        if x.channel_axis == len(x.positions):
            out = self.new_space(module.out_features, f"output of {path} (Linear)")
            self._weight_parts(path, out, x, [])
            self._bias_and_rows(node, bias, path, out, start)
            if bias:
                keys = [k for k in x.position_spaces if k is not None]
                self.constrain_keys(keys, Scaling.NONE, shared)
            return replace(x, space=out, parts=())
        last = len(x.positions) - 1
        key = x.position_spaces[last]
        read: tuple[int | str, int] = (
            (key, -1)
            if key is not None
            else (self.fixed_space("x", x.positions[last], "positions"), 0)
        )
        out = self.new_space(module.out_features, f"output of {path} (Linear over a token axis)")
        self.add_param(path, "weight", "weight", [(out, 1), read])
        self._bias_and_rows(node, bias, path, out, start)
        if bias:
            others = [k for k in x.all_spaces if k != key]
            self.constrain_keys(others, Scaling.NONE, shared)
        spaces = [*x.position_spaces[:last], out]
        return replace(
            x,
            positions=(*x.positions[:last], module.out_features),
            axis_spaces=tuple(spaces),
            copies=False,
        )

    def conv(
        self, node: fx.Node, module: nn.modules.conv._ConvNd, path: str, x: Label, dims: int
    ) -> Label:
        self.require_plain(node, x, type(module).__name__, module)
        if x.flat or len(x.positions) != dims:
            raise self.fail(
                node,
                f"expects (batch, channels, {dims} spatial axes) from the layer before",
                module,
            )
        depthwise = module.groups == module.in_channels == module.out_channels
        out_shape = shape_of(node)
        assert out_shape is not None
        kernel: list[tuple[int | str, int]] = [
            (self.fixed_space("k", int(k), "kernel offsets"), 0) for k in module.kernel_size
        ]
        if module.groups != 1 and not depthwise:
            return self._grouped_conv(node, module, path, x, kernel, out_shape[2:])
        self.layer += 1
        start = len(self.params)
        if depthwise:
            # channel c maps x[c] to y[c]: one permutation for input and output, so the output
            # is the input's space (part by part) and the weight's channel axis carries
            # d_out / d_in = 1
            for k, (key, part) in enumerate(self.parts_of(x, 0)):
                self.layer += k > 0
                first = self.layer
                self.add_param(path, "weight", "weight", [(key, 0), *kernel], part)
                if module.bias is not None:
                    self.add_param(path, "bias", "bias", [(key, 1)], part)
                self.layer = first
            self.rows[node] = [(index, 0) for index in range(start, len(self.params))]
            return replace(x, copies=False, positions=out_shape[2:])
        out = self.new_space(module.out_channels, f"output of {path} ({type(module).__name__})")
        self._weight_parts(path, out, x, kernel)
        self._bias_and_rows(node, module.bias is not None, path, out, start)
        return Label(out, out_shape[2:])

    def transposed_conv(
        self,
        node: fx.Node,
        module: nn.modules.conv._ConvTransposeNd,
        path: str,
        x: Label,
        dims: int,
    ) -> Label:
        """A transposed convolution (U-Net decoders): like a convolution, with the weight's
        channel axes in the order (in, out)."""
        name = type(module).__name__
        self.require_plain(node, x, name, module)
        if x.flat or len(x.positions) != dims:
            raise self.fail(
                node,
                f"expects (batch, channels, {dims} spatial axes) from the layer before",
                module,
            )
        if module.groups != 1:
            raise self.fail(
                node, f"grouped transposed convolutions (groups={module.groups})", module
            )
        out_shape = shape_of(node)
        assert out_shape is not None
        kernel: list[tuple[int | str, int]] = [
            (self.fixed_space("k", int(k), "kernel offsets"), 0) for k in module.kernel_size
        ]
        self.layer += 1
        first, start = self.layer, len(self.params)
        out = self.new_space(module.out_channels, f"output of {path} ({name})")
        for k, (key, part) in enumerate(self.parts_of(x, 0)):
            self.layer += k > 0
            self.add_param(path, "weight", "weight", [(key, -1), (out, 1), *kernel], part)
        rows = [(index, 1) for index in range(start, len(self.params))]
        if module.bias is not None:
            last, self.layer = self.layer, first
            self.add_param(path, "bias", "bias", [(out, 1)])
            self.layer = last
            rows.append((len(self.params) - 1, 0))
        self.rows[node] = rows
        return Label(out, out_shape[2:])

    def _grouped_conv(
        self,
        node: fx.Node,
        module: nn.modules.conv._ConvNd,
        path: str,
        x: Label,
        kernel: list[tuple[int | str, int]],
        positions: tuple[int, ...],
    ) -> Label:
        """A convolution with ``g`` groups: group i maps input channels ``i*c:(i+1)*c`` to
        output channels ``i*o:(i+1)*o``. Each group's input and output is its own space (the
        input's spaces are split at the group bounds), so the group derived is the product of
        the groups' permutations and scalings: a subgroup of the exact one, which also permutes
        whole groups (docs/math.md section 8)."""
        groups = module.groups
        per_in, per_out = module.in_channels // groups, module.out_channels // groups
        on_input = any(self.record(key).is_input for key in x.members)
        if on_input and len(x.members) > 1:
            raise self.fail(node, "a grouped convolution of the input and other channels", module)
        start = len(self.params)
        outs: list[int] = []
        name = type(module).__name__
        for i in range(groups):
            why = f"group {i} of {groups} of {name} at '{path}'"
            out = self.new_space(per_out, f"output of {path} ({name}, group {i} of {groups})")
            outs.append(out)
            rows = (i * per_out, 1, per_out)
            first = self.layer + 1
            if on_input:  # the input is not permuted: each group reads fixed channels
                self.layer += 1
                fixed = self.fixed_space("g", per_in, "network input channels of one group")
                self.add_param(path, "weight", "weight", [(out, 1), (fixed, 0), *kernel], {0: rows})
            else:
                group = self.select(self.resolve(x), i * per_in, (i + 1) * per_in, why)
            for key, begin, step in [] if on_input else self.segments(group):
                self.layer += 1
                columns = (begin, step, self.size_of(key))
                self.add_param(
                    path, "weight", "weight", [(out, 1), (key, -1), *kernel], {0: rows, 1: columns}
                )
            if module.bias is not None:
                last, self.layer = self.layer, first
                self.add_param(path, "bias", "bias", [(out, 1)], {0: rows})
                self.layer = last
        self.rows[node] = [(index, 0) for index in range(start, len(self.params))]
        return Label(outs[0], positions, parts=tuple(outs))

    def multihead_attention(self, node: fx.Node, module: nn.MultiheadAttention, path: str) -> Label:
        """``nn.MultiheadAttention`` (batch first): per head ``h`` a query/key space and a
        value space of ``head_dim`` neurons each. Attention reads ``q_h . k_h`` and sums
        ``v_h`` over tokens, so a permutation of a head's query/key dimensions with factors
        ``s`` on the rows of ``W_Q`` and ``1/s`` on those of ``W_K`` (the key rows carry
        character -1), and a permutation of its value dimensions with factors ``t`` on ``W_V``
        and ``1/t`` on the columns of ``W_O``, leave the output unchanged. Each head's rows of
        the packed ``in_proj_weight`` and columns of ``out_proj.weight`` are parts of those
        entries. The heads are recorded as a head block (whole-head permutations, decided by
        :mod:`derive.symmetry.heads`). Not derived: the invertible matrices beyond monomial
        ones (docs/math.md section 8.6)."""
        what = f"MultiheadAttention at '{path}'"
        if not module.batch_first:
            raise self.fail(node, "batch_first=False (sequence first) is not supported", module)
        if module.bias_k is not None or module.add_zero_attn:
            raise self.fail(node, "add_bias_kv and add_zero_attn are not supported", module)
        names = ("query", "key", "value")
        given = dict(zip(names, node.args))
        given.update({k: v for k, v in node.kwargs.items() if k in names})
        for name, value in [*zip(range(3, len(node.args)), node.args[3:]), *node.kwargs.items()]:
            if name not in names and isinstance(value, fx.Node) and value in self.labels:
                raise self.fail(node, f"a mask computed from the activations ({name})", module)
        inputs = {name: self.label(node, given.get(name), f"its {name}") for name in names}
        reads = {name: self._embedding_parts(node, module, name, x) for name, x in inputs.items()}
        embed, heads, width = module.embed_dim, module.num_heads, module.head_dim
        out = self.new_space(embed, f"output of {path} (MultiheadAttention)")
        roles = (("query", "q", 1, 0), ("key", "k", -1, embed), ("value", "v", 1, 2 * embed))
        values: list[int] = []
        found: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        for h in range(heads):
            qk = self.new_space(width, f"query/key dimensions of head {h} of {path}")
            value = self.new_space(width, f"value dimensions of head {h} of {path}")
            values.append(value)
            found.append(((qk,), (value,)))
            self.constrain_keys(
                [qk],
                Scaling.NONZERO,
                f"{what}: head {h} {QUERY_KEY_REASON} (W_Q rows scaled by s, W_K rows by 1/s)",
            )
            self.constrain_keys(
                [value],
                Scaling.NONZERO,
                f"{what}: head {h} {VALUE_REASON} (W_V rows by t, W_O columns by 1/t)",
            )
            for name, short, character, offset in roles:
                key_space = value if short == "v" else qk
                packed = module.in_proj_weight is not None
                attr = "in_proj_weight" if packed else f"{short}_proj_weight"
                rows = ((offset if packed else 0) + h * width, 1, width)
                self.layer += 1
                first = self.layer
                for k, (key, part) in enumerate(reads[name]):
                    self.layer += k > 0
                    self.add_param(
                        path,
                        attr,
                        "weight",
                        [(key_space, character), (key, -1)],
                        {**(part or {}), 0: rows},
                    )
                if module.in_proj_bias is not None:
                    last, self.layer = self.layer, first
                    bias_rows = (offset + h * width, 1, width)
                    self.add_param(
                        path, "in_proj_bias", "bias", [(key_space, character)], {0: bias_rows}
                    )
                    self.layer = last
        self.head_blocks.append((what, found))
        projection = f"{path}.out_proj"
        self.layer += 1
        first = self.layer
        for h in range(heads):
            self.layer += h > 0
            columns = {1: (h * width, 1, width)}
            self.add_param(projection, "weight", "weight", [(out, 1), (values[h], -1)], columns)
        if module.out_proj.bias is not None:
            last, self.layer = self.layer, first
            self.add_param(projection, "bias", "bias", [(out, 1)])
            self.layer = last
        query = inputs["query"]
        if query.channel_axis == 1:
            return replace(query, space=out, parts=())
        return replace(query, positions=(embed,), axis_spaces=(out,), copies=False)

    def _embedding_parts(
        self, node: fx.Node, module: nn.Module, name: str, x: Label
    ) -> list[tuple[int | str, dict[int, tuple[int, int, int]] | None]]:
        """The spaces (and parts) of the last axis of a ``(batch, tokens, embedding)`` input,
        as a weight's column axis reads them; the token axis keeps no scaling."""
        if x.flat or len(x.positions) != 1:
            raise self.fail(node, f"expects its {name} as (batch, tokens, embedding)", module)
        why = f"{type(module).__name__} weighs tokens by products of their embeddings"
        if x.channel_axis == 1:  # channels last: the embedding is the channel axis
            self.constrain_keys([k for k in x.position_spaces if k is not None], Scaling.NONE, why)
            return [(key, part) for key, part in self.parts_of(x, 1)]
        # channels first: the tokens are the channel axis, the embedding the position axis
        if not any(self.record(key).is_input for key in x.members):
            self.constrain_keys(list(x.members), Scaling.NONE, why)
        key = x.position_spaces[0]
        if key is None:
            return [(self.fixed_space("x", x.positions[0], "embedding of the input tokens"), None)]
        return [(key, None)]

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
        for k, (key, part) in enumerate(self.parts_of(x, 1, scale)):
            self.layer += k > 0
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
        """BatchNorm, per part of the channel axis. Reading a linear or conv layer's output
        alone, its affine parameters take the output's scaling (the layer's rows and the
        running statistics stay unscaled); otherwise eps in sqrt(var + eps) leaves sign flips
        only (with the running mean flipped)."""
        if x.flat:
            raise self.fail(node, "acts on a flattened feature map", module)
        self.require_plain(node, x, type(module).__name__, module)
        source = node.args[0]
        what = f"{type(module).__name__} at '{path}'"
        owns = module.affine and isinstance(source, fx.Node) and self._sole_layer_output(source)
        if owns:
            assert isinstance(source, fx.Node)
            for index, position in self.rows[source]:
                self._unscale(index, position)
            self.constrain(
                x,
                Scaling.NONZERO,
                f"{what} takes its output's scaling into its affine parameters (the rows of "
                "the layer before and the running statistics stay unscaled)",
            )
        else:
            over = " over a concatenation" if x.parts else ""
            self.constrain(
                x,
                Scaling.SIGN,
                f"{what}{over} (eps in sqrt(var + eps) breaks positive scaling; sign flips pass "
                "with the running mean flipped)",
            )
        weight, bias, mean, var = (1, 1, 0, 0) if owns else (0, 1, 1, 0)
        for key, part in self.parts_of(x, 0):
            if module.affine:
                self.layer += 1
                self.add_param(path, "weight", "weight", [(key, weight)], part)
                self.add_param(path, "bias", "bias", [(key, bias)], part)
            if module.track_running_stats:
                self.add_param(path, "running_mean", "buffer", [(key, mean)], part)
                self.add_param(path, "running_var", "buffer", [(key, var)], part)
        return x

    def _sole_layer_output(self, source: fx.Node) -> bool:
        """Whether ``source`` is a linear or conv layer's output read by one node only
        (shape queries such as ``x.ndim`` or ``x.size()`` do not count)."""
        readers = [user for user in source.users if not ops.is_shape_query(user)]
        return source in self.rows and len(readers) == 1

    def _unscale(self, index: int, position: int) -> None:
        """Remove the output-row character (+1) of one axis of a recorded parameter."""
        record = self.params[index]
        axes = list(record.axes)
        space, character = axes[position]
        axes[position] = (space, character - 1)
        self.params[index] = replace(record, axes=tuple(axes))

    def layer_norm(
        self,
        node: fx.Node,
        module: nn.Module | None,
        path: str,
        x: Label,
        normalized: tuple[int, ...],
    ) -> Label:
        """LayerNorm over every non-batch axis, or over the last axis alone (channels-last
        and token layouts). Its mean and variance mix the neurons it normalizes, and the
        value it divides by is shared along the others: no scaling passes on any space."""
        shape = shape_of(node)
        assert shape is not None
        what = f"LayerNorm at '{path}'" if path else "F.layer_norm"
        whole = normalized == shape[1:]
        if not whole and not (len(normalized) == 1 and normalized[0] == shape[-1] and not x.flat):
            raise self.fail(
                node,
                f"normalizes over {normalized}; only a LayerNorm over all non-batch axes "
                f"{shape[1:]} or over the last axis ({shape[-1]},) is supported",
                module,
            )
        self.constrain(
            x,
            Scaling.NONE,
            f"{what} (its mean and variance mix the neurons of the space, so no per-neuron "
            "scaling passes)",
        )
        weight = getattr(module, "weight", None) is not None
        bias = getattr(module, "bias", None) is not None
        if weight or bias:
            if whole:
                self._whole_norm_params(node, module, path, x, weight, bias)
            else:
                self._last_axis_params(path, x, weight, bias)
        return replace(x, copies=False)  # positions differ after the affine

    def _whole_norm_params(
        self,
        node: fx.Node,
        module: nn.Module | None,
        path: str,
        x: Label,
        weight: bool,
        bias: bool,
    ) -> None:
        """Affine parameters over every non-batch axis (in the layout's order)."""
        if x.flat and x.positions:
            positions = math.prod(x.positions)
            after: list[tuple[int | str, int]] = [
                (self.fixed_space("p", positions, "flattened spatial positions"), 0)
            ]
            before: list[tuple[int | str, int]] = []
            per_channel = positions
        else:
            axes: list[tuple[int | str, int]] = [
                (self.fixed_space("x", n, "spatial positions"), 0) if key is None else (key, 0)
                for key, n in zip(x.position_spaces, x.positions)
            ]
            before, after = axes[: x.channel_axis], axes[x.channel_axis :]
            per_channel = 1
            if x.parts and before:
                raise self.fail(node, "normalizes a channels-last concatenation", module)
        dim = len(before)
        for channel, part in self.parts_of(x, dim, per_channel):
            self.layer += 1
            if weight:
                self.add_param(path, "weight", "weight", [*before, (channel, 0), *after], part)
            if bias:
                lifted = [(k, 1 if isinstance(k, int) else 0) for k, _ in (*before, *after)]
                self.add_param(
                    path,
                    "bias",
                    "bias",
                    [*lifted[: len(before)], (channel, 1), *lifted[len(before) :]],
                    part,
                )

    def _last_axis_params(self, path: str, x: Label, weight: bool, bias: bool) -> None:
        """Affine parameters over the last axis: the channel (one tensor per part) or a
        position axis (fixed, or the space a token-mixing layer wrote)."""
        if x.channel_axis == len(x.positions):
            for key, part in self.parts_of(x, 0):
                self.layer += 1
                if weight:
                    self.add_param(path, "weight", "weight", [(key, 0)], part)
                if bias:
                    self.add_param(path, "bias", "bias", [(key, 1)], part)
            return
        last = x.position_spaces[-1]
        self.layer += 1
        if last is None:
            fixed = self.fixed_space("x", x.positions[-1], "positions")
            if weight:
                self.add_param(path, "weight", "weight", [(fixed, 0)])
            if bias:
                self.add_param(path, "bias", "bias", [(fixed, 0)])
            return
        if weight:
            self.add_param(path, "weight", "weight", [(last, 0)])
        if bias:
            self.add_param(path, "bias", "bias", [(last, 1)])
