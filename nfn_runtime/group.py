"""Elements of the weight-space symmetry group and their action on :class:`WeightSpace`.

A group element holds, per neuron space ``s``, a permutation ``pi_s`` and a scale vector
``d_s`` (docs/math.md section 2). It acts on every tensor axis labelled with ``s`` and scaling
character ``chi``::

    new[..., j, ...] = d_s[j] ** chi * old[..., pi_s^{-1}(j), ...]

so ``(g.W)(i)[j, k] = d_i[j] / d_{i-1}[k] * W(i)[pi_i^{-1}(j), pi_{i-1}^{-1}(k)]``. The batch and
channel axes in front are never touched. Permutations are stored as ``perm[i] = pi(i)``: the
entry at position ``i`` moves to position ``perm[i]``.

Where the layout lists attention heads (:class:`nfn_runtime.layout.HeadsLayout`), an element may
also relabel whole heads: after the per-space action, head ``h``'s tensors move to head
``sigma(h)``'s (the group is the semidirect product of the per-space group and the head
permutations, docs/math.md 8.6).

Transformations *outside* the group, for sensitivity tests (docs/math.md section 6), are built by
:func:`apply_axis_transform` (one axis of one tensor) and :func:`sample_outside_group`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nfn_runtime.layout import HeadsLayout, SpaceLayout, TensorLayout, WeightSpaceLayout
from nfn_runtime.weight_space import WeightSpace

__all__ = [
    "GroupElement",
    "apply_group_element",
    "identity_element",
    "head_relabelling",
    "inverse_permutation",
    "sample_group_element",
    "tensor_moves",
]


def inverse_permutation(perm: Tensor) -> Tensor:
    """The inverse of a permutation given as ``perm[i] = pi(i)``."""
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), dtype=perm.dtype, device=perm.device)
    return inverse


@dataclass(frozen=True, eq=False)
class GroupElement:
    """One element ``g`` of the group: a permutation and a scale vector per neuron space, and
    a relabelling of whole attention heads.

    ``permutations[s]`` is a long tensor with ``perm[i] = pi_s(i)``; ``scales[s]`` is the vector
    ``d_s``, indexed by the *new* (permuted) position. ``relabel`` maps a head's space to the
    space of the head it moves to (spaces not named stay): ``g`` acts with the permutations and
    scales first, then moves the heads. ``g.compose(h)`` acts as ``h`` first, then ``g``.
    """

    permutations: dict[str, Tensor]
    scales: dict[str, Tensor]
    relabel: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.permutations.keys() != self.scales.keys():
            raise ValueError(
                "GroupElement needs a permutation and a scale for the same spaces: got "
                f"permutations for {sorted(self.permutations)}, scales for {sorted(self.scales)}"
            )
        for name, perm in self.permutations.items():
            if perm.dim() != 1 or perm.shape != self.scales[name].shape:
                raise ValueError(
                    f"space {name!r}: permutation shape {tuple(perm.shape)} and scale shape "
                    f"{tuple(self.scales[name].shape)} must be equal 1-D shapes"
                )
        if sorted(self.relabel.values()) != sorted(self.relabel):
            raise ValueError("GroupElement.relabel must permute the spaces it names")

    def _moved(self, name: str) -> str:
        return self.relabel.get(name, name)

    def _renamed(self, rename: Mapping[str, str]) -> GroupElement:
        """The per-space part with space ``s``'s entries under ``rename[s]`` (no relabelling)."""
        return GroupElement(
            {rename.get(n, n): perm for n, perm in self.permutations.items()},
            {rename.get(n, n): scale for n, scale in self.scales.items()},
        )

    def inverse(self) -> GroupElement:
        """``g^{-1}``: ``pi' = pi^{-1}`` and ``d'[j] = 1 / d[pi(j)]``; with heads moved by
        ``sigma``, ``(sigma h)^-1 = sigma^-1 (sigma h^-1 sigma^-1)``."""
        inverse = GroupElement(
            {name: inverse_permutation(perm) for name, perm in self.permutations.items()},
            {name: 1.0 / self.scales[name][perm] for name, perm in self.permutations.items()},
        )
        if not self.relabel:
            return inverse
        moved = inverse._renamed(self.relabel)
        back = {target: source for source, target in self.relabel.items()}
        return GroupElement(moved.permutations, moved.scales, back)

    def compose(self, other: GroupElement) -> GroupElement:
        """``self * other``: acting with the result equals acting with ``other``, then ``self``.

        ``pi = pi_self o pi_other`` and ``d[j] = d_self[j] * d_other[pi_self^{-1}(j)]``; with
        heads moved, ``sigma1 h1 sigma2 h2 = (sigma1 sigma2) (sigma2^-1 h1 sigma2) h2``.
        """
        if self.permutations.keys() != other.permutations.keys():
            raise ValueError("cannot compose group elements over different spaces")
        first = self
        if other.relabel:  # sigma2^-1 h1 sigma2: space s takes h1's entries of sigma2(s)
            pulled = {target: source for source, target in other.relabel.items()}
            first = self._renamed(pulled)
        permutations: dict[str, Tensor] = {}
        scales: dict[str, Tensor] = {}
        for name, perm in first.permutations.items():
            permutations[name] = perm[other.permutations[name]]
            other_scale = other.scales[name].to(first.scales[name].dtype)
            scales[name] = first.scales[name] * other_scale[inverse_permutation(perm)]
        names = set(self.relabel) | set(other.relabel)
        relabel = {n: self._moved(other._moved(n)) for n in names}
        return GroupElement(permutations, scales, {n: m for n, m in relabel.items() if n != m})

    def factor(self, space: str, character: int) -> Tensor:
        """The per-position multiplier ``d_s ** chi`` of an axis in ``space``."""
        return self.scales[space] ** character


