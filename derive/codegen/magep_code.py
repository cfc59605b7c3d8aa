"""The statements computing MAGEP terms, and the folded terms' factorized products.

Prefix products ``P_s = [W](s,0)`` and suffix products ``Q_t = [W](L,t)`` are computed once
each (O(L) matmul chains), one matmul per path product for all the Psi blocks that multiply it,
``sum_t [Wb](i,t)`` by a recurrence. Folded glued terms (:mod:`derive.plan.fold`) are computed
through their low-rank factorization, contracted with the mixing weights first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import sqrt

from derive.basis.magep import Chain, MagepTerm
from derive.plan.fold import FoldGroup
from derive.plan.magep import MagepPlan, glued_parts
from derive.weightspace.model import WeightSpaceSpec

__all__ = ["MagepCode", "magep_code", "fold_statements", "fold_placement"]


@dataclass(frozen=True)
class MagepCode:
    """The statements of a MAGEP plan, and the expressions of each glued term's halves."""

    statements: tuple[tuple[str, str], ...]  # (code, comment)
    left: dict[str, str]  # term var -> expression of P Psi
    right: dict[str, str]  # term var -> expression of Psi' Q
    outer: dict[str, tuple[str, str]]  # rank-one term var -> (u, v) of u v^T


def magep_code(magep: MagepPlan) -> MagepCode:
    """Every statement computing the plan's terms (but the folded and rank-one ones)."""
    chain = magep.chain
    statements, left, right = _statements(chain, magep.terms, magep.unmaterialized)
    bias = {t.var: (chain.biases[t.i - 1] or "").lower() for t in magep.terms}
    outer = {var: (bias[var], f"{right[var]}.squeeze(-2)") for var in sorted(magep.outer)}
    return MagepCode(tuple(statements), left, right, outer)


def _div(value: float) -> str:
    return f" / {float(value)!r}" if value != 1 else ""


def _statements(
    chain: Chain, terms: Sequence[MagepTerm], folded: frozenset[str] = frozenset()
) -> tuple[list[tuple[str, str]], dict[str, str], dict[str, str]]:
    """Python statements computing every term (but the folded ones, whose path products are
    still computed); every path product computed once."""
    L = chain.layers
    n = chain.sizes
    w = [""] + [name.lower() for name in chain.weights]  # w[i] holds W_i
    b: list[str | None] = [None, *(None if x is None else x.lower() for x in chain.biases)]
    need_p = {t.i for t in terms if t.kind in ("WW", "WW0", "W")}
    need_p |= {t.t for t in terms if t.kind == "trWW"}
    need_q = {t.t for t in terms if t.kind in ("WW", "bW", "WW0", "bW0", "trWW", "trbW")}
    out: list[tuple[str, str]] = []
    if need_p:  # prefix products P_s = [W](s,0) = W_s P_{s-1} / sqrt(n_{s-1})
        out.append((f"p1 = {w[1]}", "[W](1,0)"))
        for s in range(2, max(need_p) + 1):
            out.append(
                (f"p{s} = torch.matmul({w[s]}, p{s - 1}){_div(sqrt(n[s - 1]))}", f"[W]({s},0)")
            )
    if need_q:  # suffix products Q_t = [W](L,t) = Q_{t+1} W_{t+1} / sqrt(n_{t+1})
        out.append((f"q{L - 1} = {w[L]}", f"[W]({L},{L - 1})"))
        for t in range(L - 2, min(need_q) - 1, -1):
            if t == 0 and L in need_p:  # [W](L,0) is also the last prefix product
                out.append((f"q0 = p{L}", f"[W]({L},0)"))
                continue
            out.append(
                (
                    f"q{t} = torch.matmul(q{t + 1}, {w[t + 1]}){_div(sqrt(n[t + 1]))}",
                    f"[W]({L},{t})",
                )
            )
    out += _wb_statements(chain, [t for t in terms if t.kind == "Wb"], w, b)
    left, left_code = _glued(terms, "p", ("WW", "WW0", "trWW"), chain.sizes[-1])
    right, right_code = _glued(terms, "q", ("bW", "bW0", "trbW"), 1)
    out += left_code + right_code
    for term in terms:
        if term.var in folded:
            continue
        if term.kind in ("WW", "WW0"):
            code = f"{term.var} = torch.matmul({left[term.var]}, q{term.t})"
        elif term.kind in ("bW", "bW0"):
            code = f"{term.var} = {b[term.i]}[..., None] * {right[term.var]}"
        elif term.kind == "W":
            code = f"{term.var} = p{term.i}"
        elif term.kind == "trWW":
            product = f"{left[term.var]} * q{term.t}.transpose(-1, -2)"
            code = f"{term.var} = ({product}).sum(dim=(-1, -2)){_div(sqrt(n[term.t]))}"
        elif term.kind == "trbW":
            product = f"{right[term.var]}.squeeze(-2) * {b[term.t]}"
            code = f"{term.var} = ({product}).sum(dim=-1){_div(sqrt(n[term.t]))}"
        else:
            continue  # Wb: done above
        out.append((code, term.formula))
    return out, left, right


