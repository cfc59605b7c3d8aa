"""``nfn-derive verify``: every check of docs/math.md section 6 on the generated layers.

1. symbolic: every basis map (linear, constants, invariants) proved equivariant with symbolic
   scales, and per block the enumeration count equals the partition formula (Bell / Stirling)
   where the group is permutations only;
2. the network group check: the derived group applied to the network's own parameters leaves
   its outputs unchanged, and transforms outside the group change them;

and then every layer kind's own checks, e.g. for the linear layer:

3. the generated module equals the slow reference (same coefficients) and has exactly
   ``C_in * C_out * dim + C_out * constants`` parameters;
4. numeric equivariance (float64 <= 1e-10, float32 <= 1e-4) and invariance under sampled
   group elements (log-uniform positive scales 1e-2..1e2, sign flips, permutations);
5. sensitivity: under transforms outside the group that the complete space does not commute
   with, the generated layers do not commute either;
6. completeness: block by block, the numeric null-space dimension equals the symbolic count
   and the generated layer's Jacobians over random parameters span it. Large weight spaces
   are checked on a proxy with the same group and narrower widths (said in the report).
"""

from __future__ import annotations

import math

from derive.basis.expressions import verify_map
from derive.basis.linear import LinearBasis
from derive.basis.partitions import partition_count
from derive.derivation import Derivation, derive
from derive.frontend.options import ArchitectureSpec
from derive.layers import LAYER_KINDS
from derive.layers.kind import CheckOptions
from derive.verify.checklist import (
    Check,
    VerifyReport,
    load_generated,
)
from derive.verify.network import network_checks

__all__ = ["Check", "VerifyReport", "verify", "load_generated"]


def _symbolic(derivation: Derivation, report: VerifyReport) -> None:
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


def verify(
    spec: ArchitectureSpec | Derivation,
    samples: int = 3,
    seed: int = 0,
    degree: int | None = None,
    family: str = "magep",
) -> VerifyReport:
    """Run every check: the symbolic proofs of the basis, the group check on the network
    itself, then each registered layer kind's checks (:data:`derive.layers.LAYER_KINDS`)."""
    report = VerifyReport()
    derivation = spec if isinstance(spec, Derivation) else derive(spec)
    options = CheckOptions(samples=samples, seed=seed, family=family, degree=degree)
    _symbolic(derivation, report)
    network_checks(derivation, report, samples, seed)
    for kind in LAYER_KINDS.values():
        kind.checks(derivation, report, options)
    return report
