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
from derive.plan.linear import LinearPlan
from derive.weightspace.model import WeightSpaceSpec

__all__ = [
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


def layout_literal(space: WeightSpaceSpec, indent: int = 0) -> str:
    """The ``WeightSpaceLayout(...)`` literal for generated code."""
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
    lines.append(f"{pad})")
    return "\n".join(lines)


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
    params = []
    inits = []
    bound_vars = {}
    for tensor in space.tensors:
        bound_vars[tensor.name] = f"bound_{tensor.name.lower()}"
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
    used = {i.output for i in inits}
    bounds = tuple(
        (bound_vars[t.name], f"1.0 / math.sqrt({scaled(plan.fan_in[t.name], 'c_in')})")
        for t in space.tensors
        if t.name in used
    ) + tuple(factor_bounds)
    formula = _formula_lines(plan)
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
    )


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
