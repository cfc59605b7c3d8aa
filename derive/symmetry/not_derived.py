"""Symmetries of a network that its derived group leaves out, said plainly.

The derived group is exact: every element maps a network to one computing the same function.
It is not always the whole symmetry group. For attention it misses (docs/math.md 8.6): per
head, the invertible matrices on the query/key dimensions (``W_Q -> M W_Q``,
``W_K -> M^-T W_K``) and on the value dimensions (``W_V -> N W_V``, ``W_O -> W_O N^-1``)
beyond permutations and diagonal scalings; and translations of a key bias (softmax ignores a
constant per query row). Permutations of whole heads (a head's query/key and value dimensions
moved together to another head) are part of the group (:mod:`derive.symmetry.heads`); they are
listed here only for an attention whose heads could not be relabelled. :func:`not_derived`
lists what applies to one weight space, from the head blocks the front end recorded.
"""

from __future__ import annotations

from derive.weightspace.model import HeadBlock, NeuronSpace, Scaling, WeightSpaceSpec

__all__ = ["not_derived"]

#: what the matrices beyond the derived part are, by the scaling a head space kept
_MATRICES = {
    Scaling.NONZERO: ("invertible", "permutations and nonzero diagonal scalings"),
    Scaling.SIGN: ("orthogonal", "signed permutations"),
}


def _key_bias(space: WeightSpaceSpec, qk: NeuronSpace) -> str | None:
    """The key bias of a query/key space (a bias whose axis has character -1), if any."""
    for tensor in space.tensors:
        if tensor.kind == "bias" and [(a.space, a.character) for a in tensor.axes] == [
            (qk.name, -1)
        ]:
            return tensor.name
    return None


def _block_lines(space: WeightSpaceSpec, block: HeadBlock) -> list[str]:
    lines: list[str] = []
    where = block.where
    for role, what in (("query_key", "query/key"), ("value", "value")):
        spaces = [space.space(s) for h in block.heads for s in getattr(h, role)]
        for scaling, (kind, derived) in _MATRICES.items():
            chosen = [s for s in spaces if s.scaling is scaling and s.permuted]
            if chosen:
                names = ", ".join(f"{s.name} ({s.size})" for s in chosen)
                lines.append(
                    f"{where}: {kind} matrices on each head's {what} dimensions beyond "
                    f"{derived} (derived here): {names}"
                )
    if len(block.heads) > 1 and not block.permuted:
        pairs = ", ".join("(" + ", ".join(h.spaces) + ")" for h in block.heads)
        lines.append(
            f"{where}: permutations of whole heads, each head's query/key and value "
            f"dimensions moved together ({block.decided_by}): {pairs}"
        )
    biases = [
        b for h in block.heads for qk in h.query_key if (b := _key_bias(space, space.space(qk)))
    ]
    if biases:
        lines.append(
            f"{where}: adding any vector to a key bias (softmax ignores a constant per query "
            f"row): {', '.join(biases)}"
        )
    return lines


def not_derived(space: WeightSpaceSpec) -> list[str]:
    """One sentence per symmetry of the network that the derived group leaves out (attention
    only; empty when nothing applies). Spaces are named as ``inspect`` names them."""
    return [line for block in space.head_blocks for line in _block_lines(space, block)]
