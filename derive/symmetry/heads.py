"""Whole-head permutations: which attention operations let the group relabel their heads.

Relabelling head ``h`` as head ``h'`` moves every space of head ``h`` onto the matching space
of head ``h'`` (the spaces of every other head and every other space stay) and every tensor on
them onto the tensor with the same kind, state-dict entry and axes up to the heads' spaces. It
is a symmetry of the network when every head's spaces have the same sizes and group, no tensor
or space belongs to two heads, and the tensors of two heads correspond one to one: then the
whole group is the per-space group extended by these relabellings (a semidirect product, the
wreath product for one attention; docs/math.md 8.6). :func:`decide_head_permutations` checks
that per attention and records the corresponding tensors (``HeadBlock.tensors``).
"""

from __future__ import annotations

from dataclasses import replace

from derive.weightspace.model import HeadBlock, TensorSpec, WeightSpaceSpec

__all__ = ["decide_head_permutations"]

#: what identifies a tensor of one head up to the head: kind, state-dict entry, and per axis
#: (position of its space in the head or -1, that space or None, character)
_TensorKey = tuple[str, str, tuple[tuple[int, str | None, int], ...]]


def _key(tensor: TensorSpec, position: dict[str, int]) -> _TensorKey:
    axes = tuple(
        (position[a.space], None, a.character)
        if a.space in position
        else (-1, a.space, a.character)
        for a in tensor.axes
    )
    return tensor.kind, tensor.source_key, axes


def _head_tensors(space: WeightSpaceSpec, block: HeadBlock) -> tuple[tuple[str, ...], ...] | str:
    """Per head its tensors in corresponding order, or why the heads cannot be relabelled."""
    heads = block.heads
    if len(heads) < 2:
        return "a single head"
    shapes = {
        (
            len(h.query_key),
            len(h.value),
            *(
                (space.space(s).size, space.space(s).scaling, space.space(s).permuted)
                for s in h.spaces
            ),
        )
        for h in heads
    }
    if len(shapes) != 1:
        return "heads of different sizes or groups"
    every = [s for h in heads for s in h.spaces]
    if len(set(every)) != len(every):
        return "heads share a space"
    if not all(space.space(s).permuted for s in every):
        return "head spaces are not permuted"
    owner = {s: index for index, h in enumerate(heads) for s in h.spaces}
    per_head: list[dict[_TensorKey, list[str]]] = [{} for _ in heads]
    for tensor in (*space.tensors, *space.buffers):
        touched = {owner[a.space] for a in tensor.axes if a.space in owner}
        if len(touched) > 1:
            return f"tensor {tensor.name} reads two heads"
        if touched:
            (index,) = touched
            position = {s: k for k, s in enumerate(heads[index].spaces)}
            per_head[index].setdefault(_key(tensor, position), []).append(tensor.name)
    keys = [{k: len(v) for k, v in found.items()} for found in per_head]
    if any(k != keys[0] for k in keys):
        return "the heads' tensors do not correspond"
    order = list(per_head[0])  # in tensor order
    return tuple(tuple(name for key in order for name in found[key]) for found in per_head)


def _decided(space: WeightSpaceSpec, block: HeadBlock) -> HeadBlock:
    tensors = _head_tensors(space, block)
    if isinstance(tensors, str):
        return replace(block, permuted=False, decided_by=f"heads not permuted: {tensors}")
    return replace(
        block,
        permuted=True,
        tensors=tensors,
        decided_by=(
            f"{len(block.heads)} heads permuted as wholes (each head's query/key and value "
            "spaces and the tensors on them move together)"
        ),
    )


def decide_head_permutations(space: WeightSpaceSpec) -> WeightSpaceSpec:
    """``space`` with each head block's relabellings decided; each space of a permuted head
    says so in its ``decided_by`` (what ``inspect`` prints per space)."""
    blocks = tuple(_decided(space, b) for b in space.head_blocks)
    moved: dict[str, str] = {}
    for block in blocks:
        if block.permuted:
            for index, head in enumerate(block.heads):
                for name in head.spaces:
                    moved[name] = (
                        f"; moved as a whole with head {index} by permutations of the "
                        f"{len(block.heads)} heads of {block.where}"
                    )
    spaces = tuple(
        replace(s, decided_by=s.decided_by + moved[s.name]) if s.name in moved else s
        for s in space.spaces
    )
    return replace(space, spaces=spaces, head_blocks=blocks)
