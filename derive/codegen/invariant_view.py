"""The invariant layer's view: canonicalization, pooled features and MAGEP invariants as the
statements the invariant template prints."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from derive.basis.magep import virtual_name
from derive.codegen import codefmt
from derive.codegen.feature_code import Reducer, feature_expression, plain_sum
from derive.codegen.magep_code import magep_code
from derive.codegen.statements import Statement, split_long
from derive.codegen.views import PsiDecl
from derive.plan.features import Feature, has_diagonal, tensor_var
from derive.plan.invariant import InvariantPlan, canonical_var

__all__ = ["InvariantView", "invariant_view"]


@dataclass(frozen=True)
class InvariantView:
    unpack_line: str
    unpack: tuple[str, ...]
    canonical: tuple[Statement, ...]
    features: tuple[Statement, ...]
    pooled: str
    in_factor: int
    formula: tuple[str, ...]
    products: tuple[Statement, ...] = ()
    psis: tuple[PsiDecl, ...] = ()
    runtime: tuple[str, ...] = ()  # canonicalization functions imported from nfn_runtime


def _fused_pools(plan: InvariantPlan) -> dict[str, tuple[str, str]]:
    """Canonical variable -> (runtime function, raw variable), for every canonicalized tensor
    read by a single plain pooled sum: ``unit_channel_sum`` or ``absolute_sum`` computes that
    sum from the raw tensor, keeps no canonical copy for the backward pass and allocates one
    gradient-sized tensor in it (autograd through the unfused code: four to six)."""
    readers: dict[str, list[Feature]] = {}
    for feature in plan.features:
        readers.setdefault(feature.reads, []).append(feature)
    fused: dict[str, tuple[str, str]] = {}
    for canon in plan.canonical:
        var = canonical_var(canon.tensor)
        features = readers.get(var, [])
        if not canon.needed or canon.normalize == canon.absolute or len(features) != 1:
            continue
        (feature,) = features
        if feature.parent is not None or has_diagonal(feature.key) or not feature.key[2]:
            continue
        function = "unit_channel_sum" if canon.normalize else "absolute_sum"
        fused[var] = (function, tensor_var(canon.tensor))
    return fused


def _reducer(fused: dict[str, tuple[str, str]]) -> Reducer:
    """Sums of fused canonical variables call the runtime on the raw tensor."""

    def reduce(var: str, dims: tuple[int, ...]) -> str:
        if var not in fused:
            return plain_sum(var, dims)
        function, raw = fused[var]
        return f"{function}({raw}, {dims!r})"

    return reduce


def invariant_view(plan: InvariantPlan) -> InvariantView:
    """All strings of the invariant-layer template."""
    variables = [tensor_var(t.name) for t in plan.space.tensors]
    fused = _fused_pools(plan)
    canonical = []
    for canon in plan.canonical:
        if not canon.needed or canonical_var(canon.tensor) in fused:
            continue
        var = tensor_var(canon.tensor)
        expr = f"unit_channels({var})" if canon.normalize else var
        if canon.absolute:
            expr = f"{expr}.abs()"
        what = " and ".join(
            w
            for w, on in (
                ("unit channel norm", canon.normalize),
                ("absolute value", canon.absolute),
            )
            if on
        )
        canonical.append(Statement(f"{canonical_var(canon.tensor)} = {expr}", what))
    # MAGEP invariants are features of virtual tensors of the extended space
    read_space = plan.magep.space if plan.magep is not None else plan.space
    reducer = _reducer(fused)
    features = tuple(
        Statement(f"{f.name} = {feature_expression(read_space, f, reducer)}", f.description)
        for f in plan.features
        if not f.is_input
    )
    names = [" + ".join(group) for group in plan.orbits] or [f.name for f in plan.features]
    pooled = codefmt.wrap_list(names, 8, prefix="parts = ")
    formula = tuple(f"{f.name} = {f.description}" for f in plan.features)
    if plan.orbits:
        formula += (
            "orbits under whole-head permutations, summed before mixing:",
            *(" + ".join(group) for group in plan.orbits if len(group) > 1),
        )
    products: list[Statement] = []
    psis: list[PsiDecl] = []
    if plan.magep is not None:
        for statement, comment in magep_code(plan.magep).statements:
            for k, line in enumerate(split_long(statement)):
                products.append(Statement(line, comment if k == 0 else ""))
        psis = [
            PsiDecl(
                p.name,
                ", ".join(["in_channels", *(str(n) for n in p.shape)]),
                repr(p.std),
                plan.trainable_psi,
            )
            for p in plan.magep.psis
        ]
        described = {virtual_name(t).lower(): t.formula for t in plan.magep.terms}
        formula = tuple(
            f"{f.name} = {described[f.source.lower()]}" if f.source.lower() in described else line
            for f, line in zip(plan.features, formula)
        )
    return InvariantView(
        unpack_line=codefmt.assign_tuple(
            variables, "unpack_weight_space(ws, LAYOUT, self.in_channels)", 8
        ),
        unpack=tuple(variables),
        canonical=tuple(canonical),
        features=features,
        pooled=pooled,
        in_factor=plan.in_factor,
        formula=formula,
        products=tuple(products),
        psis=tuple(psis),
        runtime=_runtime_imports(canonical, features),
    )


def _runtime_imports(*statements: Sequence[Statement]) -> tuple[str, ...]:
    """The canonicalization functions of ``nfn_runtime`` the statements call, sorted."""
    code = "\n".join(st.code for group in statements for st in group)
    return tuple(
        name
        for name in ("absolute_sum", "unit_channel_sum", "unit_channels")
        if re.search(rf"\b{name}\(", code)
    )
