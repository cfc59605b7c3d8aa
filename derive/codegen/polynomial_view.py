"""The polynomial layer's view: the linear view of its merged plan, plus the product
statements, the Psi parameters and the folded glued terms."""

from __future__ import annotations

from dataclasses import replace

from derive.basis.magep import MagepTerm
from derive.basis.poly_formulas import poly_formula_text
from derive.codegen.magep_code import fold_placement, fold_statements, magep_code
from derive.codegen.statements import Statement, rows_slice, scaled, split_long
from derive.codegen.views import InitRows, LinearView, ParamDecl, PsiDecl, linear_view, wrap_words
from derive.naming import comment_text
from derive.plan.features import tensor_var
from derive.plan.polynomial import PolynomialPlan

__all__ = ["polynomial_view"]


def polynomial_view(pplan: PolynomialPlan) -> LinearView:
    """The linear view of the merged plan plus the product statements and Psi parameters."""
    code = magep_code(pplan.magep) if pplan.magep is not None else None
    view = linear_view(pplan.plan, code.outer if code is not None else None)
    products = []
    for statement, comment in code.statements if code is not None else ():
        for line in split_long(statement):
            products.append(Statement(line, comment))
            comment = ""
    psis = tuple(
        PsiDecl(
            p.name,
            ", ".join(["in_channels", *(str(n) for n in p.shape)]),
            repr(p.std),
            pplan.trainable_psi,
        )
        for p in pplan.psis
    )
    lines = []
    for term in pplan.terms:
        if isinstance(term, MagepTerm):
            degrees = ",".join(str(d) for d in term.degrees)
            lines += wrap_words(
                comment_text(f"{term.output}' <- {term.formula} (degree {degrees})")
            )
        else:
            lines += wrap_words(comment_text(poly_formula_text(pplan.plan.space, term)))
    params = list(view.params)
    inits = list(view.inits)
    outputs = list(view.outputs)
    magep = pplan.magep
    if pplan.folds:
        outputs.append(Statement("", "glued terms folded through their factorization"))
    for group in pplan.folds:
        assert magep is not None and code is not None
        columns = scaled(group.in_size * len(group.parts), "in_channels")
        params.append(
            ParamDecl(group.weight, f"{scaled(group.out_factor, 'out_channels')}, {columns}")
        )
        bound = f"bound_{group.output.lower()}"
        inits.append(InitRows(group.weight, rows_slice(0, group.out_factor), bound, group.output))
        for statement, comment in fold_statements(magep, code, group):
            outputs.append(Statement(statement, comment))
        out_var = f"out_{tensor_var(group.output)}"
        outputs.append(
            Statement(f"{out_var} = {out_var} + {fold_placement(pplan.plan.space, group)}")
        )
    return replace(
        view,
        products=tuple(products),
        psis=psis,
        term_lines=tuple(lines),
        params=tuple(params),
        inits=tuple(inits),
        outputs=tuple(outputs),
    )
