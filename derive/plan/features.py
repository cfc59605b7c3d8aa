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

from derive.naming import identifier
from derive.weightspace.model import WeightSpaceSpec

__all__ = [
    "Feature",
    "FeatureKey",
    "PRODUCT",
    "tensor_var",
    "is_product_key",
    "has_kept",
    "key_factor",
    "feature_shape",
    "fixed_positions",
    "has_diagonal",
    "reads_source_unchanged",
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
    """``(B, in_channels * factor, *kept)`` (or channels-last): the reduction or product
    ``key`` of its source, read from the variable ``reads`` (the source tensor's variable, or
    the parent feature whose key is ``parent``, from which it follows by more averaging).
    Codegen spells it (:func:`derive.codegen.feature_code.feature_expression`)."""

    key: FeatureKey
    name: str
    source: str  # the input tensor, or the factors joined by "*"
    kept: tuple[str, ...]
    kept_sizes: tuple[int, ...]
    factor: int  # product of the fixed axis sizes of the source(s), folded into channels
    description: str  # e.g. "mean_p W2[p,i]"
    layout: str = "channels_first"
    reads: str = ""  # the variable the feature is computed from ("" for products)
    parent: FeatureKey | None = None  # the key of the feature ``reads`` names, if any

    @property
    def is_input(self) -> bool:
        """True when the feature is the input variable itself (nothing to compute)."""
        return self.name == self.reads


def tensor_var(name: str) -> str:
    """The variable holding an input tensor in generated code (``W2`` -> ``w2``)."""
    return identifier(name, prefix="t")


def is_product_key(key: FeatureKey) -> bool:
    return bool(key) and key[0] == PRODUCT


def fixed_positions(space: WeightSpaceSpec, key: FeatureKey) -> list[tuple[int, int]]:
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
    return prod(space.shape(space.tensor(factors[f]))[p] for f, p in fixed_positions(space, key))


def has_kept(key: FeatureKey) -> bool:
    """Whether the feature keeps any neuron axis (else it is a pooled ``(B, K)`` vector)."""
    return bool(key[2] if is_product_key(key) else key[1])


def has_diagonal(key: FeatureKey) -> bool:
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


def feature_shape(
    space: WeightSpaceSpec, key: FeatureKey
) -> tuple[tuple[str, ...], tuple[int, ...], int]:
    """The spaces and sizes of a feature's kept axes, and its channel factor."""
    if is_product_key(key):
        factors, kept = key[1], key[2]
        kept_spaces = tuple(space.tensor(factors[g[0][0]]).axes[g[0][1]].space for g in kept)
    else:
        tensor = space.tensor(key[0])
        kept_spaces = tuple(tensor.axes[g[0]].space for g in key[1])
    kept_sizes = tuple(space.space(name).size for name in kept_spaces)
    return kept_spaces, kept_sizes, key_factor(space, key)


def reads_source_unchanged(space: WeightSpaceSpec, key: FeatureKey, layout: str) -> bool:
    """Whether the feature is its source tensor itself (every axis kept in order, no fixed
    axis, channels first): generated code then reads the input variable directly."""
    if is_product_key(key) or has_diagonal(key) or key[2]:
        return False
    tensor = space.tensor(key[0])
    if any(space.is_fixed_axis(a) for a in tensor.axes):
        return False
    if layout == "channels_last" and key[1]:
        return False
    return [g[0] for g in key[1]] == list(range(len(tensor.axes)))


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
    """The feature for ``key``, named uniquely against ``taken`` (which it extends).

    A linear feature reads the source variable ``var`` (default: the tensor's variable), or
    ``parent = (name, key)``: a channels-first feature of the same source without fixed axes
    whose averages are a subset."""
    kept_spaces, kept_sizes, factor = feature_shape(space, key)
    layout = layout if kept_spaces else "channels_first"
    source = "*".join(key[1]) if is_product_key(key) else key[0]
    reads = "" if is_product_key(key) else var or tensor_var(source)
    parent_key = None
    if parent is not None:
        reads, parent_key = parent
    unchanged = parent is None and reads_source_unchanged(space, key, layout)
    name = reads if unchanged else _feature_name(key, space, taken, layout)
    return Feature(
        key,
        name,
        source,
        kept_spaces,
        kept_sizes,
        factor,
        _description(space, key),
        layout,
        reads,
        parent_key,
    )


def _feature_name(key: FeatureKey, space: WeightSpaceSpec, taken: set[str], layout: str) -> str:
    if is_product_key(key):
        stem = "prod_" + "_".join(tensor_var(name) for name in key[1])
        kept_groups = key[2]
    else:
        source, kept_groups, reduced = key
        tensor = space.tensor(source)
        var = tensor_var(source)
        fixed = any(space.is_fixed_axis(a) for a in tensor.axes)
        full = not reduced and len(kept_groups) == sum(
            not space.is_fixed_axis(a) for a in tensor.axes
        )
        if full and fixed and not has_diagonal(key):
            stem = f"{var}_all"
        elif kept_groups:
            names = (identifier(tensor.axes[g[0]].space, part=True) for g in kept_groups)
            stem = f"{var}_by_" + "_".join(names)
        else:
            stem = f"{var}_pooled"
    if has_diagonal(key) and not is_product_key(key):
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
    """A channels-first feature of the same source from which ``key`` follows by more averaging
    (``candidates``: the channels-first features of that source, in plan order).

    Reading a small parent instead of the source saves a pass over the source and, in the
    backward pass, one accumulation of a full-size gradient.
    """
    if is_product_key(key):
        return None
    source, kept, reduced = key
    if not reduced or has_diagonal(key) or fixed_positions(space, key):
        return None  # a parent merges fixed axes into its channels (even axes of size 1)
    best = None
    for cand in candidates:
        if is_product_key(cand):
            continue
        c_source, c_kept, c_reduced = cand
        if c_source != source or cand == key or has_diagonal(cand) or not c_kept:
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
    first_keys: dict[Any, list[FeatureKey]] = {}  # channels-first features, by source
    for key, layout in wanted:
        if layout == "channels_first":
            first_keys.setdefault(key[0], []).append(key)
    names = taken if taken is not None else set()
    names |= {tensor_var(t.name) for t in space.tensors}
    names |= {f"out_{tensor_var(t.name)}" for t in space.tensors} | {"batch", "ws", "self", "c_out"}
    features: dict[tuple[FeatureKey, str], Feature] = {}
    for key, layout in wanted:
        parent = _parent_key(space, key, first_keys[key[0]]) if layout == "channels_first" else None
        parent_ref = None
        if parent is not None and (parent, "channels_first") in features:
            parent_ref = (features[(parent, "channels_first")].name, parent)
        features[(key, layout)] = feature_for(space, key, names, layout=layout, parent=parent_ref)
    return features
