"""Torch expressions of features: the reductions and products a layer reads (the plan holds
them as keys, :class:`derive.plan.features.Feature`)."""

from __future__ import annotations

from collections.abc import Callable
from math import prod

from derive.plan.features import (
    Feature,
    FeatureKey,
    fixed_positions,
    has_diagonal,
    is_product_key,
    product_divisor,
    tensor_var,
)
from derive.weightspace.model import WeightSpaceSpec

__all__ = ["Reducer", "plain_sum", "feature_expression"]


#: spells the sum of a variable over dimensions (``reducer("w2", (2, 3))``)
Reducer = Callable[[str, tuple[int, ...]], str]


def plain_sum(var: str, dims: tuple[int, ...]) -> str:
    """``var.sum(dim=...)``: the default reducer."""
    return f"{var}.sum(dim={dims[0] if len(dims) == 1 else dims})"


def feature_expression(
    space: WeightSpaceSpec, feature: Feature, reducer: Reducer = plain_sum
) -> str:
    """The torch expression computing ``feature`` (its source variable when it is the input
    itself); ``reducer`` spells the sum over the reduced dimensions of a linear feature
    without diagonals (the invariant layer fuses its canonicalization into it)."""
    key, layout = feature.key, feature.layout
    channels_last = layout == "channels_last"
    if is_product_key(key):
        return _product_code(space, key, channels_last and bool(key[2]))
    source, kept, reduced = key
    tensor = space.tensor(source)
    sizes = space.shape(tensor)
    fixed = [p for p, axis in enumerate(tensor.axes) if space.is_fixed_axis(axis)]
    kept_sizes = tuple(sizes[g[0]] for g in kept)
    channels_last = channels_last and bool(kept)
    # dims after (b, c): the source's axes, or the parent's kept axes in their order
    present = list(range(len(tensor.axes)))
    already: tuple[tuple[int, ...], ...] = ()
    var = feature.reads
    if feature.parent is not None:
        present = [g[0] for g in feature.parent[1]]
        already = feature.parent[2]
    if has_diagonal(key):
        assert feature.parent is None
        letters = "ijklmnopqrstuvwxyz"
        sub = [""] * len(tensor.axes)
        for k, group in enumerate((*kept, *reduced)):
            for p in group:
                sub[p] = letters[k]
        for k, p in enumerate(fixed):
            sub[p] = letters[len(kept) + len(reduced) + k]
        kept_sub = "".join(sub[g[0]] for g in kept)
        fixed_sub = "".join(sub[p] for p in fixed)
        out = f"b{kept_sub}c{fixed_sub}" if channels_last else f"bc{fixed_sub}{kept_sub}"
        expr = f'torch.einsum("bc{"".join(sub)}->{out}", {var})'
    else:
        to_reduce = [g[0] for g in reduced if g not in already]
        reduced_dims = sorted(2 + present.index(p) for p in to_reduce)
        expr = var
        if reduced_dims:
            expr = reducer(var, tuple(reduced_dims))
        remaining = ["c"] + [p for p in present if p not in to_reduce]
        kept_order: list[int | str] = [g[0] for g in kept]
        target = [*kept_order, "c", *fixed] if channels_last else ["c", *fixed, *kept_order]
        permutation = [remaining.index(p) for p in target]
        if permutation != sorted(permutation):
            expr = f"{expr}.permute(0, {', '.join(str(1 + i) for i in permutation)})"
    if fixed:
        shape = (
            [*(str(n) for n in kept_sizes), "-1"]
            if channels_last
            else ["-1", *(str(n) for n in kept_sizes)]
        )
        expr = f"{expr}.reshape(batch, {', '.join(shape)})"
    # Averages divide the small reduced result (a mean's backward would divide a full tensor).
    divisor = prod(sizes[g[0]] for g in reduced if g not in already)
    if divisor != 1:
        expr = f"{expr} / {divisor}"
    return expr


def _product_code(space: WeightSpaceSpec, key: FeatureKey, channels_last: bool) -> str:
    """One einsum over the factors (batch and channel shared), then the normalization.

    A reduced block joining exactly two positions of two different factors is a contraction
    like a matrix product and is divided by sqrt(n) (variance-preserving); any other reduced
    block is an average (divided by n).
    """
    _, factors, kept, reduced = key
    letters = iter("ijklmnopqrstuvwxyz")
    sub = {}
    for group in (*kept, *reduced):
        letter = next(letters)
        for position in group:
            sub[position] = letter
    fixed = fixed_positions(space, key)
    for position in fixed:
        sub[position] = next(letters)
    operands = []
    for f, name in enumerate(factors):
        axes = "".join(sub[(f, p)] for p in range(len(space.tensor(name).axes)))
        operands.append(f"bc{axes}")
    kept_sub = "".join(sub[g[0]] for g in kept)
    fixed_sub = "".join(sub[p] for p in fixed)
    out = f"b{kept_sub}c{fixed_sub}" if channels_last else f"bc{fixed_sub}{kept_sub}"
    variables = ", ".join(tensor_var(name) for name in factors)
    expr = f'torch.einsum("{",".join(operands)}->{out}", {variables})'
    divisor = product_divisor(space, factors, reduced)
    kept_spaces = [space.tensor(factors[g[0][0]]).axes[g[0][1]].space for g in kept]
    kept_sizes = [space.space(name).size for name in kept_spaces]
    if fixed:
        shape = (
            [*(str(n) for n in kept_sizes), "-1"]
            if channels_last
            else ["-1", *(str(n) for n in kept_sizes)]
        )
        expr = f"{expr}.reshape(batch, {', '.join(shape)})"
    if divisor != 1.0:
        expr = f"{expr} / {divisor!r}" if divisor != int(divisor) else f"{expr} / {int(divisor)}"
    return expr
