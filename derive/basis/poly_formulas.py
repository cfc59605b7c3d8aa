"""Formulas of polynomial terms (text and LaTeX) and their symbolic proof with symbolic scales.

The proof mirrors :func:`derive.basis.expressions.verify_map` for products: substituting every
factor entry ``S[idx] -> prod d_space(idx) ** character * S[idx]`` into the summand must
multiply it by exactly the output entry's factor (exponents reduced mod 2 on sign spaces),
every index symbol must live on one space, and summed indices must not be output indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import prod

import sympy

from derive.basis.expressions import SymbolicCheck, tensor_symbol
from derive.basis.polynomial import PolyMap
from derive.weightspace.model import Scaling, WeightSpaceSpec

__all__ = ["poly_formula_text", "poly_formula_latex", "verify_poly_map", "scaling_signature"]


def _letter(letters: str, index: int) -> str:
    return letters[index] if index < len(letters) else f"{letters[0]}{index - len(letters) + 1}"


@dataclass(frozen=True)
class _Indices:
    out_idx: dict[int, str]
    in_idx: dict[tuple[int, int], str]
    index_space: dict[str, str]
    sums: tuple[str, ...]
    fixed_out: tuple[str, ...]
    fixed_in: tuple[str, ...]


def _indices(space: WeightSpaceSpec, m: PolyMap) -> _Indices:
    out_idx: dict[int, str] = {}
    in_idx: dict[tuple[int, int], str] = {}
    index_space: dict[str, str] = {}
    sums: list[str] = []
    num_out = 0
    for block in m.blocks:
        if block.outputs:
            symbol = _letter("ijklm", num_out)
            num_out += 1
        else:
            symbol = _letter("pqrst", len(sums))
            sums.append(symbol)
        index_space[symbol] = block.space
        out_idx.update(dict.fromkeys(block.outputs, symbol))
        in_idx.update(dict.fromkeys(block.inputs, symbol))
    fixed_out = tuple(_letter("xyz", k) for k in range(len(m.out_fixed)))
    fixed_in = tuple(_letter("uvw", k) for k in range(len(m.in_fixed)))
    for position, symbol in zip(m.out_fixed, fixed_out):
        out_idx[position] = symbol
        assert m.output is not None
        index_space[symbol] = space.tensor(m.output).axes[position].space
    for (k, position), symbol in zip(m.in_fixed, fixed_in):
        in_idx[(k, position)] = symbol
        index_space[symbol] = space.tensor(m.factors[k]).axes[position].space
    return _Indices(out_idx, in_idx, index_space, tuple(sums), fixed_out, fixed_in)


def _joined(symbols: Sequence[str]) -> str:
    return ("" if all(len(s) == 1 for s in symbols) else ",").join(symbols)


def _bracket(symbols: Sequence[str]) -> str:
    return f"[{','.join(symbols)}]" if symbols else ""


def poly_formula_text(space: WeightSpaceSpec, m: PolyMap) -> str:
    """The term as text, e.g. ``W2'[i,j] += mean_p theta * W2[i,p] * b1[p]``."""
    idx = _indices(space, m)
    parts = [f"theta{_bracket([*idx.fixed_out, *idx.fixed_in])}"]
    for k, name in enumerate(m.factors):
        axes = range(len(space.tensor(name).axes))
        parts.append(f"{name}{_bracket([idx.in_idx[(k, p)] for p in axes])}")
    body = " * ".join(parts)
    if idx.fixed_in:
        body = f"sum_{_joined(idx.fixed_in)} {body}"
    if idx.sums:
        body = f"mean_{_joined(idx.sums)} {body}"
    if m.output is None:
        return f"y += {body}"
    axes = range(len(space.tensor(m.output).axes))
    return f"{m.output}'{_bracket([idx.out_idx[p] for p in axes])} += {body}"


@dataclass(frozen=True)
class _Formula:
    lhs: sympy.Expr
    rhs: sympy.Expr
    entries: tuple[tuple[str, sympy.Expr], ...]  # (tensor, entry) per factor
    summand: sympy.Expr
    index_space: dict[str, str]


def _entry(name: str, symbols: list[sympy.Symbol], primed: bool = False) -> sympy.Expr:
    if not symbols:
        return sympy.Symbol(f"{name}'" if primed else name)
    return tensor_symbol(name, primed)[tuple(symbols)]


def _formula(space: WeightSpaceSpec, m: PolyMap) -> _Formula:
    idx = _indices(space, m)
    sym = {name: sympy.Symbol(name, integer=True) for name in idx.index_space}
    theta_symbols = [sym[s] for s in (*idx.fixed_out, *idx.fixed_in)]
    theta = (
        sympy.IndexedBase("theta")[tuple(theta_symbols)] if theta_symbols else sympy.Symbol("theta")
    )
    entries = []
    for k, name in enumerate(m.factors):
        axes = range(len(space.tensor(name).axes))
        entries.append((name, _entry(name, [sym[idx.in_idx[(k, p)]] for p in axes])))
    summand = theta * prod((e for _, e in entries), start=sympy.Integer(1))
    rhs: sympy.Expr = summand
    for symbol in idx.fixed_in:
        rhs = sympy.Sum(rhs, (sym[symbol], 0, space.space(idx.index_space[symbol]).size - 1))
    for symbol in idx.sums:
        size = space.space(idx.index_space[symbol]).size
        rhs = sympy.Sum(rhs, (sym[symbol], 0, size - 1)) / size
    if m.output is None:
        lhs: sympy.Expr = sympy.Symbol("y")
    else:
        axes = range(len(space.tensor(m.output).axes))
        lhs = _entry(m.output, [sym[idx.out_idx[p]] for p in axes], primed=True)
    return _Formula(lhs, rhs, tuple(entries), summand, idx.index_space)