def _head_order(block: HeadsLayout, relabel: Mapping[str, str]) -> list[int]:
    """``sigma`` with ``sigma[h]`` the head that head ``h`` moves to."""
    first = {head[0]: index for index, head in enumerate(block.spaces)}
    order = []
    for head in block.spaces:
        target = first.get(relabel.get(head[0], head[0]))
        if target is None or [relabel.get(s, s) for s in head] != list(block.spaces[target]):
            raise ValueError(f"the relabelling does not move head {list(head)} onto a head")
        order.append(target)
    return order


def tensor_moves(layout: WeightSpaceLayout, g: GroupElement) -> dict[str, str]:
    """Where ``g`` moves each tensor and buffer of a head it relabels (others stay)."""
    moves: dict[str, str] = {}
    if not g.relabel:
        return moves
    for block in layout.heads:
        for head, target in enumerate(_head_order(block, g.relabel)):
            pairs = zip(block.tensors[head], block.tensors[target])
            moves.update({source: to for source, to in pairs if source != to})
    return moves


def identity_element(layout: WeightSpaceLayout, dtype: torch.dtype = torch.float64) -> GroupElement:
    """The identity: no permutation, unit scales, for every space of ``layout``."""
    return GroupElement(
        {s.name: torch.arange(s.size) for s in layout.spaces},
        {s.name: torch.ones(s.size, dtype=dtype) for s in layout.spaces},
    )


def head_relabelling(
    layout: WeightSpaceLayout, block: int, order: Sequence[int], dtype: torch.dtype = torch.float64
) -> GroupElement:
    """The element that moves head ``h`` of attention ``block`` to head ``order[h]`` and does
    nothing else."""
    heads = layout.heads[block]
    relabel = {
        source: target
        for head, to in enumerate(order)
        for source, target in zip(heads.spaces[head], heads.spaces[to])
        if source != target
    }
    g = identity_element(layout, dtype)
    return GroupElement(g.permutations, g.scales, relabel)


def _log_uniform(
    size: int,
    scale_range: tuple[float, float],
    generator: torch.Generator | None,
    dtype: torch.dtype,
) -> Tensor:
    low, high = math.log(scale_range[0]), math.log(scale_range[1])
    return torch.exp(low + (high - low) * torch.rand(size, generator=generator, dtype=dtype))


