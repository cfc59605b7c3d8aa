"""The MAGEP part of a polynomial layer: terms as virtual tensors, and the code computing them.

:func:`magep_plan` extends the weight space with one virtual tensor per MAGEP term (so the layer
plan reads it like an input), maps each to its output (every neuron axis matched, fixed axes
dense), and spells the statements that compute the terms: prefix products ``P_s = [W](s,0)``
and suffix products ``Q_t = [W](L,t)`` once each (O(L) matmul chains), one matmul per path
product for all the Psi blocks that multiply it, ``sum_t [Wb](i,t)`` by a recurrence.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from math import prod, sqrt

from derive.basis.linear import BasisMap, Block
from derive.basis.magep import (
    Chain,
    MagepTerm,
    Psi,
    chain_of,
    is_foldable,
    magep_terms,
    virtual_name,
)
from derive.errors import GenerationError
from derive.weightspace.model import TensorSpec, WeightSpaceSpec

__all__ = ["MagepPlan", "magep_plan", "magep_invariants", "glued_parts"]


@dataclass(frozen=True)
class MagepPlan:
    """The MAGEP part of a polynomial layer: statements, parameters, extended space, maps.

    Terms listed in ``folded`` are not materialized by ``statements``: :mod:`derive.plan.fold`
    computes their contribution through their factorization.
    """

    chain: Chain
    terms: tuple[MagepTerm, ...]
    statements: tuple[tuple[str, str], ...]  # (code, comment)
    psis: tuple[Psi, ...]
    space: WeightSpaceSpec  # the weight space plus one virtual tensor per term
    maps: tuple[BasisMap, ...]  # output <- virtual tensor, one per term
    folded: frozenset[str] = frozenset()  # variables of the folded terms
    left: dict[str, str] = field(default_factory=dict)  # term var -> expression of P Psi
    right: dict[str, str] = field(default_factory=dict)  # term var -> expression of Psi' Q
    outer: dict[str, tuple[str, str]] = field(default_factory=dict)  # rank-one terms: (u, v)


def magep_invariants(space: WeightSpaceSpec, max_degree: int | None = None) -> MagepPlan:
    """The MAGEP terms that are invariant (those written to the unscaled output bias ``b_L``:
    ``[W](L,0)``, ``[WW](L,0)(L,0)``, ``[bW](L)(L,0)``, ``sum_t [Wb](L,t)`` and the traces)."""
    chain = chain_of(space)
    last = chain.biases[-1]
    if last is None:
        raise GenerationError(
            "MAGEP invariants are the terms of the output bias; this network has none"
        )
    return magep_plan(space, max_degree, outputs={last})


def _term_map(space: WeightSpaceSpec, term: MagepTerm) -> BasisMap:
    """Every neuron axis of the term matched to the output's; fixed axes dense."""
    output = space.tensor(term.output)
    blocks = []
    out_fixed = []
    in_fixed = [q for q, a in enumerate(term.axes) if space.space(a.space).is_fixed]
    for p, axis in enumerate(output.axes):
        if space.space(axis.space).is_fixed:
            out_fixed.append(p)
            continue
        q = next(q for q, a in enumerate(term.axes) if a.space == axis.space)
        blocks.append(Block(axis.space, (p,), (q,)))
    count = prod(space.space(output.axes[p].space).size for p in out_fixed)
    count *= prod(space.space(term.axes[q].space).size for q in in_fixed)
    return BasisMap(
        term.output, virtual_name(term), tuple(blocks), tuple(out_fixed), tuple(in_fixed), count
    )


def magep_plan(
    space: WeightSpaceSpec,
    max_degree: int | None = None,
    outputs: set[str] | None = None,
    fold: bool = False,
) -> MagepPlan:
    """The terms, the statements that compute them with shared path products, and their maps;
    with ``fold``, foldable terms are left to :mod:`derive.plan.fold`."""
    chain = chain_of(space)
    terms = magep_terms(space, max_degree, outputs)
    folded = frozenset(t.var for t in terms if fold and is_foldable(space, chain, t))
    # b_i Psi' [W](L,i-1) into a W_i with only neuron axes: mixed as a rank-one update
    outer_terms = {
        t.var
        for t in terms
        if fold
        and t.kind == "bW"
        and t.var not in folded
        and all(not space.space(a.space).is_fixed for a in t.axes)
    }
    virtual = tuple(
        TensorSpec(name=virtual_name(t), kind="virtual", layer=0, axes=t.axes) for t in terms
    )
    extended = replace(space, tensors=space.tensors + virtual)
    maps = tuple(_term_map(extended, t) for t in terms)
    psis = tuple(p for t in terms for p in t.psi)
    statements, left, right = _statements(chain, terms, folded | outer_terms)
    b = {t.var: (chain.biases[t.i - 1] or "").lower() for t in terms}
    outer = {var: (b[var], f"{right[var]}.squeeze(-2)") for var in outer_terms}
    return MagepPlan(
        chain, tuple(terms), tuple(statements), psis, extended, maps, folded, left, right, outer
    )


def _div(value: float) -> str:
    return f" / {float(value)!r}" if value != 1 else ""


def _statements(
    chain: Chain, terms: list[MagepTerm], folded: frozenset[str] = frozenset()
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


def glued_parts(term: MagepTerm) -> tuple[str, int]:
    """(prefix ``p`` or suffix ``q``, index) of the path product a term's Psi multiplies."""
    if term.kind in ("WW", "WW0"):
        return "p", term.i
    if term.kind == "trWW":
        return "p", term.t
    return "q", term.t


def _glued(
    terms: list[MagepTerm], side: str, kinds: tuple[str, ...], width: int
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
    chain: Chain, terms: list[MagepTerm], w: list[str], b: list[str | None]
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
