"""The canonical representative of a weight space under its scalings.

A group element multiplies neuron ``i`` of a scaled space by ``d_i`` (positive, a sign, or any
non-zero number) on the tensors whose axis on that space has character +1 (its incoming
weights and its bias) and by ``1 / d_i`` where the character is -1 (its outgoing weights).
:func:`canonical_scales` picks one point of every orbit, space by space:

- ``positive``: divide the neuron's incoming entries by their Euclidean norm (multiply the
  outgoing ones by it);
- ``sign``: flip the neuron where the sum of its incoming entries is negative;
- ``nonzero``: both.

The incoming entries of a space may also carry other spaces' factors (a layer reading a scaled
hidden layer); those spaces are canonicalized first, so the norm and the sum of a neuron's
incoming entries are ``|d_i|`` and ``d_i`` times the canonical ones, and dividing them out
gives the same result for every element of the orbit: the output is exactly invariant under
the scalings (up to rounding) and moves with the permutations and head relabellings (norms
and sums over the other axes do not depend on their order). The network's function is
unchanged, since the result is itself a group element applied to the input. A permutation-only
model on the canonical weights is therefore invariant under the whole group (the ``canon-*``
model kinds of ``nfn_tasks``). Degenerate neurons (incoming entries all zero, or summing to
exactly zero for a sign) keep factor 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nfn_runtime.layout import TensorLayout, WeightSpaceLayout
from nfn_runtime.weight_space import WeightSpace

__all__ = ["canonical_order", "canonical_scales"]


def _axes_on(layout: WeightSpaceLayout, space: str) -> list[tuple[TensorLayout, int, int]]:
    """``(tensor, axis, character)`` of every scaled axis on ``space``."""
    found = []
    for tensor in layout.tensors:
        for index, axis in enumerate(tensor.axes):
            if axis.space == space and axis.character != 0:
                found.append((tensor, index, axis.character))
    return found


def canonical_order(layout: WeightSpaceLayout) -> list[str]:
    """The scaled spaces in an order where every space's incoming tensors carry no factor of a
    later space; a ValueError naming the spaces when there is none (a scaled space feeding
    itself, such as a residual stream with scalings), when a character is not +-1 or when a
    space has no incoming tensor."""
    scaled = [s.name for s in layout.spaces if s.scaling != "none"]
    needs: dict[str, set[str]] = {}
    for space in scaled:
        axes = _axes_on(layout, space)
        bad = [(t.name, c) for t, _, c in axes if abs(c) != 1]
        if bad:
            raise ValueError(f"space {space!r}: character {bad[0][1]} on tensor {bad[0][0]!r}")
        if not any(character == 1 for _, _, character in axes):
            raise ValueError(f"space {space!r} has no incoming tensor to canonicalize by")
        others = [
            axis
            for tensor, index, character in axes
            if character == 1
            for position, axis in enumerate(tensor.axes)
            if position != index and axis.character != 0
        ]
        if any(axis.space == space for axis in others):
            raise ValueError(f"space {space!r} appears twice on one of its incoming tensors")
        needs[space] = {axis.space for axis in others if axis.space in scaled}
    order: list[str] = []
    while len(order) < len(scaled):
        ready = [s for s in scaled if s not in order and needs[s] <= set(order)]
        if not ready:
            left = [s for s in scaled if s not in order]
            raise ValueError(f"the scalings of spaces {left} feed each other: no canonical order")
        order.append(ready[0])
    return order


def _per_neuron(value: Tensor, axis: int, reduce: str) -> Tensor:
    """Sum of squares or sum of ``value (B, C, ...)`` over everything but batch and ``axis``."""
    moved = value.movedim(2 + axis, 1).flatten(2)  # (B, n, C * rest)
    return moved.pow(2).sum(-1) if reduce == "square" else moved.sum(-1)


def canonical_scales(
    ws: WeightSpace, layout: WeightSpaceLayout
) -> tuple[WeightSpace, dict[str, Tensor]]:
    """The canonical point of ``ws``'s orbit under the scalings, and per scaled space the
    factors ``(B, n)`` applied to its neurons (incoming entries multiplied by them, outgoing by
    their inverses), for moving other features that transform like a neuron's bias."""
    named = ws.named(layout)
    factors: dict[str, Tensor] = {}
    for space in canonical_order(layout):
        kind = layout.space(space).scaling
        axes = _axes_on(layout, space)
        incoming = [(t, i) for t, i, c in axes if c == 1]
        factor = torch.ones_like(_per_neuron(named[incoming[0][0].name], incoming[0][1], "sum"))
        if kind in ("positive", "nonzero"):
            norm = sum(_per_neuron(named[t.name], i, "square") for t, i in incoming)
            assert isinstance(norm, Tensor)
            norm = norm.sqrt()
            factor = torch.where(norm > 0, 1 / norm.where(norm > 0, 1.0), factor)
        if kind in ("sign", "nonzero"):
            total = sum(_per_neuron(named[t.name], i, "sum") for t, i in incoming)
            assert isinstance(total, Tensor)
            factor = torch.where(total < 0, -factor, factor)
        for tensor, index, character in axes:
            shape = [factor.shape[0]] + [1] * (len(tensor.axes) + 1)
            shape[2 + index] = factor.shape[1]
            named[tensor.name] = named[tensor.name] * factor.pow(character).reshape(shape)
        factors[space] = factor
    return WeightSpace.from_named(layout, named), factors
