"""Helpers of the polynomial layer kinds' checks (:mod:`derive.layers.polynomial`,
:mod:`derive.layers.polynomial_invariant`): the output scale at initialization, loading a
reference invariant layer's parameters, the polynomial proxy, and, for the complete family,
the numeric dimension of equivariant maps Sym^2(U) -> U against the enumeration (with
whole-head permutations: the null space of the constraints of every generator, head
relabellings included, against the tied count).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from derive.basis.head_orbits import head_orbits
from derive.basis.polynomial import count_block, enumerate_polynomial
from derive.derivation import Derivation, proxy_derivation, space_sizes
from derive.plan.head_cells import poly_orbit_counts
from derive.verify.checklist import VerifyReport
from derive.verify.numeric_poly import sym_power_dimension
from derive.verify.numeric_poly_heads import poly_head_completeness
from derive.verify.reference import ReferenceInvariant
from nfn_runtime import random_weight_space

#: complete-family terms with more parameters per channel pair than this are checked on a proxy
CHECK_PARAMS_LIMIT = 20000

__all__ = [
    "CHECK_PARAMS_LIMIT",
    "output_scale",
    "load_invariant_reference",
    "polynomial_proxy",
    "degree2_completeness",
    "degree2_head_completeness",
]


def load_invariant_reference(reference: ReferenceInvariant, module: nn.Module) -> None:
    """Copy the reference invariant layer's parameters (mix and Psi) into a generated one."""
    state = {key.removeprefix("psi."): value for key, value in reference.state_dict().items()}
    module.load_state_dict(state, strict=True)


def output_scale(
    layer: nn.Module, derivation: Derivation, channels: int = 4, batch: int = 8
) -> dict[str, float]:
    """Per output tensor, the standard deviation of the layer's output on unit normal input."""
    layout = derivation.space.to_layout()
    x = random_weight_space(
        layout, batch, channels, torch.float64, torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        out = layer.double()(x)
    return {name: float(value.std()) for name, value in out.named(layout).items()}


def polynomial_proxy(derivation: Derivation) -> Derivation:
    """Widths capped at 3 (hidden) and 2 (input, output, fixed axes): every kind of degree-2
    block, at widths where no diagram is dropped (a degree-2 block has at most 3 positions per
    space). A spec that can shrink itself (an MLP) also keeps at most three hidden layers."""
    return proxy_derivation(derivation, shrink_spec=True)


def degree2_completeness(derivation: Derivation, report: VerifyReport) -> None:
    """The numeric dimension of equivariant maps Sym^2(U) -> U equals the enumeration's count,
    block by block (every output, invariants included, and every pair of factors); with
    whole-head permutations, per orbit of blocks too (:func:`degree2_head_completeness`)."""
    proxy = polynomial_proxy(derivation)
    if proxy.space.permuted_heads:
        degree2_head_completeness(proxy, report)
        return
    names = [t.name for t in proxy.space.tensors]
    mismatches = []
    checked = total = 0
    for output in [None, *names]:
        for factors in itertools.combinations_with_replacement(names, 2):
            symbolic = count_block(proxy.space, output, factors)[1]
            numeric = sym_power_dimension(proxy.space, output, factors)
            checked += 1
            total += symbolic
            if symbolic != numeric:
                mismatches.append(f"{output}<-{'*'.join(factors)}: {symbolic} vs {numeric}")
    report.add(
        "polynomial degree-2 completeness",
        not mismatches,
        f"{checked} blocks: numeric dim of Sym^2(U) -> U = enumeration ({total}) on proxy "
        f"{space_sizes(proxy.space)}"
        if not mismatches
        else "; ".join(mismatches[:3]),
    )


def degree2_head_completeness(proxy: Derivation, report: VerifyReport) -> None:
    """With whole-head permutations: every block's per-space null dimension equals the
    enumeration's count, and per orbit of blocks under the head relabellings the null dimension
    of the coupled system (:mod:`derive.verify.numeric_poly_heads`) equals the tied count (one
    coefficient per orbit of terms and fixed-axis entries, :mod:`derive.plan.head_cells`)."""
    space = proxy.space
    basis = enumerate_polynomial(space, 2, limit=None)
    dims = {block.key: block.dim for block in basis.blocks}
    maps = [m for block in basis.blocks for m in block.maps]
    counts = poly_orbit_counts(space, maps, head_orbits(space).generators())
    checks, per_space = poly_head_completeness(space, counts.tied_by_block)
    mismatches = [
        f"{key}: {dims.get(key, 0)} vs {numeric}"
        for key, numeric in per_space.items()
        if dims.get(key, 0) != numeric
    ]
    mismatches += [f"{c.key}: tied {c.symbolic} vs null {c.null_space}" for c in checks if not c.ok]
    tied = sum(c.null_space for c in checks)
    if tied != counts.tied_dim and not mismatches:
        mismatches.append(
            f"null space with head relabellings {tied} != tied basis {counts.tied_dim}"
        )
    report.add(
        "polynomial degree-2 completeness",
        not mismatches,
        f"{len(per_space)} blocks: numeric dim of Sym^2(U) -> U = enumeration ({counts.dim}); "
        f"with head relabellings, {len(checks)} orbits of blocks: null space {tied} = tied basis "
        f"{counts.tied_dim} ({counts.terms} terms in {counts.orbits} orbits) on proxy "
        f"{space_sizes(space)}"
        if not mismatches
        else "; ".join(mismatches[:3]),
    )
