"""Transformations of a weight space that lie outside its symmetry group.

Sensitivity tests apply them to catch over-constrained layers: an equivariant layer that also
commutes with, say, a permutation of one side of a neuron only is missing maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nfn_runtime.group import _random_signs, _transform_axis
from nfn_runtime.layout import SpaceLayout, TensorLayout, WeightSpaceLayout
from nfn_runtime.weight_space import WeightSpace

__all__ = [
    "OUTSIDE_GROUP_KINDS",
    "AxisTransform",
    "OutsideGroupTransform",
    "apply_axis_transform",
    "outside_group_kinds",
    "sample_outside_group",
]


def apply_axis_transform(
    ws: WeightSpace,
    layout: WeightSpaceLayout,
    tensor_name: str,
    axis_index: int,
    permutation: Tensor | None = None,
    scale: Tensor | None = None,
) -> WeightSpace:
    """Transform one axis of one tensor only; every other tensor is returned unchanged.

    ``permutation`` (``perm[i] = pi(i)``) moves entries along the axis, then the axis is
    multiplied by ``scale`` as given (no character is applied). Acting on one axis alone breaks
    the coupling the group keeps between tensors, e.g. a row permutation of ``W_i`` not matched
    by the columns of ``W_{i+1}``; use it to build transforms outside the group.
    """
    target = layout.tensor(tensor_name)
    if not 0 <= axis_index < len(target.axes):
        raise ValueError(
            f"tensor {tensor_name!r} has {len(target.axes)} axes, got axis_index {axis_index}"
        )
    size = layout.space(target.axes[axis_index].space).size
    for label, vector in (("permutation", permutation), ("scale", scale)):
        if vector is not None and tuple(vector.shape) != (size,):
            raise ValueError(
                f"{label} for axis {axis_index} of {tensor_name!r} must have shape ({size},), "
                f"got {tuple(vector.shape)}"
            )

    def act(spec: TensorLayout, value: Tensor) -> Tensor:
        if spec.name != tensor_name:
            return value
        return _transform_axis(value, 2 + axis_index, permutation, scale)

    return ws.map_layout(layout, act)


OUTSIDE_GROUP_KINDS: tuple[str, ...] = (
    "decoupled_permutation",
    "decoupled_scale",
    "negative_scale",
    "scale_on_sign_space",
    "positive_scale",
    "permute_fixed",
)


@dataclass(frozen=True, eq=False)
class AxisTransform:
    """One step of an outside-group transform: see :func:`apply_axis_transform`."""

    tensor: str
    axis: int
    permutation: Tensor | None = None
    scale: Tensor | None = None


@dataclass(frozen=True, eq=False)
class OutsideGroupTransform:
    """A transformation of the weight space that no group element equals.

    Callable on a :class:`WeightSpace` with any batch size and channel count.
    """

    kind: str
    space: str
    layout: WeightSpaceLayout
    steps: tuple[AxisTransform, ...]

    def __call__(self, ws: WeightSpace) -> WeightSpace:
        for step in self.steps:
            ws = apply_axis_transform(
                ws, self.layout, step.tensor, step.axis, step.permutation, step.scale
            )
        return ws

    def __repr__(self) -> str:
        return f"OutsideGroupTransform({self.kind!r}, space={self.space!r})"


def _occurrences(layout: WeightSpaceLayout, space: str) -> list[tuple[str, int, int]]:
    """(tensor name, axis index, character) of every axis labelled with ``space``."""
    return [
        (tensor.name, index, axis.character)
        for tensor in layout.tensors
        for index, axis in enumerate(tensor.axes)
        if axis.space == space
    ]


def _applies(layout: WeightSpaceLayout, kind: str, space: SpaceLayout) -> bool:
    axes = _occurrences(layout, space.name)
    scaled_axes = [axis for axis in axes if axis[2] != 0]
    if kind == "decoupled_permutation":
        return space.permuted and space.size >= 2 and len(axes) >= 2
    if kind == "decoupled_scale":
        return len(scaled_axes) >= 2
    if kind == "negative_scale":
        return space.scaling in ("positive", "none") and len(scaled_axes) >= 1
    if kind == "scale_on_sign_space":
        return space.scaling == "sign" and len(scaled_axes) >= 1
    if kind == "positive_scale":
        return space.scaling == "none" and space.permuted and len(scaled_axes) >= 1
    if kind == "permute_fixed":
        return not space.permuted and space.size >= 2 and len(axes) >= 1
    raise ValueError(f"unknown outside-group kind {kind!r}; valid kinds: {OUTSIDE_GROUP_KINDS}")


def outside_group_kinds(layout: WeightSpaceLayout) -> list[str]:
    """The kinds of :func:`sample_outside_group` that apply to ``layout``."""
    return [
        kind
        for kind in OUTSIDE_GROUP_KINDS
        if any(_applies(layout, kind, space) for space in layout.spaces)
    ]


def _subset_scale(size: int, factor: float, generator: torch.Generator | None) -> Tensor:
    """``factor`` on a random proper subset of the neurons (on the one neuron of a space of
    size 1), 1 elsewhere: a factor shared by a whole space can be a symmetry a per-neuron
    group does not have (LayerNorm is odd, so it commutes with flipping every neuron)."""
    scale = torch.ones(size, dtype=torch.float64)
    if size == 1:
        return scale * factor
    chosen = torch.randperm(size, generator=generator)
    count = 1 + int(torch.randint(0, size - 1, (1,), generator=generator))
    scale[chosen[:count]] = factor
    return scale


def _non_identity_permutation(size: int, generator: torch.Generator | None) -> Tensor:
    perm = torch.randperm(size, generator=generator)
    if torch.equal(perm, torch.arange(size)):
        perm[[0, 1]] = perm[[1, 0]]
    return perm


def _decoupled_factor(size: int, generator: torch.Generator | None) -> Tensor:
    """Factors ``2 ** (+-u)`` with ``u`` uniform in ``[0.5, 1.5]``: never close to 1."""
    exponent = 0.5 + torch.rand(size, generator=generator, dtype=torch.float64)
    return 2.0 ** (exponent * _random_signs(size, generator, torch.float64))


def _group_like_steps(
    layout: WeightSpaceLayout, space: str, permutation: Tensor | None, scale: Tensor | None
) -> tuple[AxisTransform, ...]:
    """Act on every axis of ``space`` as a group element would (scale raised to the character)."""
    return tuple(
        AxisTransform(name, index, permutation, None if scale is None else scale**character)
        for name, index, character in _occurrences(layout, space)
    )


def sample_outside_group(
    layout: WeightSpaceLayout,
    kind: str,
    generator: torch.Generator | None = None,
    space: str | None = None,
) -> OutsideGroupTransform:
    """A random transformation of kind ``kind`` that lies outside the group of ``layout``.

    Kinds (see :func:`outside_group_kinds` for those that apply):

    - ``"decoupled_permutation"``: an independent random permutation on every axis of a
      permuted space (not all equal), e.g. rows of ``W_i``, ``b_i`` and columns of ``W_{i+1}``
      each permuted differently;
    - ``"decoupled_scale"``: an independent scale vector on every scaled axis of a space, with
      factors in ``[2^-1.5, 2^-0.5] u [2^0.5, 2^1.5]`` (e.g. different scales on the two sides
      of one neuron);
    - ``"negative_scale"``: ``d = -1`` on a random proper subset of the neurons of a space whose
      scaling is "positive" or "none" (a flip of every neuron at once can be a symmetry: a
      LayerNorm commutes with it);
    - ``"scale_on_sign_space"``: ``d_s = 2`` on a space whose scaling is "sign";
    - ``"positive_scale"``: ``d = 4`` on a random proper subset of the neurons of a permuted
      space whose scaling is "none" (catches a group that misses the positive scaling of a
      ReLU space);
    - ``"permute_fixed"``: a non-identity permutation of a non-permuted space of size >= 2.

    The space is drawn with ``generator`` among those where the kind applies, preferring
    spaces the group moves (not fixed), unless ``space`` names one. Raises ``ValueError`` when
    the kind does not apply.
    """
    if kind not in OUTSIDE_GROUP_KINDS:
        raise ValueError(f"unknown outside-group kind {kind!r}; valid kinds: {OUTSIDE_GROUP_KINDS}")
    candidates = [
        s for s in layout.spaces if (space is None or s.name == space) and _applies(layout, kind, s)
    ]
    if not candidates and space is not None:  # (cheap: callers try every space in turn)
        raise ValueError(f"outside-group kind {kind!r} does not apply to space {space!r}")
    if not candidates:
        raise ValueError(
            f"outside-group kind {kind!r} does not apply to any space of this layout; "
            f"kinds that apply: {outside_group_kinds(layout)}"
        )
    moved = [s for s in candidates if not s.is_fixed]
    candidates = moved or candidates
    pick = int(torch.randint(0, len(candidates), (1,), generator=generator))
    chosen = candidates[pick]
    axes = _occurrences(layout, chosen.name)
    steps: tuple[AxisTransform, ...]
    if kind == "decoupled_permutation":
        perms = [torch.randperm(chosen.size, generator=generator) for _ in axes]
        if all(torch.equal(perm, perms[0]) for perm in perms):
            perms[0] = perms[0][_non_identity_permutation(chosen.size, generator)]
        steps = tuple(
            AxisTransform(name, index, perm) for (name, index, _), perm in zip(axes, perms)
        )
    elif kind == "decoupled_scale":
        steps = tuple(
            AxisTransform(name, index, None, _decoupled_factor(chosen.size, generator))
            for name, index, character in axes
            if character != 0
        )
    elif kind == "negative_scale":
        scale = _subset_scale(chosen.size, -1.0, generator)
        steps = _group_like_steps(layout, chosen.name, None, scale)
    elif kind in ("scale_on_sign_space", "positive_scale"):
        # 4 rather than 2 on permutation-only spaces: saturating activations (relu6, clamps)
        # whose inputs stay below half their bound would not show a factor of 2
        factor = 2.0 if kind == "scale_on_sign_space" else 4.0
        scale = (
            torch.full((chosen.size,), factor, dtype=torch.float64)
            if kind == "scale_on_sign_space"
            else _subset_scale(chosen.size, factor, generator)
        )
        steps = _group_like_steps(layout, chosen.name, None, scale)
    else:
        perm = _non_identity_permutation(chosen.size, generator)
        steps = _group_like_steps(layout, chosen.name, perm, None)
    return OutsideGroupTransform(kind, chosen.name, layout, steps)
