"""Formulas of basis maps: sympy expressions, LaTeX and plain text, and their symbolic proof.

Each map ``T <- S`` reads ``T'[out indices] += (1/N) sum theta[fixed] S[in indices]``: the
blocks of its partition name the indices (one symbol per block), reduced blocks are summed
(averaged), fixed input axes are summed against the dense parameter ``theta``.

:func:`verify_map` proves equivariance symbolically: every index symbol belongs to one
space and every summation runs over a whole space (so permutations commute), and after
substituting the group action with symbolic scales ``d_s(j)`` into the summand, the factor
it picks up equals the factor of the output entry (exponents reduced mod 2 on sign spaces).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import sympy

from derive.basis.linear import BasisMap
from derive.weightspace.model import Scaling, WeightSpaceSpec

__all__ = [
    "MapFormula",
    "MapIndices",
    "map_indices",
    "formula_text",
    "map_formula",
    "verify_map",
    "SymbolicCheck",
    "tensor_symbol",
]

_OUT_LETTERS = "ijklm"
_SUM_LETTERS = "pqrst"
_FIXED_OUT_LETTERS = "xyz"
_FIXED_IN_LETTERS = "uvw"


def _letter(letters: str, index: int) -> str:
    return letters[index] if index < len(letters) else f"{letters[0]}{index}"


@dataclass(frozen=True)
class MapFormula:
    """The formula of one map, as sympy objects and as text."""

    lhs: sympy.Expr  # the output entry, e.g. W2'[i, j]
    rhs: sympy.Expr  # the contribution, with sums
    summand: sympy.Expr  # theta * input entry, inside the sums
    text: str
    latex: str
    index_space: dict[str, str]  # index symbol name -> space name


@cache
def tensor_symbol(name: str, primed: bool = False) -> sympy.IndexedBase:
    """The sympy base for a tensor, ``W2`` (input) or ``W2'`` (output)."""
    letter, layer = name[0], name[1:]
    pretty = f"{letter}^{{({layer})}}" if layer.isdigit() else name
    return sympy.IndexedBase(f"{pretty}'" if primed else pretty)


def _text_index(symbols: list[str]) -> str:
    return f"[{','.join(symbols)}]" if symbols else ""


@dataclass(frozen=True)
class MapIndices:
    """The index letters of one map: per output/input axis, the summed and fixed symbols."""

    out_idx: dict[int, str]
    in_idx: dict[int, str]
    index_space: dict[str, str]
    sums: tuple[tuple[str, str], ...]  # (symbol, space) of averaged neuron indices
    fixed_out: tuple[str, ...]
    fixed_in: tuple[str, ...]


def map_indices(space: WeightSpaceSpec, basis_map: BasisMap) -> MapIndices:
    """Name the indices of ``basis_map``: one letter per block, one per fixed axis."""
    out_tensor = space.tensor(basis_map.output) if basis_map.output else None
    in_tensor = space.tensor(basis_map.input) if basis_map.input else None
    out_idx: dict[int, str] = {}
    in_idx: dict[int, str] = {}
    index_space: dict[str, str] = {}
    sums: list[tuple[str, str]] = []
    num_out = num_sum = 0
    for block in basis_map.blocks:
        if block.outputs:
            symbol = _letter(_OUT_LETTERS, num_out)
            num_out += 1
        else:
            symbol = _letter(_SUM_LETTERS, num_sum)
            num_sum += 1
            sums.append((symbol, block.space))
        index_space[symbol] = block.space
        for position in block.outputs:
            out_idx[position] = symbol
        for position in block.inputs:
            in_idx[position] = symbol
    fixed_out = tuple(_letter(_FIXED_OUT_LETTERS, k) for k in range(len(basis_map.out_fixed)))
    fixed_in = tuple(_letter(_FIXED_IN_LETTERS, k) for k in range(len(basis_map.in_fixed)))
    for position, symbol in zip(basis_map.out_fixed, fixed_out):
        out_idx[position] = symbol
        assert out_tensor is not None
        index_space[symbol] = out_tensor.axes[position].space
    for position, symbol in zip(basis_map.in_fixed, fixed_in):
        in_idx[position] = symbol
        assert in_tensor is not None
        index_space[symbol] = in_tensor.axes[position].space
    return MapIndices(out_idx, in_idx, index_space, tuple(sums), fixed_out, fixed_in)


