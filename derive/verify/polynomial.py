"""The polynomial part of ``nfn-derive verify``.

For the polynomial layer (MAGEP or complete family) and the polynomial invariant layer:
agreement with a slow reference that evaluates every term separately, float64 and float32
equivariance (invariance), sensitivity to transforms outside the group, the output scale at
initialization, and, for the complete family, the numeric dimension of equivariant maps
Sym^2(U) -> U against the enumeration on tiny widths.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import torch
from torch import nn

from derive.verify.checklist import VerifyReport, layer_class, load_generated, sensitivity_check
from derive.errors import GenerationError
from derive.plan.invariant import invariant_plan
from derive.basis.magep import chain_of
from derive.verify.numeric_poly import sym_power_dimension
from derive.pipeline import Derivation, derive, generate, proxy_derivation, space_sizes
from derive.plan.polynomial import polynomial_plan
from derive.basis.polynomial import count_block
from derive.verify.reference import ReferenceInvariant, load_into_generated
from derive.verify.reference_poly import ReferencePolynomial
from nfn_runtime import equivariance_error, invariance_error, random_weight_space

#: complete-family terms with more parameters per channel pair than this are checked on a proxy
CHECK_PARAMS_LIMIT = 20000

__all__ = ["polynomial_checks", "output_scale", "load_invariant_reference", "polynomial_proxy"]


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


def polynomial_checks(
    derivation: Derivation,
    report: VerifyReport,
    degree: int | None,
    family: str,
    samples: int,
    seed: int,
) -> None:
    """Add the polynomial checks to ``report``.

    The complete family's dense parameters over fixed axes grow with their sizes (e.g.
    784 x 784 x 10 for ``W1'[i,x] += theta[x,u,v] W1[i,u] b3[v]``), so its layer is checked on
    the polynomial proxy (same group, small widths) when its terms carry more than
    :data:`CHECK_PARAMS_LIMIT` parameters per channel pair.
    """
    add = report.add
    label = f"polynomial {family}" + (f" degree<={degree}" if degree is not None else "")
    try:
        if family == "magep":
            chain_of(derivation.space)
        pplan = polynomial_plan(derivation.basis, family, degree, max_params=None)
    except GenerationError as exc:
        add(f"{label} layer", True, f"not applicable: {exc}")
        return
    if family == "complete" and sum(m.num_params for m in pplan.terms) > CHECK_PARAMS_LIMIT:
        derivation = polynomial_proxy(derivation)
        pplan = polynomial_plan(derivation.basis, family, degree)
        label += f" (proxy {space_sizes(derivation.space)})"
    source = generate(derivation, "polynomial", family=family, degree=degree)
    cls = layer_class(load_generated(source, "nfn_generated_polynomial"))
    layout = derivation.space.to_layout()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    generated = cls(2, 3).double()
    reference = ReferencePolynomial(pplan, derivation.basis, 2, 3).double()
    load_into_generated(reference, pplan.plan, generated)
    x = random_weight_space(layout, 2, 2, torch.float64, generator)
    with torch.no_grad():
        got, want = generated(x), reference(x)
    error = max(
        float((a - b).norm() / b.norm().clamp_min(1e-300))
        for a, b in zip(got.tensors(), want.tensors())
    )
    add(
        f"{label} matches reference",
        error <= 1e-10,
        f"relative difference {error:.2e} over {len(pplan.terms)} terms, each evaluated separately",
    )
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        name = str(dtype).removeprefix("torch.")
        err = equivariance_error(
            cls(2, 3), layout, n_samples=samples, channels=2, dtype=dtype, generator=generator
        )
        add(
            f"{label} equivariance ({name})",
            err <= tol,
            f"max relative error {err:.2e} (bound {tol:g})",
        )
    scales = output_scale(cls(4, 4), derivation)
    low, high = min(scales.values()), max(scales.values())
    add(
        f"{label} scale at init",
        0.05 <= low and high <= 20.0,
        f"output std per tensor in [{low:.2f}, {high:.2f}] for unit-normal input (bounds 0.05..20)",
    )
    sensitivity_check(
        layout,
        cls(2, 3),
        ReferencePolynomial(pplan, derivation.basis, 2, 3),
        label,
        report,
        generator,
    )
    if family == "complete":
        _degree2_completeness(derivation, report)
    if family == "magep":
        _invariant_checks(derivation, degree, samples, report, generator)


def _invariant_checks(
    derivation: Derivation,
    degree: int | None,
    samples: int,
    report: VerifyReport,
    generator: torch.Generator,
) -> None:
    add = report.add
    plan = invariant_plan(derivation.space, True, degree)
    source = generate(derivation, "polynomial-invariant", degree=degree)
    cls = layer_class(load_generated(source, "nfn_generated_polynomial_invariant"))
    layout = derivation.space.to_layout()
    generated = cls(2, 3).double()
    reference = ReferenceInvariant(derivation.space, 2, 3, plan.magep).double()
    load_invariant_reference(reference, generated)
    x = random_weight_space(layout, 2, 2, torch.float64, generator)
    with torch.no_grad():
        got, want = generated(x), reference(x)
    error = float((got - want).norm() / want.norm().clamp_min(1e-300))
    count = len(plan.magep.terms) if plan.magep else 0
    add(
        "polynomial invariant matches reference",
        error <= 1e-10,
        f"relative difference {error:.2e} ({count} MAGEP invariants beside the pooled features)",
    )
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        name = str(dtype).removeprefix("torch.")
        err = invariance_error(
            cls(2, 3), layout, n_samples=samples, channels=2, dtype=dtype, generator=generator
        )
        add(
            f"polynomial invariant ({name})",
            err <= tol,
            f"max relative error {err:.2e} (bound {tol:g})",
        )
    reference_check = ReferenceInvariant(derivation.space, 2, 3, plan.magep)
    sensitivity_check(layout, cls(2, 3), reference_check, "polynomial invariant", report, generator)


def polynomial_proxy(derivation: Derivation) -> Derivation:
    """Widths capped at 3 (hidden) and 2 (input, output, fixed axes): every kind of degree-2
    block, at widths where no diagram is dropped (a degree-2 block has at most 3 positions per
    space). A spec that can shrink itself (an MLP) also keeps at most three hidden layers."""
    return proxy_derivation(derivation, shrink_spec=True)


def _degree2_completeness(derivation: Derivation, report: VerifyReport) -> None:
    """The numeric dimension of equivariant maps Sym^2(U) -> U equals the enumeration's count,
    block by block (every output, invariants included, and every pair of factors)."""
    proxy = polynomial_proxy(derivation)
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
