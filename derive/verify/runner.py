"""``nfn-derive verify``: every check of docs/math.md section 6 on the generated layers.

1. symbolic: every basis map (linear, constants, invariants) proved equivariant with symbolic
   scales, and per block the enumeration count equals the partition formula (Bell / Stirling)
   where the group is permutations only;
2. the generated linear module equals the slow reference (same coefficients) and has exactly
   ``C_in * C_out * dim + C_out * constants`` parameters;
3. numeric equivariance (float64 <= 1e-10, float32 <= 1e-4) and invariance under sampled
   group elements (log-uniform positive scales 1e-2..1e2, sign flips, permutations);
4. sensitivity: under transforms outside the group that the complete space does not commute
   with, the generated layers do not commute either;
5. completeness: block by block, the numeric null-space dimension equals the symbolic count
   and the generated layer's Jacobians over random parameters span it. Large weight spaces
   are checked on a proxy with the same group and narrower widths (said in the report).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from derive.basis.linear import LinearBasis
from derive.verify.checklist import Check, VerifyReport, layer_class, load_generated, sensitivity_check
from derive.basis.expressions import verify_map
from derive.basis.partitions import partition_count
from derive.pipeline import Derivation, derive, generate, proxy_derivation, space_sizes
from derive.verify.reference import ReferenceInvariant, ReferenceLinear, load_into_generated
from derive.frontend.spec import ArchitectureSpec
from nfn_runtime import (
    equivariance_error,
    invariance_error,
)

__all__ = ["Check", "VerifyReport", "verify", "load_generated", "PROXY_LIMIT"]

#: a weight space with more entries than this is checked for completeness on a proxy
PROXY_LIMIT = 80


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


def _generated_layers(derivation: Derivation) -> tuple[type[nn.Module], type[nn.Module]]:
    linear = layer_class(load_generated(generate(derivation, "linear"), "nfn_generated_linear"))
    invariant = layer_class(
        load_generated(generate(derivation, "invariant"), "nfn_generated_invariant")
    )
    return linear, invariant


def _reference_agreement(
    derivation: Derivation, linear_cls: type[nn.Module], report: VerifyReport
) -> None:
    c_in, c_out = 2, 3
    module = linear_cls(c_in, c_out).double()
    expected = c_in * c_out * derivation.basis.dim + c_out * derivation.basis.constant_dim
    count = sum(p.numel() for p in module.parameters())
    report.add(
        "parameter count",
        count == expected,
        f"{count} parameters, expected C_in*C_out*dim + C_out*constants = {expected}",
    )
    reference = ReferenceLinear(derivation.basis, c_in, c_out).double()
    load_into_generated(reference, derivation.linear_plan, module)
    layout = derivation.space.to_layout()
    generator = torch.Generator().manual_seed(0)
    from nfn_runtime import random_weight_space

    x = random_weight_space(layout, 2, c_in, torch.float64, generator)
    with torch.no_grad():
        got, want = module(x), reference(x)
    error = max(
        float((a - b).norm() / b.norm().clamp_min(1e-300))
        for a, b in zip(got.tensors(), want.tensors())
    )
    report.add(
        "linear matches reference",
        error <= 1e-12,
        f"relative difference {error:.2e} (one einsum per basis map)",
    )


def _invariant_agreement(
    derivation: Derivation, invariant_cls: type[nn.Module], report: VerifyReport
) -> None:
    module = invariant_cls(2, 3).double()
    reference = ReferenceInvariant(derivation.space, 2, 3).double()
    module.load_state_dict(reference.state_dict(), strict=False)
    from nfn_runtime import random_weight_space

    x = random_weight_space(
        derivation.space.to_layout(), 2, 2, torch.float64, torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        got, want = module(x), reference(x)
    error = float((got - want).norm() / want.norm().clamp_min(1e-300))
    report.add(
        "invariant matches reference",
        error <= 1e-12,
        f"relative difference {error:.2e} (one einsum per pooling map)",
    )


def _numeric(
    derivation: Derivation,
    linear_cls: type[nn.Module],
    invariant_cls: type[nn.Module],
    report: VerifyReport,
    samples: int,
    seed: int,
) -> None:
    layout = derivation.space.to_layout()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    linear = linear_cls(2, 3)
    invariant = invariant_cls(2, 3)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        name = str(dtype).removeprefix("torch.")
        err = equivariance_error(
            linear, layout, n_samples=samples, channels=2, dtype=dtype, generator=generator
        )
        report.add(
            f"linear equivariance ({name})",
            err <= tol,
            f"max relative error {err:.2e} over {samples} group elements (bound {tol:g})",
        )
        err = invariance_error(
            invariant, layout, n_samples=samples, channels=2, dtype=dtype, generator=generator
        )
        report.add(
            f"invariant layer ({name})",
            err <= tol,
            f"max relative error {err:.2e} over {samples} group elements (bound {tol:g})",
        )
    sensitivity_check(
        layout, linear, ReferenceLinear(derivation.basis, 2, 3), "linear", report, generator
    )
    sensitivity_check(
        layout,
        invariant,
        ReferenceInvariant(derivation.space, 2, 3),
        "invariant",
        report,
        generator,
    )


def _completeness(
    derivation: Derivation, linear_cls: type[nn.Module], report: VerifyReport, proxy_note: str
) -> None:
    from derive.verify.numeric import completeness_report, layer_jacobians

    counts = {b.key: b.dim for b in derivation.basis.blocks}
    module = linear_cls(1, 1).double()

    def randomize() -> None:
        with torch.no_grad():
            for name, param in module.named_parameters():
                param.normal_() if name.endswith("_weight") else param.zero_()

    draws = max(counts.values(), default=0) + 3
    jacobians = layer_jacobians(derivation.space, module, draws, randomize)
    checks = completeness_report(derivation.space, counts, jacobians)
    bad = [c for c in checks if not c.ok]
    total = sum(c.null_space for c in checks)
    detail = (
        f"{len(checks)} blocks: null space {total} = symbolic {derivation.basis.dim}; Jacobians span it{proxy_note}"
        if not bad
        else "; ".join(
            f"{c.key}: symbolic {c.symbolic}, null {c.null_space}, span {c.jacobian_span}"
            for c in bad[:3]
        )
    )
    report.add("completeness", not bad, detail)


def verify(
    spec: ArchitectureSpec | Derivation,
    samples: int = 3,
    seed: int = 0,
    degree: int | None = None,
    family: str = "magep",
) -> VerifyReport:
    """Run every check on the layers generated for ``spec`` (linear, invariant, polynomial);
    for a traced PyTorch module also the group check on the network itself."""
    report = VerifyReport()
    derivation = spec if isinstance(spec, Derivation) else derive(spec)
    _symbolic(derivation, report)
    from derive.verify.network import network_checks

    network_checks(derivation, report, samples, seed)
    linear_cls, invariant_cls = _generated_layers(derivation)
    _reference_agreement(derivation, linear_cls, report)
    _invariant_agreement(derivation, invariant_cls, report)
    _numeric(derivation, linear_cls, invariant_cls, report, samples, seed)
    if derivation.space.to_layout().num_params() <= PROXY_LIMIT:
        _completeness(derivation, linear_cls, report, "")
    else:
        proxy = proxy_derivation(derivation)
        proxy_linear, _ = _generated_layers(proxy)
        sizes = space_sizes(proxy.space)
        _completeness(proxy, proxy_linear, report, f" (on a proxy with sizes {sizes}, same group)")
    from derive.verify.polynomial import polynomial_checks

    polynomial_checks(derivation, report, degree, family, samples, seed)
    return report
