"""From a layer plan to the strings the templates print (statements, literals, docstrings).

Nothing here decides what the layer computes; it only spells the plan as Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from derive.codegen import codefmt
from derive.codegen.feature_code import feature_expression
from derive.codegen.statements import (
    Statement,
    fused_terms,
    mix_statements,
    output_statements,
    rows_slice,
    scaled,
)
from derive.naming import comment_text
from derive.plan.features import is_product_key
from derive.plan.linear import LinearPlan, MixOp
from derive.plan.tying import BIAS, DOWN, UP, WEIGHT, TiedOp, Tying, plan_tying
from derive.weightspace.model import WeightSpaceSpec

__all__ = [
    "BufferDecl",
    "ParamDecl",
    "InitRows",
    "PsiDecl",
    "LinearView",
    "linear_view",
    "layout_literal",
    "safe_string",
    "wrap_words",
]

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-:[]")


def safe_string(text: str) -> str:
    """A double-quoted literal for a name from a spec, after removing unsafe characters."""
    return '"' + "".join(ch if ch in _SAFE else "_" for ch in text) + '"'


@dataclass(frozen=True)
class ParamDecl:
    name: str
    shape: str  # Python expression of the shape tuple

    @property
    def line(self) -> str:
        """``self.name = nn.Parameter(torch.empty(shape))``, wrapped like the formatter."""
        return codefmt.call(
            "nn.Parameter", [f"torch.empty({self.shape})"], 8, prefix=f"self.{self.name} = "
        )


@dataclass(frozen=True)
class BufferDecl:
    """A non-persistent buffer computed in ``__init__`` (the index of a tied weight)."""

    name: str
    value: codefmt.Node

    @property
    def line(self) -> str:
        args: list[codefmt.Node] = [f'"{self.name}"', self.value, "persistent=False"]
        return codefmt.call("self.register_buffer", args, 8)


@dataclass(frozen=True)
class InitRows:
    """``param[rows]`` is drawn uniformly with the fan-in of output ``output``."""

    param: str
    rows: str
    bound: str
    output: str


@dataclass(frozen=True)
class LinearView:
    unpack: tuple[str, ...]
    unpack_line: str
    features: tuple[Statement, ...]
    mixes: tuple[Statement, ...]
    outputs: tuple[Statement, ...]
    result: str
    params: tuple[ParamDecl, ...]
    inits: tuple[InitRows, ...]
    bounds: tuple[tuple[str, str], ...]  # (variable, expression)
    formula: tuple[str, ...]
    buffers: tuple[BufferDecl, ...] = ()
    products: tuple[Statement, ...] = ()  # polynomial layers: shared path products and terms
    psis: tuple[PsiDecl, ...] = ()
    term_lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class PsiDecl:
    """A gluing parameter Psi: trainable (``nn.Parameter``) or fixed (a buffer)."""

    name: str
    shape: str
    std: str
    trainable: bool

    @property
    def line(self) -> str:
        """The parameter (trainable) or buffer (fixed) declaration, wrapped like the formatter."""
        empty = f"torch.empty({self.shape})"
        if self.trainable:
            return codefmt.call("nn.Parameter", [empty], 8, prefix=f"self.{self.name} = ")
        return codefmt.call("self.register_buffer", [f'"{self.name}"', empty], 8)


def layout_literal(space: WeightSpaceSpec, indent: int = 0, heads: bool = True) -> str:
    """The ``WeightSpaceLayout(...)`` literal for generated code (``heads``: with the attention
    heads the group permutes as wholes, for a layer equivariant to that)."""
    pad = " " * indent
    lines = [f"{pad}WeightSpaceLayout(", f"{pad}    spaces=("]
    for s in space.spaces:
        lines.append(
            f"{pad}        SpaceLayout({safe_string(s.name)}, {s.size}, "
            f"permuted={s.permuted}, scaling={safe_string(s.scaling.value)}),"
        )
    lines.append(f"{pad}    ),")
    groups = [("tensors", space.tensors)] + ([("buffers", space.buffers)] if space.buffers else [])
    for field_name, tensors in groups:
        lines.append(f"{pad}    {field_name}=(")
        for t in tensors:
            axes = ", ".join(f"AxisLayout({safe_string(a.space)}, {a.character})" for a in t.axes)
            axes_tuple = f"({axes},)" if len(t.axes) == 1 else f"({axes})"
            shape = ", ".join(str(n) for n in t.source_shape)
            shape_tuple = f"({shape},)" if len(t.source_shape) == 1 else f"({shape})"
            args = [
                safe_string(t.name),
                safe_string(t.kind),
                str(t.layer),
                axes_tuple,
                safe_string(t.source_key),
                shape_tuple,
            ]
            if t.source_slice is not None:
                args.append(f"source_slice={t.source_slice!r}")
            call = codefmt.call("TensorLayout", args, indent + 8, prefix=f"{pad}        ")
            lines.append(call + ",")
        lines.append(f"{pad}    ),")
    if heads and space.permuted_heads:
        lines.append(f"{pad}    heads=(")
        for block in space.permuted_heads:
            head_spaces = _nested_strings(tuple(h.spaces for h in block.heads))
            head_tensors = _nested_strings(block.tensors)
            call = codefmt.call(
                "HeadsLayout", [head_spaces, head_tensors], indent + 8, prefix=f"{pad}        "
            )
            lines.append(call + ",")
        lines.append(f"{pad}    ),")
    lines.append(f"{pad})")
    return "\n".join(lines)


def _nested_strings(rows: tuple[tuple[str, ...], ...]) -> codefmt.Seq:
    """A tuple of tuples of string literals."""
    return codefmt.Seq(
        tuple(codefmt.Seq(tuple(safe_string(x) for x in row), "(") for row in rows), "("
    )


def linear_view(plan: LinearPlan, outer: Mapping[str, tuple[str, str]] | None = None) -> LinearView:
    """All strings of the linear-layer template; ``outer`` spells the vectors ``(u, v)`` of
    every rank-one feature of ``plan.outer_features``."""
    outer = dict(outer or {})
    if set(outer) != plan.outer_features:
        raise ValueError("every rank-one feature of the plan needs its vectors spelled")
    space = plan.space
    features = [
        Statement(f"{f.name} = {feature_expression(space, f)}", comment=f.description)
        for f in plan.features
        if not f.is_input
    ]
    op_of = {term.name: op for op in plan.ops for term in op.terms}
    fused = fused_terms(plan)
    mixes: list[Statement] = []
    for op in plan.ops:
        if not (len(op.terms) == 1 and op.terms[0].name in fused):
            mixes += mix_statements(op, outer)
    outputs: list[Statement] = []
    for _, out_var, terms in plan.outputs:
        outputs += output_statements(out_var, terms, op_of, fused, outer)
    weights = [out for (name, out, _) in plan.outputs if space.tensor(name).kind == "weight"]
    biases = {
        space.tensor(name).layer: out
        for (name, out, _) in plan.outputs
        if space.tensor(name).kind == "bias"
    }
    layers = sorted({t.layer for t in space.tensors if t.kind != "virtual"})
    bias_list = [biases.get(layer, "None") for layer in layers]
    result = codefmt.call(
        "WeightSpace",
        [codefmt.Seq(tuple(weights), "("), codefmt.Seq(tuple(bias_list), "(")],
        8,
        prefix="return ",
    )
    bound_vars = {t.name: f"bound_{t.name.lower()}" for t in space.tensors}
    tying = plan_tying(plan) if any(op.tied for op in plan.ops) else None
    buffers: tuple[BufferDecl, ...] = ()
    if tying is None:
        params, inits, factor_bounds = _params(plan, bound_vars)
    else:
        params, inits, factor_bounds = _tied_params(tying, bound_vars)
        buffers = tuple(b for op in plan.ops for b in _index_buffers(op, tying.ops[op.name]))
        mixes = [s for op in plan.ops for s in _gathers(op, tying.ops[op.name])] + mixes
    used = {i.output for i in inits}
    bounds = tuple(
        (bound_vars[t.name], f"1.0 / math.sqrt({scaled(plan.fan_in[t.name], 'c_in')})")
        for t in space.tensors
        if t.name in used
    ) + tuple(factor_bounds)
    formula = _formula_lines(plan)
    if tying is not None:
        formula = (*formula, "", *wrap_words(_tying_note(plan, tying)))
    return LinearView(
        unpack=tuple(var for _, var in plan.inputs),
        unpack_line=codefmt.assign_tuple(
            [var for _, var in plan.inputs], "unpack_weight_space(ws, LAYOUT, self.in_channels)", 8
        ),
        features=tuple(features),
        mixes=tuple(mixes),
        outputs=tuple(outputs),
        result=result,
        params=tuple(params),
        inits=tuple(inits),
        bounds=bounds,
        formula=formula,
        buffers=buffers,
    )


def _params(
    plan: LinearPlan, bound_vars: Mapping[str, str]
) -> tuple[list[ParamDecl], list[InitRows], list[tuple[str, str]]]:
    """One weight (or two factors) and one bias per matmul, initialized row block by row
    block with the fan-in of the output each block writes."""
    params = []
    inits = []
    factor_bounds = []
    for op in plan.ops:
        rows_out = scaled(op.out_factor, "out_channels")
        columns = scaled(op.in_factor, "in_channels")
        rows_param = op.weight
        if op.rank:  # a factored weight (size budget): up (rows x rank) @ down (rank x columns)
            rank = scaled(op.rank, "max(in_channels, out_channels)")
            params.append(ParamDecl(op.up, f"{rows_out}, {rank}"))
            params.append(ParamDecl(op.down, f"{rank}, {columns}"))
            rows_param = op.up
            # down has unit variance per rank: up @ down then has the dense weight's variance
            bound = f"bound_{op.down}"
            factor_bounds.append((bound, f"math.sqrt(3.0 / self.{op.down}.shape[0])"))
            inits.append(InitRows(op.down, ":", bound, ""))
        else:
            params.append(ParamDecl(op.weight, f"{rows_out}, {columns}"))
        if op.has_bias:
            params.append(ParamDecl(op.bias, rows_out))
        row = 0
        for term in op.terms:
            stop = row + term.placement.factor
            bound = bound_vars[term.placement.output]
            inits.append(InitRows(rows_param, rows_slice(row, stop), bound, term.placement.output))
            if term.has_constant:
                inits.append(InitRows(op.bias, rows_slice(row, stop), bound, term.placement.output))
            row = stop
    return params, inits, factor_bounds


def _units_slice(start: int, stop: int, unit: str) -> str:
    """``a * unit : b * unit`` (``unit`` a product of channel counts)."""

    def spell(value: int) -> str:
        return unit if value == 1 else f"{value} * {unit}"

    return f": {spell(stop)}" if start == 0 else f"{spell(start)} : {spell(stop)}"


def _blocks_init(
    param: str, blocks: tuple[tuple[int, int, str], ...], unit: str, bound_vars: Mapping[str, str]
) -> list[InitRows]:
    """Consecutive blocks of one flat parameter with the same output, one init each."""
    merged: list[tuple[int, int, str]] = []
    for offset, size, output in blocks:
        if merged and merged[-1][2] == output and merged[-1][1] == offset:
            merged[-1] = (merged[-1][0], offset + size, output)
        else:
            merged.append((offset, offset + size, output))
    return [
        InitRows(param, _units_slice(start, stop, unit), bound_vars[output], output)
        for start, stop, output in merged
    ]


def _tied_params(
    tying: Tying, bound_vars: Mapping[str, str]
) -> tuple[list[ParamDecl], list[InitRows], list[tuple[str, str]]]:
    """The flat parameters of a layer tied across heads: one block per orbit of maps."""
    params, inits, factor_bounds = [], [], []
    if tying.weight:
        params.append(ParamDecl(WEIGHT, scaled(tying.weight, "in_channels * out_channels")))
        inits += _blocks_init(WEIGHT, tying.weight_blocks, "c_in * c_out", bound_vars)
    if tying.up:
        rank = scaled(tying.rank, "max(in_channels, out_channels)")
        params.append(ParamDecl(UP, f"{scaled(tying.up, 'out_channels')}, {rank}"))
        params.append(ParamDecl(DOWN, f"{rank}, {scaled(tying.down, 'in_channels')}"))
        inits += _blocks_init(UP, tying.up_blocks, "c_out", bound_vars)
        bound = f"bound_{DOWN}"
        factor_bounds.append((bound, f"math.sqrt(3.0 / self.{DOWN}.shape[0])"))
        inits.append(InitRows(DOWN, ":", bound, ""))
    if tying.bias:
        params.append(ParamDecl(BIAS, scaled(tying.bias, "out_channels")))
        inits += _blocks_init(BIAS, tying.bias_blocks, "c_out", bound_vars)
    return params, inits, factor_bounds


def _tying_note(plan: LinearPlan, tying: Tying) -> str:
    """The docstring paragraph of a layer tied across heads."""
    note = (
        "Tied across attention heads (docs/math.md 8.6): every theta_mix_* is gathered "
        f"from {WEIGHT} (and the biases from {BIAS}), one coefficient block per orbit of "
        "basis maps"
    )
    if not any(is_product_key(f.key) for f in plan.features):
        return note + " under whole-head permutations."
    note += " and of polynomial terms under whole-head permutations"
    if any(len(cell) == 6 for tied in tying.ops.values() for cell in tied.cells):
        note += (
            "; a cell with a column map reads its stored columns permuted (the relabelling "
            "reorders its factors) or some of them twice (the relabelling maps its term to "
            "itself)"
        )
    return note + "."


def _cells(cells: tuple[tuple[int | tuple[int, ...], ...], ...]) -> codefmt.Seq:
    """A tuple of cells, each a tuple of ints (a column map: a nested tuple)."""

    def value(v: int | tuple[int, ...]) -> codefmt.Node:
        return str(v) if isinstance(v, int) else codefmt.Seq(tuple(str(c) for c in v), "(")

    return codefmt.Seq(tuple(codefmt.Seq(tuple(value(v) for v in c), "(") for c in cells), "(")


def _index_buffers(op: MixOp, tied: TiedOp) -> list[BufferDecl]:
    """The indices gathering one matmul's weight (or factors) and bias."""
    buffers = []
    if tied.cells:
        args = (_cells(tied.cells), str(op.out_factor), str(op.in_factor))
        call = codefmt.Call("tied_index", (*args, "out_channels", "in_channels"))
        buffers.append(BufferDecl(f"{op.name}_index", call))
    if tied.up_rows:
        rows = codefmt.Call("tied_rows", (_cells(tied.up_rows), str(op.out_factor), "out_channels"))
        buffers.append(BufferDecl(f"{op.name}_up_index", rows))
        cols = codefmt.Call("tied_rows", (_cells(tied.down_cols), str(op.in_factor), "in_channels"))
        buffers.append(BufferDecl(f"{op.name}_down_index", cols))
    if tied.bias_rows:
        bias = codefmt.Call(
            "tied_rows", (_cells(tied.bias_rows), str(op.out_factor), "out_channels")
        )
        buffers.append(BufferDecl(f"{op.name}_bias_index", bias))
    return buffers