def poly_formula_latex(space: WeightSpaceSpec, m: PolyMap) -> str:
    """The term as LaTeX (sympy)."""
    formula = _formula(space, m)
    return f"{sympy.latex(formula.lhs)} \\mathrel{{+}}= {sympy.latex(formula.rhs)}"


def _scale(space: WeightSpaceSpec, name: str, entry: sympy.Expr) -> sympy.Expr:
    """prod over axes of d_space(index) ** character, for one tensor entry."""
    indices = entry.indices if isinstance(entry, sympy.Indexed) else ()
    factor: sympy.Expr = sympy.Integer(1)
    for axis, index in zip(space.tensor(name).axes, indices):
        if space.space(axis.space).scaling is not Scaling.NONE and axis.character:
            factor = factor * sympy.Function(f"d_{axis.space}")(index) ** axis.character
    return factor


def _reduce_signs(space: WeightSpaceSpec, expr: sympy.Expr) -> sympy.Expr:
    """Use d(j)**2 = 1 on sign spaces: reduce every exponent of a sign scale mod 2."""
    replacements = {}
    for power in expr.atoms(sympy.Pow):
        base, exponent = power.as_base_exp()
        if isinstance(base, sympy.core.function.AppliedUndef) and exponent.is_integer:
            if space.space(str(base.func)[2:]).scaling is Scaling.SIGN:
                replacements[power] = base ** (int(exponent) % 2)
    return expr.xreplace(replacements)


def _structure_error(space: WeightSpaceSpec, m: PolyMap) -> str:
    """Why the diagram does not cover every position exactly once (empty when it does)."""
    wanted_out = set(range(len(space.tensor(m.output).axes))) if m.output else set()
    wanted_in = {(k, p) for k, n in enumerate(m.factors) for p in range(len(space.tensor(n).axes))}
    outs = [p for b in m.blocks for p in b.outputs] + list(m.out_fixed)
    ins = [p for b in m.blocks for p in b.inputs] + list(m.in_fixed)
    if sorted(outs) != sorted(wanted_out) or sorted(ins) != sorted(wanted_in):
        return "the diagram does not cover every axis position exactly once"
    return ""


def verify_poly_map(space: WeightSpaceSpec, m: PolyMap) -> SymbolicCheck:
    """Prove a term equivariant with symbolic scales ``d_s(j)``, as :func:`verify_map` does."""
    problem = _structure_error(space, m)
    if problem:
        return SymbolicCheck(False, problem)
    formula = _formula(space, m)
    targets = [(m.output, formula.lhs)] if m.output else []
    for name, entry in [*targets, *formula.entries]:
        indices = entry.indices if isinstance(entry, sympy.Indexed) else ()
        for axis, index in zip(space.tensor(name).axes, indices):
            if formula.index_space[str(index)] != axis.space:
                return SymbolicCheck(False, f"index {index} of {name} mixes spaces")
    lhs_symbols = {str(s) for s in formula.lhs.free_symbols if s.is_integer}
    for total in sympy.preorder_traversal(formula.rhs):
        if not isinstance(total, sympy.Sum):
            continue
        for symbol, low, high in total.limits:
            if str(symbol) in lhs_symbols:
                return SymbolicCheck(False, f"summed index {symbol} is also an output index")
            if low != 0 or high != space.space(formula.index_space[str(symbol)]).size - 1:
                return SymbolicCheck(False, f"sum over {symbol} does not run over the whole space")
    acted = formula.summand.xreplace({e: _scale(space, n, e) * e for n, e in formula.entries})
    gained = sympy.powsimp(sympy.cancel(acted / formula.summand), force=True)
    needed = _scale(space, m.output, formula.lhs) if m.output else sympy.Integer(1)
    ratio = _reduce_signs(space, sympy.powsimp(gained / needed, force=True))
    if sympy.simplify(ratio) != 1:
        return SymbolicCheck(
            False, f"scale factors differ: the product gains {gained}, the output needs {needed}"
        )
    return SymbolicCheck(True, f"factor {needed}" if needed != 1 else "invariant factor 1")


def scaling_signature(space: WeightSpaceSpec, m: PolyMap) -> tuple[tuple[str, int, int], ...]:
    """Per block of ``m``: (space, total input character, total output character)."""
    out = space.tensor(m.output) if m.output else None
    signature = []
    for block in m.blocks:
        exponent_in = sum(space.tensor(m.factors[k]).axes[p].character for k, p in block.inputs)
        exponent_out = sum(out.axes[p].character for p in block.outputs) if out else 0
        signature.append((block.space, exponent_in, exponent_out))
    return tuple(signature)
