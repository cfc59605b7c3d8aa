"""Where the channel axis goes: permutes and transposes (channels-last and token layouts),
reshapes that keep the channel axis whole, reductions over positions, and parameters used
directly in ``forward`` (layer scales, per-channel affines, position embeddings)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from derive.frontend.trace_state import Label, WalkState, shape_of, where_of
from derive.weightspace.model import Scaling

__all__ = ["AxisRules"]


class AxisRules(WalkState):
    """Layouts: channel axis and position axes through reorderings, reshapes and reductions."""

    def require_plain(
        self, node: fx.Node, x: Label, what: str, module: nn.Module | None = None
    ) -> None:
        """Convolutions, BatchNorm and pools read (batch, channels, positions...) only."""
        if x.flat:
            return
        if x.channel_axis != 0:
            raise self.fail(
                node,
                f"{what} reads dim 1 as channels, but the channel axis of this value is dim "
                f"{1 + x.channel_axis} (permute it back to channels first)",
                module,
            )
        if not x.plain:
            raise self.fail(node, f"{what} of positions that a layer wrote (token mixing)", module)

    def constrain_keys(self, keys: Sequence[int], scaling: Scaling, why: str) -> None:
        for key in dict.fromkeys(self.root_of(k) for k in keys):
            self.spaces[key].constraints.append((scaling, why))

    def tie_channels(
        self, node: fx.Node, a: Label, b: Label, why: str, inverse: bool = False
    ) -> Label:
        """Channel c of ``a`` and channel c of ``b`` are one neuron (an addition, a gate):
        split the spaces of either at the other's part bounds, then tie part by part
        (``inverse``: ``b``'s neurons scale inversely, the keys of ``q . k``).
        Returns ``a`` brought up to date."""
        if self.channels(a) != self.channels(b):
            raise self.fail(
                node, f"combines {self.channels(a)} channels with {self.channels(b)} channels"
            )
        for x, y in ((a, b), (b, a)):
            starts = [start for _, start, step in self.segments(self.resolve(x)) if step == 1]
            self.cut_at(y, starts, why)
        a, b = self.resolve(a), self.resolve(b)
        seg_a = sorted(self.segments(a), key=lambda s: s[1])
        seg_b = sorted(self.segments(b), key=lambda s: s[1])
        shapes_a = [(start, step, self.size_of(k)) for k, start, step in seg_a]
        shapes_b = [(start, step, self.size_of(k)) for k, start, step in seg_b]
        if shapes_a != shapes_b:
            raise self.fail(
                node,
                "combines channel axes whose parts interleave differently (a channel shuffle "
                "on one side only)",
            )
        for (key_a, _, _), (key_b, _, _) in zip(seg_a, seg_b):
            self.tie(key_a, key_b, why, inverse)
        return self.resolve(a)

    def whole_key(self, x: Label) -> int | None:
        """The one space whose parts are exactly the channel axis of ``x`` in order (its own
        space, or the space its parts were split from), or None."""
        segments = self.segments(self.resolve(x))
        position = 0
        for key, start, step in segments:
            if start != position or step != 1:
                return None
            position += self.size_of(key)
        leaves = [key for key, _, _ in segments]
        if len(leaves) == 1:
            return leaves[0]
        return next(
            (k for k, r in self.spaces.items() if r.children and self.leaves(k) == leaves), None
        )

    def swap_channel(self, x: Label, axis: int) -> Label | None:
        """``x`` with non-batch axis ``axis`` (a position axis a layer wrote) read as its
        channel axis, and the channel axis as a position axis with its space; None when the
        channel axis is not one space or the position axis has none. Both describe the same
        tensor: tokens as channels with an embedding a layer wrote behind them, or the
        embedding as channels with the tokens before it."""
        layout = x.layout()
        key = layout[axis]
        if key == -1:
            return x
        if key is None or x.flat or x.shuffle is not None:
            return None
        channel = self.whole_key(x)
        if channel is None:
            return None
        axes = self.axes_of(x)
        axes[x.channel_axis] = (channel, axes[x.channel_axis][1])
        axes[axis] = (-1, axes[axis][1])
        return self.resolve(self.with_axes(replace(x, space=key, parts=(), strides=()), axes))

    # -- layouts --------------------------------------------------------------------------
    def axes_of(self, x: Label) -> list[tuple[int | None, int]]:
        """Per non-batch axis of an unflattened value: ``(-1, channels)`` for the channel
        axis, else ``(its space or None, its size)``."""
        sizes = list(x.positions)
        sizes.insert(x.channel_axis, self.channels(x))
        return list(zip(x.layout(), sizes))

    def with_axes(self, x: Label, axes: Sequence[tuple[int | None, int]]) -> Label:
        """``x`` with its non-batch axes replaced by ``axes`` (as :meth:`axes_of` gives)."""
        channel_axis = [axis for axis, _ in axes].index(-1)
        rest = [(axis, size) for axis, size in axes if axis != -1]
        spaces = tuple(axis for axis, _ in rest)
        return replace(
            x,
            positions=tuple(size for _, size in rest),
            channel_axis=channel_axis,
            axis_spaces=spaces if any(k is not None for k in spaces) else (),
        )

    def permute(self, node: fx.Node, x: Label, order: list[int]) -> Label:
        """Reorder the axes: the channel axis and every position (fixed or written by a
        layer) move with them."""
        if x.shuffle is not None:
            swap = [0, 2, 1, *range(3, len(order))]
            if order != swap:
                raise self.fail(
                    node,
                    f"reorders axes {order} of a channel axis viewed as (groups, channels per "
                    "group); only swapping the two (a channel shuffle) is supported",
                )
            groups, per_group, swapped = x.shuffle
            return replace(x, shuffle=(groups, per_group, not swapped))
        if x.flat and x.positions:
            raise self.fail(node, "permutes a flattened feature map (channels and positions)")
        rank = 2 + len(x.positions)
        if sorted(order) != list(range(rank)) or order[0] != 0:
            raise self.fail(node, f"reorders axes {order}; the batch axis (dim 0) must stay first")
        axes = self.axes_of(x)
        return self.with_axes(x, [axes[d - 1] for d in order[1:]])

    def reshape(self, node: fx.Node, x: Label) -> Label:
        """Reshapes that keep the channel axis whole: flattening channels-first maps into
        (batch, features), or regrouping the positions on either side of the channel; and the
        two views of a channel shuffle."""
        out_shape = shape_of(node)
        in_shape = shape_of(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        assert out_shape is not None and in_shape is not None
        if x.shuffle is not None:
            return self._end_shuffle(node, x, out_shape)
        if out_shape == in_shape:
            return x
        size = self.channels(x)
        if (
            x.plain
            and not x.flat
            and len(out_shape) == len(in_shape) + 1
            and out_shape[3:] == in_shape[2:]
            and out_shape[1] * out_shape[2] == size
            and min(out_shape[1], out_shape[2]) > 1
        ):
            return replace(x, shuffle=(out_shape[1], out_shape[2], False))
        count = math.prod(x.positions)
        if (not x.flat and x.plain) or (not x.flat and count == 1):
            if len(out_shape) == 2 and out_shape[1] == size * count:
                if count == 1:
                    return replace(x, positions=(), channel_axis=0, axis_spaces=(), copies=False)
                if x.strides:
                    raise self.fail(
                        node,
                        f"flattens {in_shape} after a channel shuffle; pool the positions "
                        "first (interleaved channels with positions behind them)",
                    )
                if x.channel_axis == 0:
                    return replace(x, flat=True)
            if x.plain:
                split = self._channel_position(out_shape, x, size)
                if split is not None:
                    positions = out_shape[1:split] + out_shape[split + 1 :]
                    return replace(x, positions=positions, channel_axis=split - 1)
        elif not x.flat:
            raise self.fail(
                node, f"reshapes {in_shape} to {out_shape}, across positions a layer wrote"
            )
        raise self.fail(
            node,
            f"reshapes {in_shape} to {out_shape}; only flattening (batch, channels, ...) into "
            "(batch, features) or regrouping the positions around the channel axis is supported",
        )

    def _end_shuffle(self, node: fx.Node, x: Label, out_shape: tuple[int, ...]) -> Label:
        """The view back to (batch, channels, positions...): after the swap, channel
        ``a * per_group + b`` moves to ``b * groups + a`` (every part of the channel axis
        within one group of the view is split at the group bounds first)."""
        assert x.shuffle is not None
        groups, per_group, swapped = x.shuffle
        if tuple(out_shape[2:]) != x.positions or out_shape[1] != groups * per_group:
            raise self.fail(
                node,
                f"reshapes a channel axis viewed as ({groups}, {per_group}) to {out_shape}; "
                "only merging the two back is supported",
            )
        x = replace(x, shuffle=None)
        if not swapped:
            return x
        why = f"the channel shuffle in '{where_of(node)}'"
        x = self.cut_at(x, range(per_group, groups * per_group, per_group), why)
        moved = []
        for key, start, step in self.segments(x):
            block = start // per_group
            moved.append((key, (start - block * per_group) * groups + block, step * groups))
        moved.sort(key=lambda segment: segment[1])
        return self.with_segments(replace(x, parts=(), strides=()), moved)

    def chunks(self, node: fx.Node, x: Label, sizes: list[int], dim: int) -> None:
        """``chunk`` or ``split`` along the channel axis: one label per piece (spaces that
        straddle a bound are split), read by the ``getitem`` nodes that follow."""
        rank = 2 + len(x.positions)
        if x.flat or dim % rank != 1 + x.channel_axis:
            raise self.fail(
                node, f"splits along dim {dim}; only the channel axis (dim {1 + x.channel_axis})"
            )
        if any(self.record(key).is_input for key in x.members):
            raise self.fail(node, "splits the channels of the network input")
        why = f"the split in '{where_of(node)}'"
        bounds = [0, *itertools.accumulate(sizes)]
        for lo, hi in itertools.pairwise(bounds):
            self.select(self.resolve(x), lo, hi, why)
        x = self.resolve(x)
        self.tuples[node] = [self.select(x, lo, hi, why) for lo, hi in itertools.pairwise(bounds)]

    def _channel_position(self, out_shape: tuple[int, ...], x: Label, size: int) -> int | None:
        """The dim of ``out_shape`` that is the channel axis, if the reshape regroups only the
        positions before it and those after it (the one nearest the old place wins)."""
        before = math.prod(x.positions[: x.channel_axis])
        after = math.prod(x.positions[x.channel_axis :])
        fits = [
            j
            for j in range(1, len(out_shape))
            if out_shape[j] == size
            and math.prod(out_shape[1:j]) == before
            and math.prod(out_shape[j + 1 :]) == after
        ]
        return min(fits, key=lambda j: abs(j - 1 - x.channel_axis)) if fits else None

    def reduce_positions(self, node: fx.Node, x: Label, is_max: bool, dims: list[int]) -> Label:
        """A mean, sum or max over position axes of any layout (``dims`` of the full shape)."""
        rank = 2 + len(x.positions)
        axes = sorted({d % rank for d in dims})
        if 0 in axes or 1 + x.channel_axis in axes:
            raise self.fail(
                node, f"reduces over dims {dims}; only position axes (not batch or channel) are"
            )
        keepdim = bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))
        entries = self.axes_of(x)
        where = where_of(node)
        reduced = [k for d in axes if (k := entries[d - 1][0]) is not None]
        self.constrain_keys(reduced, Scaling.NONE, f"the reduction over neurons in '{where}'")
        if is_max:
            self.constrain(
                x, Scaling.POSITIVE, f"the maximum in '{where}' (a sign flip turns max into min)"
            )
        kept: list[tuple[int | None, int]] = []
        for d, entry in enumerate(entries):
            if d + 1 not in axes:
                kept.append(entry)
            elif keepdim:
                kept.append((None, 1))
        out = self.with_axes(x, kept)
        return replace(out, copies=x.copies and math.prod(out.positions) > 1)

    # -- parameters used directly ---------------------------------------------------------
    def param_axes(
        self,
        node: fx.Node,
        x: Label,
        view: fx.Node,
        character: int,
        what: str,
        own_shape: bool = False,
    ) -> tuple[str, str, list[tuple[int | str, int]]]:
        """The module path, attribute and axes of a parameter broadcast against ``x``: one
        axis per dim it does not broadcast (the channel axis with ``character``, positions
        fixed or their layer's space). ``own_shape``: use the parameter's shape rather than
        its view's (a view expanded over the batch)."""
        target = self.param_views[view]
        module_path, _, attr = target.rpartition(".")
        value = getattr(self.modules[module_path], attr, None)
        shape = (None if own_shape else shape_of(view)) or (
            tuple(value.shape) if isinstance(value, torch.Tensor) else ()
        )
        rank = 1 + len(x.positions)
        wide = (1,) * (rank + 1 - len(shape)) + tuple(shape)
        entries = self.axes_of(x)
        sizes = [size for _, size in entries]
        fits = (
            isinstance(value, nn.Parameter)
            and len(wide) == rank + 1
            and wide[0] == 1
            and not x.flat
            and not x.parts
            and all(n in (1, size) for n, size in zip(wide[1:], sizes))
            and wide[1 + x.channel_axis] == sizes[x.channel_axis]
        )
        if not fits:
            raise self.fail(
                node,
                f"{what} '{target}' of shape {tuple(shape)}; only parameters with one value per "
                "channel (possibly also per position) are supported",
            )
        if any(p.source_key == target for p in self.params):
            raise self.fail(node, f"uses the parameter '{target}' twice")
        axes: list[tuple[int | str, int]] = []
        for (axis, _), n in zip(entries, wide[1:]):
            if n == 1:
                continue
            if axis == -1:
                axes.append((x.space, character))
            elif axis is None:
                axes.append((self.fixed_space("x", n, "positions"), 0))
            else:
                axes.append((axis, character))
        return module_path, attr, axes

    def channel_scale(self, node: fx.Node, x: Label, view: fx.Node) -> Label:
        """``gamma * x`` with a parameter of one value per channel (layer scale, an affine's
        weight): a tensor of the weight space, character 0 (the product scales with x)."""
        module_path, attr, axes = self.param_axes(node, x, view, 0, "multiplies activations by")
        self.layer += 1
        self.add_param(module_path, attr, "weight", axes)
        return x

    def channel_shift(self, node: fx.Node, x: Label, view: fx.Node) -> Label:
        """``x + beta`` with a parameter per channel (an affine's bias, a position
        embedding): a bias of the weight space, character 1 (it scales with x)."""
        module_path, attr, axes = self.param_axes(node, x, view, 1, "adds to activations")
        last = self.params[-1] if self.params else None
        if (
            last
            and last.module == module_path
            and last.kind == "weight"
            and last.layer == self.layer
        ):
            self.add_param(module_path, attr, "bias", axes)  # the bias of an affine
        else:  # a term of its own (a position embedding): a layer's weight tensor
            self.layer += 1
            self.add_param(module_path, attr, "weight", axes)
        return x

    def token_cat(self, node: fx.Node, values: Sequence[Any], dim: int) -> Label:
        """Concatenation along a fixed position axis (a class token put before the patch
        tokens): the values share their channel space, and a parameter among them (expanded
        over the batch) is a tensor on the channel axis with character +1, like the
        activations it joins (a layer of its own)."""
        labelled = [self.labels[v] for v in values if isinstance(v, fx.Node) and v in self.labels]
        tokens = [v for v in values if isinstance(v, fx.Node) and v in self.param_views]
        if not labelled or len(labelled) + len(tokens) != len(values):
            raise self.fail(
                node, "concatenates tensors that are neither activations nor parameters"
            )
        first = labelled[0]
        rank = 2 + len(first.positions)
        axis = dim % rank - 1
        position = axis - (axis > first.channel_axis)
        if (
            first.flat
            or axis == first.channel_axis
            or any(x.channel_axis != first.channel_axis for x in labelled)
            or any(key is not None for x in labelled for key in x.position_spaces)
        ):
            raise self.fail(
                node,
                f"concatenates along dim {dim}; only the channel axis or fixed positions "
                "(tokens) are supported",
            )
        why = f"the concatenation of tokens in '{where_of(node)}'"
        joined = first
        for x in labelled[1:]:
            joined = self.tie_channels(node, joined, x, why)
        if joined.parts:
            raise self.fail(node, "concatenates tokens whose channels are several spaces")
        for token in tokens:
            module_path, attr, axes = self.param_axes(
                node, joined, token, 1, "concatenates with", own_shape=True
            )
            self.layer += 1
            self.add_param(module_path, attr, "weight", axes)
        out_shape = shape_of(node)
        assert out_shape is not None
        positions = list(joined.positions)
        positions[position] = out_shape[dim % rank]
        return replace(joined, positions=tuple(positions), copies=False)

    def take_positions(self, node: fx.Node, x: Label, index: Any) -> Label:
        """``x[:, 0]`` and the like: an integer picks one entry of a fixed position axis (the
        class token), full slices keep an axis."""
        items = list(index) if isinstance(index, tuple) else [index]
        full = slice(None)
        layout = x.layout()
        if (
            x.flat
            or not items
            or items[0] != full
            or len(items) > 1 + len(layout)
            or any(item != full and not isinstance(item, int) for item in items[1:])
            or any(
                isinstance(item, int) and layout[d] is not None for d, item in enumerate(items[1:])
            )
        ):
            raise self.fail(
                node,
                f"indexes activations with {index!r}; only picking entries of fixed position "
                "axes (x[:, 0]) is supported",
            )
        picked = {d for d, item in enumerate(items[1:]) if isinstance(item, int)}
        kept = [entry for d, entry in enumerate(self.axes_of(x)) if d not in picked]
        out = self.with_axes(x, kept)
        return replace(out, copies=x.copies and len(out.positions) > 0)

    def affine(self, node: fx.Node, operands: Sequence[Any]) -> Label:
        """``torch.addcmul(beta, alpha, x)``: ``beta + alpha * x`` with per-channel
        parameters (timm's Affine)."""
        shift, *factors = operands[:3]
        labelled = [a for a in factors if isinstance(a, fx.Node) and a in self.labels]
        views = [a for a in factors if isinstance(a, fx.Node) and a in self.param_views]
        value = node.kwargs.get("value", operands[3] if len(operands) > 3 else 1)
        if (
            len(labelled) != 1
            or len(views) != 1
            or not (isinstance(shift, fx.Node) and shift in self.param_views)
            or value != 1
        ):
            raise self.fail(
                node, "only addcmul(beta, alpha, x) with per-channel parameters is supported"
            )
        x = self.channel_scale(node, self.labels[labelled[0]], views[0])
        return self.channel_shift(node, x, shift)
