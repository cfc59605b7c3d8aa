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


def _div_(value: float) -> str:
    """In-place division of a fresh matmul result (autograd saves a matmul's inputs, not its
    output, so this is safe and allocates nothing)."""
    return f".div_({float(value)!r})" if value != 1 else ""


def _statements(
    chain: Chain, terms: Sequence[MagepTerm], folded: frozenset[str] = frozenset()
) -> tuple[list[tuple[str, str]], dict[str, str], dict[str, str]]:
    """Python statements computing every term (but the folded ones, whose path products are
    still computed); every path product computed once."""
    n = chain.sizes
    w = [""] + [name.lower() for name in chain.weights]  # w[i] holds W_i
    b: list[str | None] = [None, *(None if x is None else x.lower() for x in chain.biases)]
    need_p = {t.i for t in terms if t.kind in ("WW", "WW0", "W")}
    need_q = {t.t for t in terms if t.kind in ("WW", "bW", "WW0", "bW0", "trbW")}
    # tr([W](s,0) Psi [W](L,s)) = tr(Psi [W](L,s) [W](s,0)) = tr(Psi [W](L,0)) (cyclic trace)
    need_q |= {0 for t in terms if t.kind == "trWW"}
    route = _route(chain, need_p, need_q)
    wb = _WbPlan.of(chain, [t for t in terms if t.kind == "Wb"], route, b)
    out = _path_statements(chain, route, w, b, wb.carried)
    out += _wb_statements(chain, wb, w, b)
    left, left_code = _glued(terms, "p", ("WW", "WW0"), chain.sizes[-1])
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
        elif term.kind == "trWW":  # = tr(Psi [W](L,0)); the normalizations agree (_route)
            product = f"self.{term.psi[0].name} * q0.transpose(-1, -2)"
            code = f"{term.var} = ({product}).sum(dim=(-1, -2))"
        elif term.kind == "trbW":
            product = f"{right[term.var]}.squeeze(-2) * {b[term.t]}"
            code = f"{term.var} = ({product}).sum(dim=-1){_div(sqrt(n[term.t]))}"
        else:
            continue  # Wb: done above
        out.append((code, term.formula))
    return out, left, right


@dataclass(frozen=True)
class _Route:
    """Which path products are computed: ``p_1..p_last_p`` and ``q_first_q..q_(L-1)``, and
    whether ``[W](L,0)`` is computed once and aliased (``"p"``: ``p_L = q_0``, ``"q"``:
    ``q_0 = p_L``)."""

    layers: int
    last_p: int
    first_q: int
    alias: str | None

    @property
    def suffixes(self) -> set[int]:
        """Every ``t`` whose ``q_t`` is available."""
        found = set(range(self.first_q, self.layers))
        return found | {0} if self.alias == "q" else found


def _route(chain: Chain, need_p: set[int], need_q: set[int]) -> _Route:
    """Prefix products ``p_s = [W](s,0)`` for ``s`` in ``need_p``, suffix products
    ``q_t = [W](L,t)`` for ``t`` in ``need_q``, each one matmul on the previous one.

    ``[W](L,0)`` is both ``p_L`` and ``q_0``: it ends whichever chain costs less in total (the
    suffix chain has n_L rows, often few: the polynomial invariant layer then needs no prefix
    product at all). Normalized, ``p_s = [W](s,0) / sqrt(n_1 ... n_(s-1))`` and
    ``q_t = [W](L,t) / sqrt(n_(t+1) ... n_(L-1))``, so ``p_L = q_0``, and
    ``tr(p_s Psi q_s) / sqrt(n_s) = tr(Psi q_0)``.
    """
    L, n = chain.layers, chain.sizes
    top = max(need_p - {L}, default=0)  # the prefix chain without [W](L,0)
    bottom = min(need_q - {0}, default=L)  # the suffix chain without [W](L,0)
    full = L in need_p or 0 in need_q
    by_suffix = full and L > 1 and _prefix_cost(n, top, L) > _suffix_cost(n, 0, bottom)
    last_p = L if full and not by_suffix else top
    first_q = 0 if by_suffix or (L == 1 and 0 in need_q) else bottom
    alias = None
    if by_suffix and L in need_p:
        alias = "p"
    elif full and 0 in need_q and L > 1 and not by_suffix:
        alias = "q"
    return _Route(L, last_p, first_q, alias)


def _prefix_cost(n: Sequence[int], lowest: int, highest: int) -> int:
    """Multiply-adds of the prefix products ``p_s``, ``lowest < s <= highest`` (p_1 is free)."""
    return sum(n[s] * n[s - 1] * n[0] for s in range(max(lowest, 1) + 1, highest + 1))


def _suffix_cost(n: Sequence[int], lowest: int, highest: int) -> int:
    """Multiply-adds of the suffix products ``q_t``, ``lowest <= t < highest`` (q_(L-1) is
    free)."""
    L = len(n) - 1
    return sum(n[L] * n[t + 1] * n[t] for t in range(lowest, min(highest, L - 1)))


