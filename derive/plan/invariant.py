"""The exactly invariant layer: canonicalize the scaling, pool with the complete basis, mix.

Under scaling groups almost no invariant linear functionals exist (docs/math.md section 4), so the
layer first removes the scaling of every entry exactly: an entry whose factor can be negative
(sign or nonzero scalings) is replaced by its absolute value, an entry whose factor can be any
positive number has its channel vector divided by its norm (0 stays 0). What remains is acted
on by permutations only, and the layer applies the complete basis of permutation-invariant
linear functionals of every tensor, then one ``nn.Linear`` to ``out_channels``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from derive.basis.head_orbits import head_orbits
from derive.basis.linear import enumerate_block
from derive.basis.magep import virtual_name
from derive.basis.polynomial import enumerate_polynomial
from derive.plan.features import PRODUCT, Feature, feature_for, tensor_var
from derive.plan.magep import MagepPlan, magep_invariants
from derive.weightspace.model import Scaling, TensorSpec, WeightSpaceSpec

__all__ = [
    "Canonicalization",
    "InvariantPlan",
    "canonicalization",
    "permutation_only",
    "invariant_plan",
]


@dataclass(frozen=True)
class Canonicalization:
    """How one tensor's entries are freed from scaling: ``normalize`` and/or ``absolute``."""

    tensor: str
    normalize: bool
    absolute: bool

    @property
    def needed(self) -> bool:
        return self.normalize or self.absolute


def canonicalization(space: WeightSpaceSpec, tensor: TensorSpec) -> Canonicalization:
    """What the scalings acting on ``tensor`` require to be removed."""
    normalize = absolute = False
    for axis in tensor.axes:
        scaling = space.space(axis.space).scaling
        if axis.character == 0 or scaling is Scaling.NONE:
            continue
        normalize |= scaling.allows_positive()
        absolute |= scaling.allows_sign() and axis.character % 2 != 0
    return Canonicalization(tensor.name, normalize, absolute)


@dataclass(frozen=True)
class InvariantPlan:
    space: WeightSpaceSpec
    canonical: tuple[Canonicalization, ...]
    features: tuple[Feature, ...]
    in_factor: int
    magep: MagepPlan | None = None  # polynomial invariants (their terms and Psi)
    trainable_psi: bool = True
    #: the features summed before mixing, one group per orbit under whole-head permutations
    #: (docs/math.md 8.6); empty: every feature mixed on its own
    orbits: tuple[tuple[str, ...], ...] = ()

    def __str__(self) -> str:
        canonical = sum(c.needed for c in self.canonical)
        terms = len(self.magep.terms) if self.magep is not None else 0
        return (
            f"InvariantPlan of {self.space.name}: {canonical} tensors canonicalized, "
            f"{len(self.features)} pooled features ({terms} MAGEP invariants), "
            f"{self.in_factor} values per input channel"
        )

    def __repr__(self) -> str:
        return f"<{self}>"


def permutation_only(space: WeightSpaceSpec) -> WeightSpaceSpec:
    """The same weight space with every scaling removed (permutations only)."""
    spaces = tuple(replace(s, scaling=Scaling.NONE) for s in space.spaces)
    return replace(space, spaces=spaces)


def canonical_var(tensor: str) -> str:
    return f"{tensor_var(tensor)}_canon"


def invariant_plan(
    space: WeightSpaceSpec,
    polynomial: bool = False,
    degree: int | None = None,
    trainable_psi: bool = True,
    family: str = "magep",
    max_terms: int = 2000,
) -> InvariantPlan:
    """Canonicalization per tensor, then every permutation-invariant functional as a feature;
    with ``polynomial``, also every MAGEP invariant of degree 2..``degree``."""
    perm_space = permutation_only(space)
    canonical = tuple(canonicalization(space, t) for t in space.tensors)
    taken = {tensor_var(t.name) for t in space.tensors} | {
        canonical_var(t.name) for t in space.tensors
    }
    taken |= {"batch", "ws", "self", "pooled"}
    features = []
    for tensor, canon in zip(space.tensors, canonical):
        var = canonical_var(tensor.name) if canon.needed else tensor_var(tensor.name)
        for basis_map in enumerate_block(perm_space, None, tensor):
            reduced = tuple(sorted(b.inputs for b in basis_map.blocks))
            features.append(feature_for(perm_space, (tensor.name, (), reduced), taken, var=var))
    magep = None
    if polynomial and family == "magep":
        magep = magep_invariants(space, degree)
        taken |= {t.var for t in magep.terms}
        for term in magep.terms:
            features.append(feature_for(magep.space, (virtual_name(term), (), ()), taken))
    elif polynomial:  # complete family: every invariant monomial of degree 2..degree
        for d in range(2, (degree or 2) + 1):
            basis = enumerate_polynomial(space, d, limit=max_terms)
            for block in basis.blocks:
                if block.output is not None:
                    continue
                for m in block.maps:
                    pooled = tuple(sorted(b.inputs for b in m.blocks))
                    key = (PRODUCT, m.factors, (), pooled)
                    features.append(feature_for(space, key, taken))
    orbits = () if polynomial else pooled_orbits(space, features)
    factor = sum(f.factor for f in features)
    if orbits:
        by_name = {f.name: f for f in features}
        factor = sum(by_name[group[0]].factor for group in orbits)
    return InvariantPlan(space, canonical, tuple(features), factor, magep, trainable_psi, orbits)


def pooled_orbits(space: WeightSpaceSpec, features: list[Feature]) -> tuple[tuple[str, ...], ...]:
    """The pooled features grouped by orbit under whole-head permutations, in order of first
    member: relabelling heads moves the functional of ``T`` with pattern ``P`` to that of
    ``sigma T`` with ``P``, so an invariant layer mixes each orbit's sum (empty when the group
    permutes no heads)."""
    orbits = head_orbits(space)
    if orbits.trivial:
        return ()
    groups: dict[object, list[str]] = {}
    for feature in features:
        tensor, kept, reduced = feature.key
        (canonical,) = orbits.canonical((tensor,))
        groups.setdefault((canonical, kept, reduced), []).append(feature.name)
    return tuple(tuple(group) for group in groups.values())