def formula_text(space: WeightSpaceSpec, basis_map: BasisMap) -> str:
    """The map as plain text, e.g. ``W2'[i,j] += mean_p theta * W2[i,p]`` (no sympy; fast)."""
    idx = map_indices(space, basis_map)
    theta = f"theta{_text_index([*idx.fixed_out, *idx.fixed_in])}"
    body = theta
    if basis_map.input is not None:
        tensor = space.tensor(basis_map.input)
        entry = f"{tensor.name}{_text_index([idx.in_idx[p] for p in range(len(tensor.axes))])}"
        body = f"{theta} * {entry}"
    for symbol in idx.fixed_in:
        body = f"sum_{symbol} {body}"
    if idx.sums:
        body = f"mean_{''.join(s for s, _ in idx.sums)} {body}"
    if basis_map.output is not None:
        tensor = space.tensor(basis_map.output)
        lhs = f"{tensor.name}'{_text_index([idx.out_idx[p] for p in range(len(tensor.axes))])}"
    else:
        lhs = "y"
    return f"{lhs} += {body}"


def map_formula(space: WeightSpaceSpec, basis_map: BasisMap) -> MapFormula:
    """Build the formula of ``basis_map`` as sympy (slow: call only for LaTeX or proofs)."""
    out_tensor = space.tensor(basis_map.output) if basis_map.output else None
    in_tensor = space.tensor(basis_map.input) if basis_map.input else None
    idx = map_indices(space, basis_map)
    out_idx, in_idx, index_space = idx.out_idx, idx.in_idx, idx.index_space
    sums, fixed_out, fixed_in = list(idx.sums), list(idx.fixed_out), list(idx.fixed_in)
    sym = {name: sympy.Symbol(name, integer=True) for name in index_space}
    theta_indices = [*fixed_out, *fixed_in]
    theta: sympy.Expr = (
        sympy.IndexedBase("theta")[tuple(sym[s] for s in theta_indices)]
        if theta_indices
        else sympy.Symbol("theta")
    )
    summand: sympy.Expr = theta
    if in_tensor is not None:
        in_symbols = [in_idx[p] for p in range(len(in_tensor.axes))]
        entry = (
            tensor_symbol(in_tensor.name)[tuple(sym[s] for s in in_symbols)]
            if in_symbols
            else sympy.Symbol(in_tensor.name)
        )
        summand = theta * entry
    rhs: sympy.Expr = summand
    for symbol in fixed_in:
        size = space.space(index_space[symbol]).size
        rhs = sympy.Sum(rhs, (sym[symbol], 0, size - 1))
    for symbol, space_name in sums:
        size = space.space(space_name).size
        rhs = sympy.Sum(rhs, (sym[symbol], 0, size - 1)) / size
    if out_tensor is not None:
        out_symbols = [out_idx[p] for p in range(len(out_tensor.axes))]
        base = tensor_symbol(out_tensor.name, primed=True)
        lhs: sympy.Expr = (
            base[tuple(sym[s] for s in out_symbols)]
            if out_symbols
            else sympy.Symbol(f"{out_tensor.name}'")
        )
    else:
        lhs = sympy.Symbol("y")
    text = formula_text(space, basis_map)
    latex = f"{sympy.latex(lhs)} \\mathrel{{+}}= {sympy.latex(rhs)}"
    return MapFormula(
        lhs=lhs, rhs=rhs, summand=summand, text=text, latex=latex, index_space=index_space
    )


@dataclass(frozen=True)
class SymbolicCheck:
    """The outcome of :func:`verify_map`."""

    ok: bool
    detail: str