def _random_signs(size: int, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    return torch.randint(0, 2, (size,), generator=generator).to(dtype) * 2 - 1


def _sample_scale(
    space: SpaceLayout,
    generator: torch.Generator | None,
    scale_range: tuple[float, float],
    dtype: torch.dtype,
) -> Tensor:
    if space.scaling == "positive":
        return _log_uniform(space.size, scale_range, generator, dtype)
    if space.scaling == "sign":
        return _random_signs(space.size, generator, dtype)
    if space.scaling == "nonzero":
        magnitude = _log_uniform(space.size, scale_range, generator, dtype)
        return _random_signs(space.size, generator, dtype) * magnitude
    return torch.ones(space.size, dtype=dtype)


def sample_group_element(
    layout: WeightSpaceLayout,
    generator: torch.Generator | None = None,
    scale_range: tuple[float, float] = (1e-2, 1e2),
    dtype: torch.dtype = torch.float64,
    move_heads: bool = False,
) -> GroupElement:
    """A random group element for ``layout``.

    Permuted spaces get a uniform random permutation, others the identity. Scales follow each
    space's scaling: log-uniform in ``scale_range`` ("positive"), random signs ("sign"), both
    ("nonzero"), ones ("none"). The heads of each attention the layout lists are relabelled
    by a uniform random permutation (drawn after everything else); with ``move_heads``, by a
    uniform random one other than the identity (so that a check sees heads move).
    """
    if not 0 < scale_range[0] <= scale_range[1]:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    permutations: dict[str, Tensor] = {}
    scales: dict[str, Tensor] = {}
    for space in layout.spaces:
        if space.permuted:
            permutations[space.name] = torch.randperm(space.size, generator=generator)
        else:
            permutations[space.name] = torch.arange(space.size)
        scales[space.name] = _sample_scale(space, generator, scale_range, dtype)
    relabel: dict[str, str] = {}
    for block in layout.heads:
        order = torch.randperm(block.count, generator=generator).tolist()
        while move_heads and order == sorted(order):
            order = torch.randperm(block.count, generator=generator).tolist()
        for head, target in enumerate(order):
            pairs = zip(block.spaces[head], block.spaces[target])
            relabel.update({source: to for source, to in pairs if source != to})
    return GroupElement(permutations, scales, relabel)


def _transform_axis(
    value: Tensor, dim: int, permutation: Tensor | None, factor: Tensor | None
) -> Tensor:
    """Permute (``new[pi(i)] = old[i]``) then multiply by ``factor`` along ``dim``."""
    if permutation is not None:
        gather = inverse_permutation(permutation.to(device=value.device, dtype=torch.long))
        value = value.index_select(dim, gather)
    if factor is not None:
        shape = [1] * value.dim()
        shape[dim] = -1
        value = value * factor.to(device=value.device, dtype=value.dtype).reshape(shape)
    return value


def _check_element(layout: WeightSpaceLayout, g: GroupElement) -> None:
    for space in layout.spaces:
        if space.name not in g.permutations:
            raise ValueError(f"group element has no entry for space {space.name!r}")
        if g.permutations[space.name].numel() != space.size:
            raise ValueError(
                f"space {space.name!r} has size {space.size}, group element entry has "
                f"size {g.permutations[space.name].numel()}"
            )


def _permute_axes(
    value: Tensor,
    spec: TensorLayout,
    g: GroupElement,
    moving: dict[str, bool],
    first: int,
    last: int,
) -> Tensor:
    """``new[pi(i)] = old[i]`` along every permuted axis of ``spec`` at once: one gather with
    broadcast index vectors over dims ``first..last`` (the identity on the unpermuted ones
    between), which keeps the dims in place and is several times faster than one
    ``index_select`` per axis when small axes (kernel offsets, positions) follow."""
    index = []
    for dim in range(first, last + 1):
        axis = spec.axes[dim - 2]
        size = value.shape[dim]
        vector = (
            inverse_permutation(
                g.permutations[axis.space].to(device=value.device, dtype=torch.long)
            )
            if moving[axis.space]
            else torch.arange(size, device=value.device)
        )
        shape = [1] * (last - first + 1)
        shape[dim - first] = size
        index.append(vector.reshape(shape))
    return value[(slice(None),) * first + tuple(index)]


def apply_group_element(ws: WeightSpace, layout: WeightSpaceLayout, g: GroupElement) -> WeightSpace:
    """``g . ws``: act on every tensor axis; any batch size, channel count and dtype.

    Scales are raised to each axis's character in their own dtype, then cast to the tensor's.
    Identity permutations and unit factors (fixed spaces, spaces without scaling) are skipped:
    on a large weight space each would copy whole tensors for nothing.
    """
    _check_element(layout, g)
    moving = {
        name: not torch.equal(perm, torch.arange(perm.numel(), dtype=perm.dtype))
        for name, perm in g.permutations.items()
    }
    scaling = {name: not bool((scale == 1).all()) for name, scale in g.scales.items()}

    def act(spec: TensorLayout, value: Tensor) -> Tensor:
        moved = [2 + index for index, axis in enumerate(spec.axes) if moving[axis.space]]
        fresh = bool(moved)  # value is then a new tensor (safe to scale in place)
        if moved:
            value = _permute_axes(value, spec, g, moving, min(moved), max(moved))
        for index, axis in enumerate(spec.axes):
            if axis.character == 0 or not scaling[axis.space]:
                continue
            shape = [1] * value.dim()
            shape[2 + index] = -1
            factor = g.factor(axis.space, axis.character).to(value.device, value.dtype)
            value = value.mul_(factor.reshape(shape)) if fresh else value * factor.reshape(shape)
            fresh = True
        return value

    moves = tensor_moves(layout, g)
    if not moves:
        return ws.map_layout(layout, act)
    ws.validate(layout)
    moved = {moves.get(s.name, s.name): act(s, ws.get(s)) for s in layout.tensors}
    return WeightSpace.from_named(layout, moved)