def _gathers(op: MixOp, tied: TiedOp) -> list[Statement]:
    """``forward``'s first lines: each matmul's weight gathered from the flat parameters."""
    statements = []
    if tied.cells:
        comment = f"{op.name}: weight gathered from the coefficients shared across heads"
        statements.append(Statement(f"{op.weight} = self.{WEIGHT}[self.{op.name}_index]", comment))
    if tied.up_rows:
        statements.append(Statement(f"{op.up} = self.{UP}[self.{op.name}_up_index]"))
        statements.append(Statement(f"{op.down} = self.{DOWN}[:, self.{op.name}_down_index]"))
    if tied.bias_rows:
        statements.append(Statement(f"{op.bias} = self.{BIAS}[self.{op.name}_bias_index]"))
    return statements


def _formula_lines(plan: LinearPlan) -> tuple[str, ...]:
    """Docstring lines: what each matmul reads, then what each output adds up."""
    lines = []
    op_of_term = {term.name: op.name for op in plan.ops for term in op.terms}
    for op in plan.ops:
        described = ", ".join(plan.feature(f).description for f in op.features)
        factored = (
            f" (size budget: theta_{op.name} = up . down, rank {op.rank} * max(c_in, c_out))"
            if op.rank
            else ""
        )
        lines += wrap_words(comment_text(f"{op.name} = theta_{op.name} . [{described}]{factored}"))
    lines.append("")
    for tensor, _, terms in plan.outputs:
        t = plan.space.tensor(tensor)
        letters = iter("ijklm")
        fixed_letters = iter("xyz")
        index = [
            next(fixed_letters) if plan.space.is_fixed_axis(a) else next(letters) for a in t.axes
        ]
        parts = []
        for term in terms:
            op_name = op_of_term[term.name]
            sub = [
                index[p] for p, (role, _) in enumerate(term.placement.roles) if role != "broadcast"
            ]
            parts.append(f"{op_name}[{','.join(sub)}]" if sub else op_name)
        lines += wrap_words(comment_text(f"{tensor}'[{','.join(index)}] = " + " + ".join(parts)))
    return tuple(lines)


def wrap_words(text: str, width: int = 92) -> list[str]:
    """Split a long docstring line at spaces; continuation lines are indented."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if len(candidate) > width and current:
            lines.append(current)
            current = f"    {word}"
        else:
            current = candidate
    lines.append(current)
    return lines
