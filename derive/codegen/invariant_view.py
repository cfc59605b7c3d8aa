"""The invariant layer's view: canonicalization, pooled features and MAGEP invariants as the
statements the invariant template prints."""

from __future__ import annotations

from dataclasses import dataclass

from derive.basis.magep import virtual_name
from derive.codegen import codefmt
from derive.codegen.feature_code import feature_expression
from derive.codegen.magep_code import magep_code
from derive.codegen.statements import Statement, split_long
from derive.codegen.views import PsiDecl
from derive.plan.features import tensor_var
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


def invariant_view(plan: InvariantPlan) -> InvariantView:
    """All strings of the invariant-layer template."""
    variables = [tensor_var(t.name) for t in plan.space.tensors]
    canonical = []
    for canon in plan.canonical:
        if not canon.needed:
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
    features = tuple(
        Statement(f"{f.name} = {feature_expression(read_space, f)}", f.description)
        for f in plan.features
        if not f.is_input
    )
    names = [f.name for f in plan.features]
    pooled = codefmt.wrap_list(names, 8, prefix="parts = ")
    formula = tuple(f"{f.name} = {f.description}" for f in plan.features)
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
    )
