"""The symbolic checks of ``verify`` (docs/math.md section 6.1): every basis map (linear,
constants, invariants) proved equivariant with symbolic scales, and per block the enumeration
count equal to the partition formula (Bell / Stirling) where the group is permutations only."""

from __future__ import annotations

import math

from derive.basis.expressions import verify_map
from derive.basis.linear import LinearBasis
from derive.basis.partitions import partition_count
from derive.derivation import Derivation
from derive.verify.checklist import VerifyReport

__all__ = ["symbolic_checks"]


def symbolic_checks(derivation: Derivation, report: VerifyReport) -> None:
    """Every basis map proved equivariant with symbolic scales; per permutation-only block,
    the enumerated count equal to the partition formula."""
    basis = derivation.basis
    space = derivation.space
    total = failed = 0
    first_failure = ""
    for block in (*basis.blocks, *basis.constants, *basis.invariants):
        for basis_map in block.maps:
            total += 1
            check = verify_map(space, basis_map)
            if not check.ok:
                failed += 1
                first_failure = first_failure or f"{block.key}: {check.detail}"
    report.add(
        "symbolic equivariance",
        failed == 0,
        f"{total} maps proved with symbolic scales"
        if not failed
        else f"{failed}/{total} failed, first {first_failure}",
    )
    mismatches = []
    checked = 0
    for block in basis.blocks:
        expected = _partition_formula(basis, block.output, block.input)
        if expected is None:
            continue
        checked += 1
        if expected != block.dim:
            mismatches.append(f"{block.key}: enumerated {block.dim}, formula {expected}")
    if checked:
        report.add(
            "count formula",
            not mismatches,
            f"{checked} permutation-only blocks match prod(fixed) * prod(sum_t S2(k+l, t <= n))"
            if not mismatches
            else "; ".join(mismatches[:3]),
        )


def _partition_formula(basis: LinearBasis, output: str | None, input: str | None) -> int | None:
    """the count of docs/math.md section 3 for a block whose spaces are permuted without scaling, else None."""
    space = basis.space
    positions: dict[str, int] = {}
    fixed = 1
    for name in (output, input):
        if name is None:
            continue
        for axis in space.tensor(name).axes:
            s = space.space(axis.space)
            if s.is_fixed:
                fixed *= s.size
            elif s.scaling.value != "none":
                return None
            else:
                positions[s.name] = positions.get(s.name, 0) + 1
    return fixed * math.prod(partition_count(k, space.space(n).size) for n, k in positions.items())