def _glued(
    terms: Sequence[MagepTerm], side: str, kinds: tuple[str, ...], width: int
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``P_s Psi`` (side p) or ``Psi' Q_t`` (side q) for every term, one matmul per path
    product with the Psis of all its terms concatenated (small matmuls are slow; one wider
    matmul costs little more than one narrow one).

    Returns the expression of each term's block and the statements computing them.
    """
    groups: dict[int, list[MagepTerm]] = {}
    for term in terms:
        if term.kind in kinds:
            groups.setdefault(glued_parts(term)[1], []).append(term)
    expressions: dict[str, str] = {}
    statements: list[tuple[str, str]] = []
    for index, group in sorted(groups.items()):
        var = f"{side}{index}_psi"
        psis = [f"self.{t.psi[0].name}" for t in group]
        stacked = (
            psis[0]
            if len(psis) == 1
            else f"torch.cat([{', '.join(psis)}], dim={-1 if side == 'p' else -2})"
        )
        product = (
            f"torch.matmul(p{index}, {stacked})"
            if side == "p"
            else f"torch.matmul({stacked}, q{index})"
        )
        what = f"[W]({index},0) Psi" if side == "p" else f"Psi' [W](L,{index})"
        statements.append((f"{var} = {product}", f"{what} for {len(group)} term(s), one matmul"))
        for k, term in enumerate(group):
            if len(group) == 1:
                expressions[term.var] = var
            elif side == "p":
                expressions[term.var] = f"{var}[..., {k * width} : {(k + 1) * width}]"
            else:
                expressions[term.var] = f"{var}[..., {k} : {k + 1}, :]"
    return expressions, statements


def _wb_statements(
    chain: Chain, terms: Sequence[MagepTerm], w: list[str], b: list[str | None]
) -> list[tuple[str, str]]:
    """``sum_t [Wb](i,t)``: by the recurrence ``S_i = W_i (S_{i-1} + b_{i-1})`` when every t is
    wanted (O(L) matrix-vector products), else by paths of bounded length shared across outputs
    (``T_i^k = W_i T_{i-1}^{k-1}``, O(L * degree))."""
    if not terms:
        return []
    L = chain.layers
    n = chain.sizes
    out: list[tuple[str, str]] = []

    def matvec(i: int, vector: str) -> str:
        return f"torch.matmul({w[i]}, {vector}.unsqueeze(-1)).squeeze(-1){_div(sqrt(n[i - 1]))}"

    complete = all(len(t.degrees) == sum(1 for s in range(1, t.i) if b[s]) for t in terms)
    if complete and all(b[1:]):
        top = max(t.i for t in terms)
        out.append((f"sum_wb2 = {matvec(2, b[1] or '')}", "sum_t [Wb](2,t)"))
        for i in range(3, top + 1):
            out.append(
                (f"sum_wb{i} = {matvec(i, f'(sum_wb{i - 1} + {b[i - 1]})')}", f"sum_t [Wb]({i},t)")
            )
        for t in terms:
            count = t.i - 1
            out.append((f"{t.var} = sum_wb{t.i}{_div(sqrt(count))}", t.formula))
        return out
    made: set[tuple[int, int]] = set()
    for term in terms:
        parts = []
        for degree in sorted(term.degrees):
            k = degree - 1  # number of weights in the path [Wb](i, i-k)
            for j in range(1, k + 1):  # T_{i-k+j}^{j}
                at = term.i - k + j
                if (at, j) in made:
                    continue
                source = b[at - 1] if j == 1 else f"path_wb{at - 1}_{j - 1}"
                out.append(
                    (f"path_wb{at}_{j} = {matvec(at, source or '')}", f"[Wb]({at},{at - j})")
                )
                made.add((at, j))
            parts.append(f"path_wb{term.i}_{k}")
        out.append((f"{term.var} = ({' + '.join(parts)}){_div(sqrt(len(parts)))}", term.formula))
    del L
    return out


def fold_statements(magep: MagepPlan, code: MagepCode, group: FoldGroup) -> list[tuple[str, str]]:
    """Statements leaving ``group.name`` as ``(B, rows, out_channels * out_factor)``."""
    chain = magep.chain
    n0 = chain.sizes[0]
    out: list[tuple[str, str]] = []
    lefts, rights = [], []
    for k, (term, _) in enumerate(group.parts):
        theta, left, right = f"{group.name}_theta{k}", f"{group.name}_a{k}", f"{group.name}_g{k}"
        columns = (
            f"{k * n0} * c_in : {(k + 1) * n0} * c_in" if k else f": {n0} * c_in"
        )  # units of c_in
        out.append((f"{theta} = self.{group.weight}[:, {columns}].view(-1, c_in, {n0})", ""))
        if term.kind.startswith("WW"):
            glued = code.left[term.var]
            left_code = f"{glued}.permute(0, 2, 1, 3).reshape(batch, {group.rows}, -1)"
            right_code = f'torch.einsum("bclu,zcu->bclz", q0, {theta}).flatten(1, 2)'
        else:
            bias = (chain.biases[term.i - 1] or "").lower()
            row = f"{group.name}_r{k}"
            out.append(
                (f"{row} = {code.right[term.var]}.squeeze(-2)", f"{term.formula}: Psi' [W](L,0)")
            )
            left_code = f"{bias}.permute(0, 2, 1)"
            right_code = f'torch.einsum("bcu,zcu->bcz", {row}, {theta})'
        out.append((f"{left} = {left_code}", f"{term.formula}: factor A per row"))
        out.append((f"{right} = {right_code}", "factor R contracted with the mixing weights"))
        lefts.append(left)
        rights.append(right)
    if len(lefts) == 1:
        out.append((f"{group.name} = torch.bmm({lefts[0]}, {rights[0]})", ""))
        return out
    out.append((f"{group.name}_a = torch.cat([{', '.join(lefts)}], dim=-1)", ""))
    out.append((f"{group.name}_g = torch.cat([{', '.join(rights)}], dim=1)", ""))
    out.append((f"{group.name} = torch.bmm({group.name}_a, {group.name}_g)", ""))
    return out


def fold_placement(space: WeightSpaceSpec, group: FoldGroup) -> str:
    """``group.name`` ``(B, rows, c_out * fixed)`` spelled in the output's layout."""
    tensor = space.tensor(group.output)
    fixed = [space.space(a.space).size for a in tensor.axes if space.is_fixed_axis(a)]
    current = ["row", "channel", *(f"fixed{k}" for k in range(len(fixed)))]
    target = ["channel"]
    k = 0
    for axis in tensor.axes:
        if space.is_fixed_axis(axis):
            target.append(f"fixed{k}")
            k += 1
        else:
            target.append("row")
    view = ", ".join(["batch", str(group.rows), "c_out", *(str(n) for n in fixed)])
    permutation = ", ".join(str(1 + current.index(role)) for role in target)
    return f"{group.name}.view({view}).permute(0, {permutation})"