def _scale_factor(space: WeightSpaceSpec, entry: sympy.Expr, tensor_name: str) -> sympy.Expr:
    """prod over axes of d_space(index) ** character, for one tensor entry."""
    tensor = space.tensor(tensor_name)
    indices = entry.indices if isinstance(entry, sympy.Indexed) else ()
    factor: sympy.Expr = sympy.Integer(1)
    for axis, index in zip(tensor.axes, indices):
        neuron_space = space.space(axis.space)
        if neuron_space.scaling is Scaling.NONE or axis.character == 0:
            continue
        d = sympy.Function(f"d_{axis.space}")
        factor = factor * d(index) ** axis.character
    return factor


def _reduce_signs(space: WeightSpaceSpec, expr: sympy.Expr) -> sympy.Expr:
    """Use d(j)**2 = 1 on sign spaces: reduce every exponent of a sign scale mod 2."""
    replacements = {}
    for power in expr.atoms(sympy.Pow):
        base, exponent = power.as_base_exp()
        if isinstance(base, sympy.core.function.AppliedUndef):
            name = str(base.func)[2:]
            if space.space(name).scaling is Scaling.SIGN and exponent.is_integer:
                replacements[power] = base ** (int(exponent) % 2)
    return expr.xreplace(replacements)


def verify_map(
    space: WeightSpaceSpec, basis_map: BasisMap, formula: MapFormula | None = None
) -> SymbolicCheck:
    """Prove ``basis_map`` equivariant with symbolic scales (see the module docstring)."""
    formula = formula or map_formula(space, basis_map)
    # Permutations: each index symbol sits only on axes of its own space.
    for tensor_name, expr in ((basis_map.output, formula.lhs), (basis_map.input, formula.summand)):
        if tensor_name is None:
            continue
        entries = [
            e
            for e in sympy.preorder_traversal(expr)
            if isinstance(e, sympy.Indexed) and str(e.base) != "theta"
        ]
        tensor = space.tensor(tensor_name)
        for entry in entries:
            for axis, index in zip(tensor.axes, entry.indices):
                if formula.index_space[str(index)] != axis.space:
                    return SymbolicCheck(False, f"index {index} of {tensor_name} mixes spaces")
    lhs_symbols = {str(s) for s in formula.lhs.free_symbols if s.is_integer}
    summed = {
        str(limit[0])
        for s in sympy.preorder_traversal(formula.rhs)
        if isinstance(s, sympy.Sum)
        for limit in s.limits
    }
    for name in summed:
        size = space.space(formula.index_space[name]).size
        if name in lhs_symbols:
            return SymbolicCheck(False, f"summed index {name} is also an output index")
        limits = [
            lim
            for s in sympy.preorder_traversal(formula.rhs)
            if isinstance(s, sympy.Sum)
            for lim in s.limits
            if str(lim[0]) == name
        ]
        if any(lim[1] != 0 or lim[2] != size - 1 for lim in limits):
            return SymbolicCheck(False, f"sum over {name} does not run over the whole space")
    # Scalings: the summand's factor must equal the output entry's factor.
    in_factor: sympy.Expr = sympy.Integer(1)
    if basis_map.input is not None:
        entry = formula.summand.as_coeff_Mul()[1]
        entries = [
            e
            for e in sympy.preorder_traversal(formula.summand)
            if isinstance(e, sympy.Indexed) and str(e.base) != "theta"
        ]
        entry = entries[0] if entries else entry
        in_factor = _scale_factor(space, entry, basis_map.input)
    out_factor: sympy.Expr = sympy.Integer(1)
    if basis_map.output is not None:
        out_factor = _scale_factor(space, formula.lhs, basis_map.output)
    ratio = _reduce_signs(space, sympy.powsimp(in_factor / out_factor, force=True))
    if sympy.simplify(ratio) != 1:
        return SymbolicCheck(
            False, f"scale factors differ: input gains {in_factor}, output needs {out_factor}"
        )
    return SymbolicCheck(True, f"factor {out_factor}" if out_factor != 1 else "invariant factor 1")
