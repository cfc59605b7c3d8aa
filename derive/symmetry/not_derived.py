"""Symmetries of a network that its derived (monomial) group leaves out, said plainly.

The derived group is exact: every element maps a network to one computing the same function.
It is not always the whole symmetry group. For attention it misses (docs/math.md 8.6): per
head, the invertible matrices on the query/key dimensions (``W_Q -> M W_Q``,
``W_K -> M^-T W_K``) and on the value dimensions (``W_V -> N W_V``, ``W_O -> W_O N^-1``)
beyond permutations and diagonal scalings; permutations of whole heads (a head's query/key
and value dimensions moved together to another head); and translations of a key bias (softmax
ignores a constant per query row). :func:`not_derived` lists what applies to one weight space,
from the reasons the front end gave its attention spaces.
"""

from __future__ import annotations

import re
from collections import defaultdict

from derive.weightspace.model import (
    QUERY_KEY_REASON,
    VALUE_REASON,
    NeuronSpace,
    Scaling,
    WeightSpaceSpec,
)

__all__ = ["not_derived"]

#: ``<where>: head <n> <role reason>`` as the front end writes an attention space's reason
_HEAD = re.compile(
    r"^(?P<where>.*): head (?P<head>\d+) (?P<role>"
    + "|".join(re.escape(reason) for reason in (QUERY_KEY_REASON, VALUE_REASON))
    + ")"
)

#: what the matrices beyond the derived part are, by the scaling a head space kept
_MATRICES = {
    Scaling.NONZERO: ("invertible", "permutations and nonzero diagonal scalings"),
    Scaling.SIGN: ("orthogonal", "signed permutations"),
}


def _heads(space: WeightSpaceSpec) -> dict[str, dict[int, dict[str, NeuronSpace]]]:
    """Attention spaces by where the attention is, then head, then role (qk / v)."""
    found: dict[str, dict[int, dict[str, NeuronSpace]]] = defaultdict(lambda: defaultdict(dict))
    for neurons in space.spaces:
        for _, why in neurons.constraints:
            match = _HEAD.match(why)
            if match is None:
                continue
            role = "qk" if match["role"] == QUERY_KEY_REASON else "v"
            found[match["where"]][int(match["head"])][role] = neurons
    return found


def _key_bias(space: WeightSpaceSpec, qk: NeuronSpace) -> str | None:
    """The key bias of a query/key space (a bias whose axis has character -1), if any."""
    for tensor in space.tensors:
        if tensor.kind == "bias" and [(a.space, a.character) for a in tensor.axes] == [
            (qk.name, -1)
        ]:
            return tensor.name
    return None


def not_derived(space: WeightSpaceSpec) -> list[str]:
    """One sentence per symmetry of the network that the derived group leaves out (attention
    only; empty when nothing applies). Spaces are named as ``inspect`` names them."""
    lines: list[str] = []
    for where, heads in _heads(space).items():
        for role, what in (("qk", "query/key"), ("v", "value")):
            spaces = [heads[h][role] for h in sorted(heads) if role in heads[h]]
            for scaling, (kind, derived) in _MATRICES.items():
                chosen = [s for s in spaces if s.scaling is scaling and s.permuted]
                if chosen:
                    names = ", ".join(f"{s.name} ({s.size})" for s in chosen)
                    lines.append(
                        f"{where}: {kind} matrices on each head's {what} dimensions beyond "
                        f"{derived} (derived here): {names}"
                    )
        complete = [heads[h] for h in sorted(heads) if len(heads[h]) == 2]
        if len(complete) > 1:
            pairs = ", ".join(f"({h['qk'].name}, {h['v'].name})" for h in complete)
            lines.append(
                f"{where}: permutations of whole heads, each head's query/key and value "
                f"dimensions moved together: {pairs}"
            )
        biases = [
            b for h in sorted(heads) if "qk" in heads[h] if (b := _key_bias(space, heads[h]["qk"]))
        ]
        if biases:
            lines.append(
                f"{where}: adding any vector to a key bias (softmax ignores a constant per query "
                f"row): {', '.join(biases)}"
            )
    return lines
