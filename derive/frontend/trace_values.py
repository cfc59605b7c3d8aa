"""What operations without parameters (or with one per channel) do to the spaces of the values
they read: activations, pooling, reshapes, additions, products, concatenations, rounding."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch.fx as fx

from derive.frontend import trace_ops as ops
from derive.frontend.trace_axes import AxisRules
from derive.frontend.trace_state import Label, shape_of, where_of
from derive.weightspace.model import Scaling

__all__ = ["ValueRules"]


class ValueRules(AxisRules):
    """Operations shared by modules, functions and tensor methods."""

    def activation(self, node: fx.Node, x: Label, name: str, where: str) -> Label:
        for key in dict.fromkeys(self.root_of(k) for k in x.all_spaces):
            self.spaces[key].activations.append((name, where))
        return x

    def softmax(self, node: fx.Node, x: Label, where: str) -> Label:
        self.constrain(x, Scaling.NONE, f"{where} (normalizes across neurons; no scaling passes)")
        return x

    def pool(self, node: fx.Node, x: Label, is_max: bool, what: str) -> Label:
        out_shape = shape_of(node)
        in_shape = shape_of(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        if x.flat or out_shape is None or in_shape is None or out_shape[:2] != in_shape[:2]:
            raise self.fail(node, "pools over something other than spatial positions")
        self.require_plain(node, x, what)
        if is_max:
            self.constrain(
                x,
                Scaling.POSITIVE,
                f"{what} in '{where_of(node)}' (max commutes with positive scaling; "
                "a sign flip turns max into min)",
            )
        spread = math.prod(in_shape[2:]) == 1 and math.prod(out_shape[2:]) > 1
        return replace(x, positions=out_shape[2:], copies=x.copies or spread)

    def spatial(self, node: fx.Node, x: Label, pad_value: float, what: str) -> Label:
        """Resampling or padding of the spatial positions, channel by channel."""
        if pad_value != 0:
            self.constrain(
                x,
                Scaling.NONE,
                f"{what} in '{where_of(node)}' pads with the constant {pad_value:g}",
            )
        label = self.pool(node, x, False, what)
        if "pad" in what.lower():  # padded positions are not copies of the others
            return replace(label, copies=False)
        return label

    def add(self, node: fx.Node, operands: Sequence[Any]) -> Label:
        labelled = [a for a in operands if isinstance(a, fx.Node) and a in self.labels]
        others = [a for a in operands if not (isinstance(a, fx.Node) and a in self.labels)]
        if len(labelled) == 2:
            a, b = (self.labels[n] for n in labelled)
            shapes = {shape_of(n) for n in labelled}
            if a.channel_axis != b.channel_axis and len(shapes) == 1:
                a, b = self._same_layout(a, b)
            if len(shapes) != 1 or a.positions != b.positions or a.flat != b.flat:
                raise self.fail(
                    node, f"adds tensors of different shapes {sorted(map(str, shapes))}"
                )
            if a.channel_axis != b.channel_axis:
                raise self.fail(
                    node,
                    f"adds a value with channels at dim {1 + a.channel_axis} to one with "
                    f"channels at dim {1 + b.channel_axis}",
                )
            self._tie_positions(node, a, b)
            a = self.tie_channels(node, a, b, f"the addition in '{where_of(node)}'")
            return replace(a, copies=a.copies and b.copies)
        (x,) = (self.labels[n] for n in labelled)
        views = [o for o in others if isinstance(o, fx.Node) and o in self.param_views]
        if len(views) == 1 and len(others) == 1:
            return self.channel_shift(node, x, views[0])
        if any(isinstance(o, fx.Node) for o in others):
            raise self.fail(node, "adds a tensor that does not come from the network input")
        if any(o != 0 for o in others):
            self.constrain(
                x, Scaling.NONE, f"the constant added in '{where_of(node)}' (shifts break scaling)"
            )
        return x

    def _same_layout(self, a: Label, b: Label) -> tuple[Label, Label]:
        """``a`` and ``b`` with their channel axes at one dim, when one of them can read the
        other's channel dim as its channel (tokens as channels with the embedding a layer wrote
        behind them, added to the embedding as channels); else unchanged."""
        if a.flat or b.flat:
            return a, b
        swapped = self.swap_channel(b, a.channel_axis)
        if swapped is not None:
            return a, swapped
        swapped = self.swap_channel(a, b.channel_axis)
        return (swapped, b) if swapped is not None else (a, b)

    def _tie_positions(self, node: fx.Node, a: Label, b: Label) -> None:
        """Positions added together are one index set: spaces a layer wrote on a token axis
        are tied, or become fixed where the other value's positions are fixed."""
        why = f"the addition in '{where_of(node)}'"
        for key_a, key_b in zip(a.position_spaces, b.position_spaces):
            if key_a is not None and key_b is not None:
                self.tie(key_a, key_b, why)
            elif key_a is not None or key_b is not None:
                self.fix(key_a if key_a is not None else key_b, why)  # type: ignore[arg-type]

    def scale(self, node: fx.Node, operands: Sequence[Any], divides: bool) -> Label:
        labelled = [a for a in operands if isinstance(a, fx.Node) and a in self.labels]
        others = [
            a
            for a in operands
            if isinstance(a, fx.Node) and a not in labelled and not ops.is_number(a)
        ]
        if not divides and len(labelled) == 2:
            return self.gate(node, [self.labels[a] for a in labelled])
        if (
            not divides
            and len(labelled) == 1
            and len(others) == 1
            and others[0] in self.param_views
        ):
            return self.channel_scale(node, self.labels[labelled[0]], others[0])
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
        out_shape = shape_of(node)
        assert out_shape is not None
        a, b = factors
        aligned = len(a.positions) == len(b.positions) and (
            a.positions == b.positions or 1 in (math.prod(a.positions), math.prod(b.positions))
        )
        if (
            a.flat
            or b.flat
            or self.channels(a) != self.channels(b)
            or not aligned
            or a.channel_axis != b.channel_axis
            or any(k is not None for k in (*a.axis_spaces, *b.axis_spaces))
        ):
            raise self.fail(
                node,
                "multiplies activations of different channels; only gates x * g(x) with one "
                "value per channel (and position) are supported",
            )
        a = self.tie_channels(node, a, b, f"the gate in '{where_of(node)}'")
        b = self.resolve(b)
        self.constrain(
            a,
            Scaling.NONE,
            f"the gate x * g in '{where_of(node)}' (a product of two activations of the space: "
            "no scaling passes)",
        )
        wide = a if tuple(out_shape[2:]) == a.positions else b
        return replace(wide, copies=a.copies and b.copies)

    def cat(self, node: fx.Node) -> Label:
        """Concatenation along the channel axis: a direct sum of the parts' spaces (each part
        keeps its own permutation and scaling; layers reading it get one weight per part)."""
        values = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if not isinstance(values, (list, tuple)) or not values:
            raise self.fail(node, "concatenates something other than a list of tensors")
        labelled = [v for v in values if isinstance(v, fx.Node) and v in self.labels]
        first = self.label(node, labelled[0] if labelled else None, "a concatenated tensor")
        rank = 2 + (0 if first.flat else len(first.positions))
        if isinstance(dim, int) and dim % rank not in (0, 1 + first.channel_axis):
            return self.token_cat(node, values, dim)
        labels = [self.label(node, value, "a concatenated tensor") for value in values]
        if not isinstance(dim, int) or dim % rank != 1 + first.channel_axis:
            raise self.fail(
                node,
                f"concatenates along dim {dim}; only the channel axis (dim "
                f"{1 + first.channel_axis}) is supported",
            )
        if any(
            x.flat
            or x.positions != first.positions
            or x.channel_axis != first.channel_axis
            or x.axis_spaces
            for x in labels
        ):
            raise self.fail(
                node,
                "concatenates tensors of different layouts or spatial shapes, flattened ones, "
                "or ones with positions a layer wrote",
            )
        segments: list[tuple[int, int, int]] = []
        offset = 0
        for x in labels:
            segments += [(key, offset + start, step) for key, start, step in self.segments(x)]
            offset += self.channels(x)
        joined = Label(
            first.space,
            first.positions,
            copies=all(x.copies for x in labels),
            channel_axis=first.channel_axis,
        )
        return self.with_segments(joined, segments)

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
            f"{ops.target_name(node.target)} in '{where_of(node)}' rounds (floor(d x) differs "
            "from d floor(x))",
        )
        return x

    def reduce(self, node: fx.Node, x: Label, is_max: bool) -> Label:
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        listed = (
            [dims]
            if isinstance(dims, int)
            else list(dims)
            if isinstance(dims, (list, tuple))
            else []
        )
        if not listed or x.flat or any(not isinstance(d, int) for d in listed):
            raise self.fail(
                node, "reduces over neurons; only reductions over position axes are supported"
            )
        if x.plain:
            rank = 2 + len(x.positions)
            if any(d % rank < 2 for d in listed):
                raise self.fail(
                    node, f"reduces over dims {dims}; only spatial axes (2 and up) are supported"
                )
            return self.pool(node, x, is_max, ops.target_name(node.target))
        return self.reduce_positions(node, x, is_max, listed)
