"""Features: the reductions and products a layer reads, each computed once.

A feature turns one input tensor (or, for polynomial terms, a per-channel product of input
tensors) into ``(B, C * factor, *kept)`` (channels-first) or ``(B, *kept, C * factor)``
(channels-last): averages over the reduced blocks, diagonals where a block holds several
positions, the kept blocks in the order the output reads them, and every fixed axis folded
into channels.

Keys identify features, so maps that read the same one share it:

- a *linear key* ``(source, kept groups, reduced groups)``: groups of axis positions;
- a *product key* ``("*", factors, kept groups, reduced groups)``: groups of
  ``(factor index, axis position)`` pairs, for a per-channel product of ``factors``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod, sqrt
from typing import Any

from derive.basis.linear import BasisMap
from derive.naming import identifier
from derive.weightspace.model import WeightSpaceSpec

__all__ = [
    "Feature",
    "FeatureKey",
    "PRODUCT",
    "tensor_var",
    "feature_key",
    "is_product_key",
    "has_kept",
    "key_factor",
    "feature_code",
    "product_divisor",
    "feature_for",
    "build_features",
]

#: marks a product key
PRODUCT = "*"

#: a linear key (source, kept, reduced) or a product key ("*", factors, kept, reduced)
FeatureKey = tuple[Any, ...]


@dataclass(frozen=True)
class Feature:
    """``(B, in_channels * factor, *kept)`` (or channels-last) computed by ``code``."""

    key: FeatureKey
    name: str
    source: str  # the input tensor, or the factors joined by "*"
    kept: tuple[str, ...]
    kept_sizes: tuple[int, ...]
    factor: int  # product of the fixed axis sizes of the source(s), folded into channels
    code: str  # expression computing it
    description: str  # e.g. "mean_p W2[p,i]"
    layout: str = "channels_first"


def tensor_var(name: str) -> str:
    """The variable holding an input tensor in generated code (``W2`` -> ``w2``)."""
    return identifier(name, prefix="t")


def is_product_key(key: FeatureKey) -> bool:
    return bool(key) and key[0] == PRODUCT


def feature_key(basis_map: BasisMap, kept_blocks: Sequence[int]) -> FeatureKey:
    """The linear key of a degree-1 map, given its matched blocks in output order."""
    assert basis_map.input is not None
    kept = tuple(basis_map.blocks[i].inputs for i in kept_blocks)
    reduced = tuple(sorted(b.inputs for b in basis_map.blocks if not b.outputs))
    return (basis_map.input, kept, reduced)


def _fixed_positions(space: WeightSpaceSpec, key: FeatureKey) -> list[tuple[int, int]]:
    """(factor, axis) of every fixed axis the feature folds into channels, in order."""
    factors = key[1] if is_product_key(key) else (key[0],)
    return [
        (f, p)
        for f, name in enumerate(factors)
        for p, axis in enumerate(space.tensor(name).axes)
        if space.is_fixed_axis(axis)
    ]


def key_factor(space: WeightSpaceSpec, key: FeatureKey) -> int:
    """Channels per input channel of a feature: the product of its fixed axis sizes."""
    factors = key[1] if is_product_key(key) else (key[0],)
    return prod(space.shape(space.tensor(factors[f]))[p] for f, p in _fixed_positions(space, key))


def has_kept(key: FeatureKey) -> bool:
    """Whether the feature keeps any neuron axis (else it is a pooled ``(B, K)`` vector)."""
    return bool(key[2] if is_product_key(key) else key[1])


def _has_diagonal(key: FeatureKey) -> bool:
    groups = (*key[2], *key[3]) if is_product_key(key) else (*key[1], *key[2])
    return any(len(g) > 1 for g in groups)


def product_divisor(
    space: WeightSpaceSpec, factors: Sequence[str], reduced: Sequence[Sequence[tuple[int, int]]]
) -> float:
    """The normalization of a product feature: per reduced block, sqrt(n) for a contraction of
    two positions of two different factors (like a matrix product), n otherwise (an average)."""
    contracted = averaged = 1
    for group in reduced:
        size = space.shape(space.tensor(factors[group[0][0]]))[group[0][1]]
        if len(group) == 2 and group[0][0] != group[1][0]:
            contracted *= size
        else:
            averaged *= size
    return sqrt(contracted) * averaged


def _product_code(
    space: WeightSpaceSpec, key: FeatureKey, channels_last: bool
) -> tuple[str, tuple[str, ...], tuple[int, ...]]:
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
    fixed = _fixed_positions(space, key)
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
    return expr, tuple(kept_spaces), tuple(kept_sizes)


def feature_code(
    space: WeightSpaceSpec,
    key: FeatureKey,
    var: str | None = None,
    layout: str = "channels_first",
    parent: tuple[str, FeatureKey] | None = None,
) -> tuple[str, tuple[str, ...], tuple[int, ...], int]:
    """Torch code for a feature, its kept spaces, kept sizes and channel factor.

    A linear feature reads the source variable ``var``, or ``parent = (name, key)``: a
    channels-first feature of the same source without fixed axes whose averages are a subset.
    """
    channels_last = layout == "channels_last"
    if is_product_key(key):
        expr, kept_spaces, kept_sizes = _product_code(space, key, channels_last and bool(key[2]))
        return expr, kept_spaces, kept_sizes, key_factor(space, key)
    source, kept, reduced = key
    tensor = space.tensor(source)
    sizes = space.shape(tensor)
    fixed = [p for p, axis in enumerate(tensor.axes) if space.is_fixed_axis(axis)]
    kept_spaces = tuple(tensor.axes[g[0]].space for g in kept)
    kept_sizes = tuple(sizes[g[0]] for g in kept)
    factor = prod(sizes[p] for p in fixed)
    channels_last = channels_last and bool(kept)
    # dims after (b, c): the source's axes, or the parent's kept axes in their order
    present = list(range(len(tensor.axes)))
    already: tuple[tuple[int, ...], ...] = ()
    var = var or tensor_var(source)
    if parent is not None:
        var, parent_key = parent
        present = [g[0] for g in parent_key[1]]
        already = parent_key[2]
    if _has_diagonal(key):
        assert parent is None
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
            dims = reduced_dims[0] if len(reduced_dims) == 1 else tuple(reduced_dims)
            expr = f"{var}.sum(dim={dims})"
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
    return expr, kept_spaces, kept_sizes, factor


def _description(space: WeightSpaceSpec, key: FeatureKey) -> str:
    """E.g. ``mean_p W2[i,p]`` or ``mean_p W2[i,p] * b1[p]``."""
    letters_out, letters_sum = "ijklm", "pqrst"
    if is_product_key(key):
        _, factors, kept, reduced = key
        labels = {}
        for k, group in enumerate(kept):
            labels.update(dict.fromkeys(group, letters_out[k]))
        for k, group in enumerate(reduced):
            labels.update(dict.fromkeys(group, letters_sum[k]))
        entries = []
        for f, name in enumerate(factors):
            axes = [labels.get((f, p), ":") for p in range(len(space.tensor(name).axes))]
            entries.append(f"{name}[{','.join(axes)}]")
        body = " * ".join(entries)
    else:
        source, kept, reduced = key
        labels_list = [":"] * len(space.tensor(source).axes)
        for k, group in enumerate(kept):
            for p in group:
                labels_list[p] = letters_out[k]
        for k, group in enumerate(reduced):
            for p in group:
                labels_list[p] = letters_sum[k]
        body = f"{source}[{','.join(labels_list)}]"
    summed = "".join(letters_sum[k] for k in range(len(key[-1])))
    return f"mean_{summed} {body}" if summed else body


def feature_for(
    space: WeightSpaceSpec,
    key: FeatureKey,
    taken: set[str],
    var: str | None = None,
    layout: str = "channels_first",
    parent: tuple[str, FeatureKey] | None = None,
) -> Feature:
    """The feature for ``key``, named uniquely against ``taken`` (which it extends)."""
    code, kept_spaces, kept_sizes, factor = feature_code(space, key, var, layout, parent)
    layout = layout if kept_spaces else "channels_first"
    name = _feature_name(key, code, space, taken, layout)
    source = "*".join(key[1]) if is_product_key(key) else key[0]
    return Feature(
        key, name, source, kept_spaces, kept_sizes, factor, code, _description(space, key), layout
    )


def _feature_name(
    key: FeatureKey, code: str, space: WeightSpaceSpec, taken: set[str], layout: str
) -> str:
    if is_product_key(key):
        stem = "prod_" + "_".join(tensor_var(name) for name in key[1])
        kept_groups = key[2]
    else:
        source, kept_groups, reduced = key
        tensor = space.tensor(source)
        var = tensor_var(source)
        if code == var:
            return var  # the input tensor itself
        fixed = any(space.is_fixed_axis(a) for a in tensor.axes)
        full = not reduced and len(kept_groups) == sum(
            not space.is_fixed_axis(a) for a in tensor.axes
        )
        if full and fixed and not _has_diagonal(key):
            stem = f"{var}_all"
        elif kept_groups:
            names = (identifier(tensor.axes[g[0]].space, part=True) for g in kept_groups)
            stem = f"{var}_by_" + "_".join(names)
        else:
            stem = f"{var}_pooled"
    if _has_diagonal(key) and not is_product_key(key):
        stem += "_diag"
    if layout == "channels_last":
        stem += "_cl"
    name, k = stem, 2
    while name in taken:
        name, k = f"{stem}{k}", k + 1
    taken.add(name)
    return name


def _parent_key(
    space: WeightSpaceSpec, key: FeatureKey, candidates: list[FeatureKey]
) -> FeatureKey | None:
    """A channels-first feature of the same source from which ``key`` follows by more averaging.

    Reading a small parent instead of the source saves a pass over the source and, in the
    backward pass, one accumulation of a full-size gradient.
    """
    if is_product_key(key):
        return None
    source, kept, reduced = key
    if not reduced or _has_diagonal(key) or _fixed_positions(space, key):
        return None  # a parent merges fixed axes into its channels (even axes of size 1)
    best = None
    for cand in candidates:
        if is_product_key(cand):
            continue
        c_source, c_kept, c_reduced = cand
        if c_source != source or cand == key or _has_diagonal(cand) or not c_kept:
            continue
        if list(c_kept) != sorted(c_kept):
            continue  # parent axes must be in source order
        if not set(c_reduced) < set(reduced) or not set(kept) <= set(c_kept):
            continue
        if set(c_kept) != set(kept) | (set(reduced) - set(c_reduced)):
            continue
        if best is None or len(c_kept) < len(best[1]):
            best = cand
    return best


def build_features(
    space: WeightSpaceSpec,
    needed: list[tuple[FeatureKey, str]],
    order: Callable[[FeatureKey], tuple[Any, ...]],
    taken: set[str] | None = None,
) -> dict[tuple[FeatureKey, str], Feature]:
    """Every (feature, layout) the ops read, parents first, with unique variable names."""

    def _has_kept(key: FeatureKey) -> bool:
        return bool(key[2] if is_product_key(key) else key[1])

    wanted = sorted(
        {(k, lay if has_kept(k) else "channels_first") for k, lay in needed},
        key=lambda kl: (order(kl[0]), kl[1]),
    )
    first_keys = [k for k, lay in wanted if lay == "channels_first"]
    names = taken if taken is not None else set()
    names |= {tensor_var(t.name) for t in space.tensors}
    names |= {f"out_{tensor_var(t.name)}" for t in space.tensors} | {"batch", "ws", "self", "c_out"}
    features: dict[tuple[FeatureKey, str], Feature] = {}
    for key, layout in wanted:
        parent = _parent_key(space, key, first_keys) if layout == "channels_first" else None
        parent_ref = None
        if parent is not None and (parent, "channels_first") in features:
            parent_ref = (features[(parent, "channels_first")].name, parent)
        features[(key, layout)] = feature_for(space, key, names, layout=layout, parent=parent_ref)
    return features
