"""The pipeline in one place: spec -> weight space -> group -> basis -> plan -> template ->
module -> verification.

>>> derivation = derive(mlp_spec((2, 3, 2), "relu"))   # front end, then the group
>>> derivation.basis                                     # the complete basis (lazy)
>>> derivation.linear_plan                               # the layer plan (lazy)
>>> source = generate(derivation, "linear")               # template -> module source

Every intermediate is a value that prints as a short summary. The layer kinds come from the
registry in :mod:`derive.layers`; :func:`verify` runs the symbolic proofs, the group check on
the network itself and every kind's checks (docs/math.md section 6):

1. symbolic: every basis map (linear, constants, invariants) proved equivariant with symbolic
   scales, and per block the enumeration count equals the partition formula (Bell / Stirling)
   where the group is permutations only;
2. the network group check: the derived group applied to the network's own parameters leaves
   its outputs unchanged, and transforms outside the group change them;
3. per layer kind (:mod:`derive.layers`), e.g. for the linear layer: agreement with the slow
   reference (one einsum per basis map) and the exact parameter count; float64 / float32
   equivariance under sampled group elements (log-uniform positive scales 1e-2..1e2, sign
   flips, permutations); sensitivity to transforms outside the group; completeness block by
   block (numeric null space = symbolic count, spanned by the generated layer's Jacobians; on
   a proxy with the same group for large weight spaces, said in the report).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from derive.derivation import Derivation, derive, proxy_derivation, space_sizes, trace_spec
from derive.errors import SpecError
from derive.frontend.options import ArchitectureSpec
from derive.layers import LAYER_KINDS, LayerOptions, generate
from derive.layers.kind import CheckOptions
from derive.plan.budget import Budget
from derive.verify.checklist import Check, VerifyReport
from derive.verify.limits import Limits, enforced
from derive.verify.network import network_checks
from derive.verify.symbolic import symbolic_checks

__all__ = [
    "Derivation",
    "derive",
    "generate",
    "trace_spec",
    "proxy_derivation",
    "space_sizes",
    "LAYER_KINDS",
    "LayerOptions",
    "VerifyReport",
    "verify",
    "check_group_names",
    "checked_groups",
    "spec_command",
]


def spec_command(spec: ArchitectureSpec) -> str:
    """The options that reproduce ``spec`` (used in generated headers)."""
    return spec.options()


#: the groups of checks ``verify --only`` selects, besides every layer kind's name
CHECK_GROUPS = ("symbolic", "network")


def check_group_names() -> tuple[str, ...]:
    """``symbolic``, ``network`` and every registered layer kind, in the order they run."""
    return (*CHECK_GROUPS, *LAYER_KINDS)


def checked_groups(only: Sequence[str]) -> set[str]:
    """The groups ``only`` names; a :class:`SpecError` names the first unknown one (or an
    empty choice) and lists the valid ones."""
    valid = check_group_names()
    unknown = [name for name in only if name not in valid]
    if unknown or not only:
        got = repr(unknown[0]) if unknown else "nothing"
        raise SpecError(f"unknown check {got} (valid: {', '.join(valid)})", "--only")
    return set(only)


def verify(
    spec: ArchitectureSpec | Derivation,
    samples: int = 3,
    seed: int = 0,
    degree: int | None = None,
    family: str = "magep",
    only: Sequence[str] | None = None,
    budget: Budget = "default",
    memory: float | None = None,
    timeout: float | None = None,
    sink: Callable[[Check], None] | None = None,
) -> VerifyReport:
    """Run every check: the symbolic proofs of the basis, the group check on the network
    itself, then each registered layer kind's checks; ``only`` names the groups to run (see
    :func:`check_group_names`); ``budget`` is the linear layer's size budget, whose factored
    layer is checked beside the dense one.

    ``memory`` (GiB, None: no budget) bounds what the process holds: checks whose full
    setting does not fit run on a smaller batch, fewer channels or a proxy with the same group
    (their lines say so), and an allocation past it fails that check only (``out of memory``).
    ``timeout`` (seconds) bounds the run: checks not started by then are reported as not run.
    ``sink`` sees every check the moment it finishes (the command line prints it)."""
    chosen = set(check_group_names()) if only is None else checked_groups(only)
    report = VerifyReport(sink=sink, limits=Limits.of(memory, timeout))
    derivation = spec if isinstance(spec, Derivation) else derive(spec)
    options = CheckOptions(samples=samples, seed=seed, family=family, degree=degree, budget=budget)
    groups: list[tuple[str, Callable[[], None]]] = [
        ("symbolic", lambda: symbolic_checks(derivation, report)),
        ("network", lambda: network_checks(derivation, report, samples, seed)),
    ]
    for kind in LAYER_KINDS.values():
        groups.append((kind.name, partial(kind.checks, derivation, report, options)))
    with enforced(report.limits):
        for name, run in groups:
            if name in chosen:
                report.run_group(name, run)
    return report
