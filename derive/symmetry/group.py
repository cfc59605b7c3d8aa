"""The symmetry group of a weight space (docs/math.md section 2).

Per neuron space: is it permuted, and which diagonal scaling does every operation touching it
allow? Hidden spaces are permuted; input and output spaces only in the NP setting
(``permute="all"``) and never scaled; fixed axes are never moved. A space touched by several
operations keeps only what all of them allow (:meth:`Scaling.meet`). ``decided_by`` records
the reason, for ``inspect``. The heads of an attention are then permuted as wholes where
:mod:`derive.symmetry.heads` finds that a symmetry.
"""

from __future__ import annotations

from dataclasses import replace

from derive.symmetry.activations import ACTIVATION_REASON, scaling_of
from derive.symmetry.heads import decide_head_permutations
from derive.weightspace.model import NeuronSpace, Scaling, WeightSpaceSpec

__all__ = ["space_symmetry", "derive_group"]


def _hidden_symmetry(space: NeuronSpace, override: str) -> tuple[Scaling, str]:
    if override != "auto":
        return Scaling(override), f"--scaling {override} (override)"
    scaling = Scaling.NONZERO
    reasons = []
    for activation, origin in space.activations:
        allowed = scaling_of(activation)
        scaling = scaling.meet(allowed)
        reasons.append(f"{activation} ({ACTIVATION_REASON[allowed]}) at {origin}")
    for allowed, why in space.constraints:
        scaling = scaling.meet(allowed)
        reasons.append(
            why if allowed is Scaling.NONZERO else f"{allowed.value} scaling only: {why}"
        )
    if not reasons:
        return scaling, "no activation (linear)"
    return scaling, "; ".join(reasons)


def _origin(space: NeuronSpace) -> str:
    """Where a space comes from, and which spaces are tied into it."""
    origin = space.origin
    if space.ties:
        origin += "; tied with " + ", ".join(space.ties)
    return origin


def space_symmetry(space: NeuronSpace, permute: str, scaling: str) -> NeuronSpace:
    """``space`` with the permutation and scaling the architecture and the options allow."""
    origin = _origin(space)
    if space.role == "fixed":
        return replace(space, permuted=False, scaling=Scaling.NONE, decided_by=f"fixed: {origin}")
    if space.role == "replicated":
        return replace(
            space,
            permuted=True,
            scaling=Scaling.NONE,
            decided_by=f"permuted: {origin} (every position holds the same value)",
        )
    if space.role == "hidden":
        kind, reason = _hidden_symmetry(space, scaling)
        where = f" ({origin})" if origin else ""
        return replace(
            space, permuted=True, scaling=kind, decided_by=f"hidden space{where}; {reason}"
        )
    permuted = permute == "all"
    setting = "NP setting: permuted" if permuted else "HNP setting: fixed"
    where = f"; {origin}" if origin else ""
    return replace(
        space,
        permuted=permuted,
        scaling=Scaling.NONE,
        decided_by=f"{space.role} space ({setting}){where}",
    )


def derive_group(
    space: WeightSpaceSpec, permute: str = "hidden", scaling: str = "auto"
) -> WeightSpaceSpec:
    """The weight space with every space's group decided (``permute``: hidden | all;
    ``scaling``: auto, or a scaling kind that overrides every hidden space)."""
    decided = replace(
        space,
        spaces=tuple(space_symmetry(s, permute, scaling) for s in space.spaces),
        setting=f"permute {permute}; scaling {scaling}",
    )
    return decide_head_permutations(decided)