@dataclass(frozen=True)
class _WbPlan:
    """How the ``sum_t [Wb](i,t)`` terms are computed: ``suffix`` ones (i = L) as
    ``sum_t q_t b_t``; the ``rest`` by the recurrence ``S_i = W_i (S_(i-1) + b_(i-1))``, carried
    by the prefix products as one more column up to ``carried`` (0: not carried), else by
    matrix-vector products."""

    suffix: tuple[MagepTerm, ...]
    rest: tuple[MagepTerm, ...]
    carried: int

    @classmethod
    def of(
        cls, chain: Chain, terms: Sequence[MagepTerm], route: _Route, b: list[str | None]
    ) -> _WbPlan:
        """``sum_t q_t b_t`` when the ``q_t`` are computed anyway; the recurrence carried by
        the prefix chain when it is complete and the chain reaches far enough. Either way a
        hidden ``W_i`` gets no gradient from a matrix-vector product (a weight-sized outer
        product each)."""
        suffix = tuple(
            t
            for t in terms
            if t.i == chain.layers and all(s in route.suffixes and b[s] for s in _wb_starts(t))
        )
        rest = tuple(t for t in terms if t not in suffix)
        top = max((t.i for t in rest), default=0)
        complete = all(b[1:]) and all(len(t.degrees) == t.i - 1 for t in rest)
        carried = top if rest and complete and top <= route.last_p else 0
        return cls(suffix, rest, carried)


def _wb_starts(term: MagepTerm) -> list[int]:
    """The ``t`` of every path ``[Wb](i,t)`` of a Wb term (its degree is i - t + 1)."""
    return [term.i - degree + 1 for degree in sorted(term.degrees)]


def _path_statements(
    chain: Chain, route: _Route, w: list[str], b: list[str | None], carried: int
) -> list[tuple[str, str]]:
    """The prefix and suffix products of ``route``; up to ``p_carried`` each prefix matmul
    also computes ``sum_wb_s = sum_t [Wb](s,t)`` in a column beside ``[W](s,0)`` (the bias
    column of its input is ``sum_wb_(s-1) + b_(s-1)``, scaled like the path products). The
    normalization is applied in place to each fresh matmul result (autograd saves a matmul's
    inputs, not its output): no second tensor of its size."""
    L, n = chain.layers, chain.sizes
    out: list[tuple[str, str]] = []
    if route.last_p >= 1:
        out.append((f"p1 = {w[1]}", "[W](1,0)"))
    for s in range(2, route.last_p + 1):
        scale = _div_(sqrt(n[s - 1]))
        if s > carried:
            product = f"torch.matmul({w[s]}, p{s - 1})"
            out.append((f"p{s} = {product}{scale}", f"[W]({s},0)"))
            continue
        column = b[1] if s == 2 else f"(sum_wb{s - 1} + {b[s - 1]})"
        out.append(
            (
                f"pcol{s - 1} = torch.cat([p{s - 1}, {column}.unsqueeze(-1)], dim=-1)",
                f"[W]({s - 1},0) beside its bias column",
            )
        )
        out.append(
            (
                f"pb{s} = torch.matmul({w[s]}, pcol{s - 1}){scale}",
                f"[W]({s},0) and sum_t [Wb]({s},t) in one matmul",
            )
        )
        out.append((f"p{s} = pb{s}[..., :-1]", ""))
        out.append((f"sum_wb{s} = pb{s}[..., -1]", ""))
    if route.first_q <= L - 1:
        out.append((f"q{L - 1} = {w[L]}", f"[W]({L},{L - 1})"))
    for t in range(L - 2, route.first_q - 1, -1):
        product = f"torch.matmul(q{t + 1}, {w[t + 1]})"
        out.append((f"q{t} = {product}{_div_(sqrt(n[t + 1]))}", f"[W]({L},{t})"))
    if route.alias == "p":
        out.append((f"p{L} = q0", f"[W]({L},0)"))
    elif route.alias == "q":
        out.append((f"q0 = p{L}", f"[W]({L},0)"))
    return out


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
        if len(group) > 1:  # split, not sliced: a slice's backward allocates the whole product
            size, dim = (width, -1) if side == "p" else (1, -2)
            statements.append((f"{var}_parts = torch.split({var}, {size}, dim={dim})", ""))
        for k, term in enumerate(group):
            expressions[term.var] = var if len(group) == 1 else f"{var}_parts[{k}]"
    return expressions, statements


def _wb_statements(
    chain: Chain, wb: _WbPlan, w: list[str], b: list[str | None]
) -> list[tuple[str, str]]:
    """``sum_t [Wb](i,t)`` as :class:`_WbPlan` says; uncarried, complete ones by the
    recurrence in matrix-vector products (O(L)), others by paths of bounded length shared
    across outputs (``T_i^k = W_i T_{i-1}^{k-1}``, O(L * degree))."""
    n = chain.sizes
    out: list[tuple[str, str]] = []
    for term in wb.suffix:
        parts = [
            f"torch.matmul(q{t}, {b[t]}.unsqueeze(-1)).squeeze(-1){_div(sqrt(n[t]))}"
            for t in _wb_starts(term)
        ]
        out.append((f"{term.var} = {parts[0]}", term.formula + ": from q_t b_t"))
        for part in parts[1:]:
            out.append((f"{term.var} = {term.var} + {part}", ""))
        if len(parts) > 1:
            out.append((f"{term.var} = {term.var}{_div(sqrt(len(parts)))}", ""))
    terms = wb.rest
    if not terms:
        return out
    if wb.carried:
        for t in terms:
            out.append((f"{t.var} = sum_wb{t.i}{_div(sqrt(t.i - 1))}", t.formula))
        return out

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
    out.append((f"{group.name} = torch.bmm({lefts[0]}, {rights[0]})", ""))
    for left, right in zip(lefts[1:], rights[1:]):  # no concatenated copy of the factors
        out.append((f"{group.name} = {group.name}.baddbmm_({left}, {right})", ""))
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
