"""Attention written by hand: a projection's output viewed as (heads, head dimensions), the
queries contracted with the keys over the head dimensions (``q @ k.transpose(-2, -1)`` or
``F.scaled_dot_product_attention``), the attention weights scaled, masked and normalized, then
applied to the values and the heads merged back.

Inside attention a value is a :class:`Heads`: the channel axis of a value outside (its
``source``) viewed as factor axes (``(3, heads, head_dim)`` for a packed projection), with the
batch and token axes around them in any order. Per head, ``q . k`` ties the query's head
dimensions to the key's with inverse factors (the key rows carry character -1), and the values'
head dimensions pass through linearly: the group of ``nn.MultiheadAttention`` (docs/math.md
section 8.6). The attention weights are a :class:`Scores`: read only by scaling, masks that do
not depend on the activations, softmax over the keys, dropout, and ``@ v``.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from derive.frontend import trace_ops as ops
from derive.frontend.trace_axes import AxisRules
from derive.frontend.trace_state import Label, flat_args, shape_of, where_of
from derive.weightspace.model import QUERY_KEY_REASON, VALUE_REASON, Scaling

__all__ = ["AttentionRules", "Heads", "Scores"]

MATMUL_FUNCTIONS: tuple[Any, ...] = (operator.matmul, torch.matmul)
MATMUL_METHODS: frozenset[str] = frozenset({"matmul", "__matmul__"})
#: reshapes that may view an embedding as (heads, head dimensions) or merge the heads back
HEAD_RESHAPE_METHODS: frozenset[str] = ops.RESHAPE_METHODS | {"unflatten"}
HEAD_RESHAPE_FUNCTIONS: tuple[Any, ...] = (*ops.RESHAPE_FUNCTIONS, torch.unflatten)
MASK_METHODS: frozenset[str] = frozenset({"masked_fill", "masked_fill_"})
#: timm's mask helpers (wrapped as single fx calls): the mask they build depends on shapes only
TIMM_MASK_HELPERS: frozenset[str] = frozenset({"resolve_self_attn_mask", "maybe_add_mask"})


@dataclass(frozen=True)
class _Dim:
    """One axis of a value inside attention: the batch, tokens, or a factor of the channels."""

    kind: str  # batch | tokens | factor
    size: int
    #: tokens: the space a layer wrote on the axis, or None for fixed positions
    space: int | None = None
    #: factor: channels between consecutive entries
    stride: int = 1
    #: tokens: the axis is the channel axis of the value outside attention (tokens as channels)
    channel: bool = False


@dataclass(frozen=True)
class Heads:
    """The channel axis of ``source`` viewed as factor axes among ``dims`` (every axis of the
    tensor, the batch included): the entry at factor indices ``i`` is channel
    ``offset + sum(i * stride)``."""

    source: Label
    dims: tuple[_Dim, ...]
    offset: int = 0

    def factors(self) -> list[int]:
        return [d for d, dim in enumerate(self.dims) if dim.kind == "factor"]


@dataclass(frozen=True)
class Scores:
    """Attention weights: the ``lead`` axes (batch and heads) of the queries, then the query
    tokens and the key tokens; ``masked`` once a mask was applied."""

    lead: tuple[_Dim, ...]
    query: _Dim
    key: _Dim
    masked: bool = False
    #: per head, the spaces of its query (and key) dimensions
    query_keys: tuple[tuple[int, ...], ...] = ()


def _is_call(node: fx.Node, methods: frozenset[str], functions: Sequence[Any]) -> bool:
    if node.op == "call_method":
        return node.target in methods
    return node.op == "call_function" and any(node.target is f for f in functions)


def _timm_helper(node: fx.Node) -> str | None:
    """The name of a timm mask helper called by ``node``, or None."""
    name = getattr(node.target, "__name__", "")
    module = str(getattr(node.target, "__module__", ""))
    if node.op == "call_function" and name in TIMM_MASK_HELPERS and module.startswith("timm"):
        return str(name)
    return None


class AttentionRules(AxisRules):
    """Hand-written attention: head views, the ``q . k`` contraction and the attention
    weights applied to the values."""

    def __init__(self, root: nn.Module, where: str) -> None:
        super().__init__(root, where)
        self.heads: dict[fx.Node, Heads] = {}
        self.scores: dict[fx.Node, Scores] = {}
        self.head_tuples: dict[fx.Node, list[Heads]] = {}

    # -- the step of the walk -------------------------------------------------------------
    def attention_step(self, node: fx.Node) -> bool:
        """Apply the attention rules to ``node``: False when it has nothing to do with
        attention (neither reads a head view or attention weights, nor computes them)."""
        if node.op == "call_function" and node.target is F.scaled_dot_product_attention:
            self._sdpa(node)
            return True
        inside = [a for a in self._node_args(node) if self._inside(a)]
        if _is_call(node, MATMUL_METHODS, MATMUL_FUNCTIONS):
            a, b = node.args[:2] if len(node.args) > 1 else (None, None)
            if all(
                isinstance(v, fx.Node) and (v in self.labels or self._inside(v)) for v in (a, b)
            ):
                assert isinstance(a, fx.Node) and isinstance(b, fx.Node)
                self._matmul(node, a, b)
                return True
        if not inside:
            return self._enter_heads(node)
        if ops.is_shape_query(node):  # k.size(-1), q.shape: numbers
            return True
        first = node.args[0] if node.args else None
        if node.op == "call_function" and node.target is operator.getitem and first in inside:
            assert isinstance(first, fx.Node)
            if first in self.head_tuples:
                self._store(node, self._tuple_item(node, first))
                return True
        if any(a in self.scores for a in inside):
            self._scores_step(node, inside)
        else:
            self._heads_step(node, inside)
        return True

    def _tuple_item(self, node: fx.Node, pieces: fx.Node) -> Heads:
        """``q, k, v = qkv.unbind(0)``: one of the pieces."""
        index = node.args[1]
        if not isinstance(index, int):
            raise self.fail(node, "indexes the pieces of an unbind with a non-integer")
        return self.head_tuples[pieces][index]

    def _node_args(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in flat_args((node.args, node.kwargs)) if isinstance(a, fx.Node)]

    def _inside(self, value: Any) -> bool:
        return value in self.heads or value in self.scores or value in self.head_tuples

    def _store(self, node: fx.Node, value: Heads) -> None:
        """Record a head view, or the label it is once it has one factor left (the heads
        merged back)."""
        label = self._as_label(node, value)
        if label is None:
            self.heads[node] = value
        else:
            self.labels[node] = label

    # -- into and out of head views ---------------------------------------------------------
    def _enter_heads(self, node: fx.Node) -> bool:
        """A reshape of a value's last axis, the channels a layer wrote, into factors
        ``(heads, head_dim)`` (or ``(3, heads, head_dim)``): each factor's bounds become bounds
        of parts, the coarse ones first."""
        if not _is_call(node, HEAD_RESHAPE_METHODS, HEAD_RESHAPE_FUNCTIONS):
            return False
        first = node.args[0] if node.args else None
        if not (isinstance(first, fx.Node) and first in self.labels):
            return False
        x = self.labels[first]
        in_shape, out_shape = shape_of(first), shape_of(node)
        if in_shape is None or out_shape is None or x.flat or not x.positions:
            return False
        rank = len(in_shape)
        if (
            x.shuffle is not None
            or len(out_shape) <= rank
            or out_shape[: rank - 1] != in_shape[:-1]
            or math.prod(out_shape[rank - 1 :]) != in_shape[-1]
            or x.layout()[-1] is None
        ):
            return False
        heads = self._reshape(node, self._label_heads(node, first, -1), out_shape)
        why = f"the heads in '{where_of(node)}'"
        for dim in sorted((heads.dims[d] for d in heads.factors()), key=lambda d: -d.stride):
            end = heads.offset + in_shape[-1]
            if dim.stride > 1:
                self.cut_at(self.resolve(heads.source), range(heads.offset, end, dim.stride), why)
        self._store(node, heads)
        return True

    def _label_heads(self, node: fx.Node, value: fx.Node, dim: int) -> Heads:
        """A labelled value with its axis ``dim`` (the embedding) as one factor: its channel
        axis, or a position axis a layer wrote (then the channel axis holds the tokens)."""
        x = self.labels[value]
        shape = shape_of(value)
        assert shape is not None
        rank = len(shape)
        axis = dim % rank - 1
        if x.flat or x.shuffle is not None or axis < 0:
            raise self.fail(node, f"reads dim {dim % rank} of {shape} as attention heads")
        tokens_axis = x.channel_axis
        swapped = self.swap_channel(x, axis)
        if swapped is None:
            raise self.fail(
                node,
                f"reads dim {dim % rank} of {shape} as head dimensions; only channels a layer "
                "wrote (the output of a projection) are supported",
            )
        dims = [_Dim("batch", shape[0])]
        for index, (key, size) in enumerate(self.axes_of(swapped)):
            if key == -1:
                dims.append(_Dim("factor", size))
            else:
                dims.append(
                    _Dim("tokens", size, key, channel=swapped is not x and index == tokens_axis)
                )
        return Heads(replace(swapped, positions=(), axis_spaces=(), channel_axis=0), tuple(dims))

    def _as_heads(self, node: fx.Node, value: fx.Node, dim: int) -> Heads:
        if value in self.heads:
            return self.heads[value]
        if value in self.labels:
            return self._label_heads(node, value, dim)
        raise self.fail(node, "multiplies attention weights or tuples of heads by each other")

    def _as_label(self, node: fx.Node, heads: Heads) -> Label | None:
        """The label of a head view with one factor of contiguous channels and the batch
        first: the heads merged back (tokens as channels again where they were)."""
        factors = heads.factors()
        if len(factors) != 1 or heads.dims[0].kind != "batch":
            return None
        dim = heads.dims[factors[0]]
        if any(d.kind == "batch" for d in heads.dims[1:]) or (dim.stride != 1 and dim.size > 1):
            return None
        why = f"the heads merged in '{where_of(node)}'"
        source = self.resolve(heads.source)
        channel = self.select(source, heads.offset, heads.offset + dim.size, why)
        tokens = [d for d in heads.dims[1:] if d.kind == "tokens"]
        axis = factors[0] - 1
        if len(tokens) == 1 and tokens[0].channel and tokens[0].space is not None and axis == 1:
            whole = self.whole_key(channel)
            if whole is not None:
                return self.resolve(Label(tokens[0].space, (dim.size,), axis_spaces=(whole,)))
        spaces = tuple(d.space for d in tokens)
        return replace(
            channel,
            positions=tuple(d.size for d in tokens),
            channel_axis=axis,
            axis_spaces=spaces if any(k is not None for k in spaces) else (),
            copies=False,
        )

    # -- head views -----------------------------------------------------------------------
    def _heads_step(self, node: fx.Node, inside: list[fx.Node]) -> None:
        """Reshapes, permutes, picking q, k and v, passing through and scaling by numbers."""
        if len(inside) != 1 or inside[0] not in self.heads:
            raise self.fail(node, "combines attention heads with other values")
        heads = self.heads[inside[0]]
        target = node.target
        if self._passes(node):
            self._store(node, heads)
        elif _is_call(node, HEAD_RESHAPE_METHODS, HEAD_RESHAPE_FUNCTIONS):
            out_shape = shape_of(node)
            assert out_shape is not None
            self._store(node, self._reshape(node, heads, out_shape))
        elif _is_call(node, ops.PERMUTE_METHODS, ops.PERMUTE_FUNCTIONS):
            args, kwargs = tuple(node.args), dict(node.kwargs)
            order = ops.axis_order(target, args, kwargs, len(heads.dims))
            self._store(node, replace(heads, dims=tuple(heads.dims[d] for d in order)))
        elif _is_call(node, frozenset({"unbind"}), (torch.unbind,)):
            dim: Any = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            size = heads.dims[int(dim)].size
            self.head_tuples[node] = [self._pick(node, heads, int(dim), i) for i in range(size)]
        elif node.op == "call_function" and target is operator.getitem:
            self._store(node, self._pick_index(node, heads, node.args[1]))
        elif self._scales(node, inside[0]):
            self._store(node, heads)
        else:
            raise self.fail(
                node,
                "acts on a value viewed as (heads, head dimensions); only reshapes, permutes, "
                "picking q, k and v, scaling by a number and attention are supported",
            )

    def _passes(self, node: fx.Node) -> bool:
        """Identity, dropout (eval mode), dtype casts and copies."""
        if node.op == "call_module":
            return isinstance(self.modules[str(node.target)], ops.PASSTHROUGH_MODULES)
        return _is_call(node, ops.PASSTHROUGH_METHODS, ops.PASSTHROUGH_FUNCTIONS)

    def _scales(self, node: fx.Node, value: fx.Node) -> bool:
        """Whether ``node`` multiplies ``value`` by a number or divides it by one."""
        if not _is_call(node, ops.SCALE_METHODS, ops.SCALE_FUNCTIONS):
            return False
        others = [a for a in node.args if a is not value]
        if any(isinstance(a, fx.Node) and not ops.is_number(a) for a in others):
            raise self.fail(
                node,
                "multiplies attention heads or weights by a tensor; only numbers are supported",
            )
        divides = node.target in ops.DIVIDE_FUNCTIONS or str(node.target).startswith("div")
        if divides and node.args[0] is not value:
            raise self.fail(node, "divides by attention heads or weights")
        return True

    def _reshape(self, node: fx.Node, heads: Heads, out_shape: Sequence[int]) -> Heads:
        """Split or merge factor axes; the batch and the tokens keep their own axes."""
        dims, out = list(heads.dims), list(out_shape)
        result: list[_Dim] = []
        i = j = 0
        while i < len(dims) or j < len(out):
            if j < len(out) and out[j] == 1 and (i == len(dims) or dims[i].size != 1):
                result.append(_Dim("factor", 1))  # a new axis of one entry
                j += 1
                continue
            if i < len(dims) and dims[i].size == 1 and (j == len(out) or out[j] != 1):
                if dims[i].kind != "factor":
                    raise self._mixes(node, heads, out_shape)
                i += 1  # a factor of one entry squeezed away
                continue
            group, sizes = [dims[i]], [out[j]]
            i, j = i + 1, j + 1
            while math.prod(d.size for d in group) != math.prod(sizes):
                if math.prod(d.size for d in group) < math.prod(sizes) and i < len(dims):
                    group.append(dims[i])
                    i += 1
                elif j < len(out):
                    sizes.append(out[j])
                    j += 1
                else:
                    raise self._mixes(node, heads, out_shape)
            result += self._regroup(node, heads, out_shape, group, sizes)
        return replace(heads, dims=tuple(result))

    def _regroup(
        self,
        node: fx.Node,
        heads: Heads,
        out_shape: Sequence[int],
        group: list[_Dim],
        sizes: list[int],
    ) -> list[_Dim]:
        """Factor axes ``group`` (slow to fast, contiguous) as axes of ``sizes``."""
        if len(group) == 1 and len(sizes) == 1:
            return group
        factors = [d for d in group if d.size > 1]
        if any(d.kind != "factor" for d in group) or any(
            a.stride != b.size * b.stride for a, b in itertools.pairwise(factors)
        ):
            raise self._mixes(node, heads, out_shape)
        unit = factors[-1].stride if factors else 1
        return [
            _Dim("factor", size, stride=unit * math.prod(sizes[k + 1 :]))
            for k, size in enumerate(sizes)
        ]

    def _mixes(self, node: fx.Node, heads: Heads, out_shape: Sequence[int]) -> Exception:
        shape = tuple(d.size for d in heads.dims)
        kinds = ", ".join(d.kind if d.kind != "factor" else "heads" for d in heads.dims)
        return self.fail(
            node,
            f"reshapes {shape} ({kinds}) to {tuple(out_shape)}, mixing heads or head dimensions "
            "with the tokens or the batch; only splitting the channels into heads and merging "
            "them back in order is supported",
        )

    def _pick_index(self, node: fx.Node, heads: Heads, index: Any) -> Heads:
        """``qkv[0]`` or ``qkv[:, :, 1]``: one entry of a factor axis."""
        items = list(index) if isinstance(index, tuple) else [index]
        picks = [(d, item) for d, item in enumerate(items) if isinstance(item, int)]
        if len(picks) != 1 or any(
            not isinstance(item, int) and item != slice(None) for item in items
        ):
            raise self.fail(
                node, f"indexes attention heads with {index!r}; only picking q, k or v is supported"
            )
        return self._pick(node, heads, *picks[0])

    def _pick(self, node: fx.Node, heads: Heads, dim: int, index: int) -> Heads:
        picked = heads.dims[dim]
        if picked.kind != "factor":
            raise self.fail(node, f"picks one entry of the {picked.kind} axis of attention heads")
        dims = heads.dims[:dim] + heads.dims[dim + 1 :]
        return Heads(heads.source, dims, heads.offset + (index % picked.size) * picked.stride)

    # -- q . k and the attention weights ---------------------------------------------------
    def _matmul(self, node: fx.Node, a: fx.Node, b: fx.Node) -> None:
        if a in self.scores:
            self._store(node, self._apply(node, self.scores[a], self._as_heads(node, b, -1)))
        elif b in self.scores:
            raise self.fail(node, "multiplies by the attention weights from the right")
        else:
            query, key = self._as_heads(node, a, -1), self._as_heads(node, b, -2)
            self.scores[node] = self._contract(node, query, key, -2)

    def _sdpa(self, node: fx.Node) -> None:
        """``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)``."""
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        given: dict[str, Any] = dict(zip(names, node.args))
        given.update(node.kwargs)
        if given.get("enable_gqa"):
            raise self.fail(node, "grouped-query attention (enable_gqa) is not supported")
        masked = self._mask(node, given.get("attn_mask"), "attn_mask") or bool(
            given.get("is_causal", False)
        )
        values = [
            v
            for v in (given.get(name) for name in names[:3])
            if isinstance(v, fx.Node) and (v in self.labels or v in self.heads)
        ]
        if len(values) != 3:
            raise self.fail(node, "reads queries, keys or values that are not projections")
        query, key, value = (self._as_heads(node, v, -1) for v in values)
        scores = replace(self._contract(node, query, key, -1), masked=masked)
        self._store(node, self._apply(node, scores, value))

    def _contract(self, node: fx.Node, query: Heads, key: Heads, key_dim: int) -> Scores:
        """``q . k`` over the head dimensions (the last axis of ``query``, axis ``key_dim`` of
        ``key``), head by head: each head's query and key dimensions are one space, the key's
        with inverse factors."""
        width, depth = query.dims[-1], key.dims[key_dim]
        tokens_q, tokens_k = query.dims[-2], key.dims[-1 if key_dim == -2 else -2]
        lead = self._lead(node, query.dims[:-2], key.dims[:-2])
        if (
            width.kind != "factor"
            or depth.kind != "factor"
            or width.size != depth.size
            or width.stride != 1
            or depth.stride != 1
        ):
            raise self.fail(
                node,
                "contracts axes other than the head dimensions of queries and keys (the last "
                "axis of each, after a projection viewed as (heads, head dimensions))",
            )
        if tokens_q.kind != "tokens" or tokens_k.kind != "tokens":
            raise self.fail(node, "multiplies queries and keys along axes other than the tokens")
        why = f"the attention in '{where_of(node)}'"
        query_keys: list[tuple[int, ...]] = []
        for head, (start_q, start_k) in enumerate(self._starts(lead, query, key)):
            part_q = self.select(self.resolve(query.source), start_q, start_q + width.size, why)
            part_k = self.select(self.resolve(key.source), start_k, start_k + width.size, why)
            part_q = self.tie_channels(node, part_q, part_k, why, inverse=True)
            query_keys.append(tuple(part_q.members))
            self.constrain_keys(
                part_q.members,
                Scaling.NONZERO,
                f"{why}: head {head} {QUERY_KEY_REASON} (query rows scaled by s, key rows by 1/s)",
            )
        self._unscaled_tokens([tokens_q, tokens_k], why)
        return Scores(lead, tokens_q, tokens_k, query_keys=tuple(query_keys))

    def _lead(self, node: fx.Node, a: Sequence[_Dim], b: Sequence[_Dim]) -> tuple[_Dim, ...]:
        """The batch and head axes two operands share (the same kinds and sizes, in order)."""
        if len(a) != len(b) or any(
            x.kind != y.kind or x.size != y.size or x.kind == "tokens" for x, y in zip(a, b)
        ):
            raise self.fail(
                node,
                "multiplies attention operands whose batch and head axes differ "
                f"({[d.kind for d in a]} and {[d.kind for d in b]})",
            )
        return tuple(a)

    def _starts(self, lead: Sequence[_Dim], *values: Heads) -> list[tuple[int, ...]]:
        """Per head (every index of the lead factor axes), the first channel of each value's
        block."""
        ranges = [range(d.size) if d.kind == "factor" else range(1) for d in lead]
        out = []
        for index in itertools.product(*ranges):
            out.append(
                tuple(
                    v.offset
                    + sum(i * d.stride for i, d in zip(index, v.dims) if d.kind == "factor")
                    for v in values
                )
            )
        return out

    def _unscaled_tokens(self, dims: Sequence[_Dim], why: str) -> None:
        """Token axes a layer wrote keep no scaling: the weights normalize across them."""
        keys = [
            d.space
            for d in dims
            if d.space is not None
            and not (self.record(d.space).is_input or self.record(d.space).is_output)
        ]
        self.constrain_keys(keys, Scaling.NONE, f"{why} weighs tokens by softmax(q . k)")

    def _apply(self, node: fx.Node, scores: Scores, value: Heads) -> Heads:
        """``weights @ v``: the values' head dimensions pass through linearly; the key tokens
        and the value tokens are one index set (fixed where a mask is)."""
        width, tokens = value.dims[-1], value.dims[-2]
        self._lead(node, scores.lead, value.dims[:-2])
        if width.kind != "factor" or width.stride != 1 or tokens.kind != "tokens":
            raise self.fail(
                node,
                "applies attention weights to something other than values viewed as (heads, "
                "tokens, head dimensions)",
            )
        why = f"the attention in '{where_of(node)}'"
        ends = [d.space for d in (scores.key, tokens)]
        if ends[0] is not None and ends[1] is not None:
            self.tie(ends[0], ends[1], why)
        for key in ends if None in ends else []:
            if key is not None:
                self.fix(key, f"{why} (keys at fixed positions)")
        for key in [*ends, scores.query.space] if scores.masked else []:
            if key is not None:
                self.fix(key, f"{why} (a mask)")
        self._unscaled_tokens([tokens], why)
        value_keys: list[tuple[int, ...]] = []
        for head, (start,) in enumerate(self._starts(value.dims[:-2], value)):
            part = self.select(self.resolve(value.source), start, start + width.size, why)
            value_keys.append(tuple(part.members))
            self.constrain_keys(
                part.members,
                Scaling.NONZERO,
                f"{why}: head {head} {VALUE_REASON} (value rows by t, columns of the "
                "projection after it by 1/t)",
            )
        if len(value_keys) == len(scores.query_keys):
            self.head_blocks.append((why, list(zip(scores.query_keys, value_keys))))
        return replace(value, dims=(*value.dims[:-2], scores.query, width))

    # -- attention weights ----------------------------------------------------------------
    def _scores_step(self, node: fx.Node, inside: list[fx.Node]) -> None:
        """Scaling, masks, softmax over the keys, dropout; ``@ v`` is :meth:`_matmul`."""
        source = inside[0]
        scores = self.scores[source]
        helper = _timm_helper(node)
        if len(inside) != 1:
            raise self.fail(node, "combines attention weights with other activations")
        if helper == "resolve_self_attn_mask":  # reads the weights' dtype only
            mask = node.kwargs.get("attn_mask", node.args[2] if len(node.args) > 2 else None)
            self._mask(node, mask, "attn_mask")
        elif helper == "maybe_add_mask":
            mask = node.kwargs.get("attn_mask", node.args[1] if len(node.args) > 1 else None)
            self._masked(node, scores, self._mask(node, mask, "the mask"))
        elif self._passes(node) or self._scales(node, source):
            self.scores[node] = scores
        elif _is_call(node, MASK_METHODS, (torch.masked_fill,)):
            mask = node.kwargs.get("mask", node.args[1] if len(node.args) > 1 else None)
            self._masked(node, scores, self._mask(node, mask, "the mask"))
        elif _is_call(node, frozenset(ops.ADD_METHODS), tuple(ops.ADD_FUNCTIONS)):
            other = [a for a in [*node.args[:2], *node.kwargs.values()] if a is not source]
            self._masked(node, scores, any(self._mask(node, a, "the mask") for a in other))
        elif self._softmax_over_keys(node):
            self.scores[node] = scores
        else:
            raise self.fail(
                node,
                "reads the attention weights; only scaling, masks, softmax over the keys, "
                "dropout and weights @ v are supported",
            )

    def _masked(self, node: fx.Node, scores: Scores, masked: bool) -> None:
        self.scores[node] = replace(scores, masked=scores.masked or masked)

    def _mask(self, node: fx.Node, mask: Any, what: str) -> bool:
        """Whether ``mask`` is a tensor (None and numbers are not); refused when it depends on
        the activations or is a parameter (a learned attention bias)."""
        if not isinstance(mask, fx.Node):
            return False
        if mask in self.labels or self._inside(mask):
            raise self.fail(node, f"{what} is a mask computed from the activations")
        if mask in self.param_views and self.is_parameter(mask):
            raise self.fail(
                node,
                f"adds the parameter '{self.param_views[mask]}' to the attention weights (a "
                "learned attention bias); not supported",
            )
        return "tensor_meta" in mask.meta

    def _softmax_over_keys(self, node: fx.Node) -> bool:
        """A softmax over the last axis (the keys)."""
        if node.op == "call_module":
            module = self.modules[str(node.target)]
            if not isinstance(module, nn.Softmax):
                return False
            dim: Any = module.dim
        elif _is_call(node, ops.SOFTMAX_METHODS, ops.SOFTMAX_FUNCTIONS):
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        else:
            return False
        shape = shape_of(node)
        if shape is None or not isinstance(dim, int) or dim % len(shape) != len(shape) - 1:
            raise self.fail(
                node, f"normalizes attention weights over dim {dim}; only the keys (-1) are"
            )
        return True
