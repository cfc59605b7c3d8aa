"""Statements of ``forward``: features mixed by matmuls, results placed into the outputs.

Everything here spells the plan as Python; nothing decides what the layer computes.
"""

from __future__ import annotations

from dataclasses import dataclass

from derive.codegen import codefmt
from derive.errors import GenerationError
from derive.plan.linear import LinearPlan, MixOp, Placement, Term

__all__ = [
    "Statement",
    "placed_code",
    "mix_statements",
    "output_statements",
    "fused_terms",
    "param_ref",
    "rows_slice",
    "scaled",
    "split_long",
]


@dataclass(frozen=True)
class Statement:
    """One line (possibly wrapped) of ``forward``, with an optional comment above it."""

    code: str
    comment: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", codefmt.fit_assignment(self.code, 8))

    @property
    def trailing(self) -> str:
        """``code  # comment`` when that fits on a line, else ``""``."""
        line = f"{self.code}  # {self.comment}" if self.comment else self.code
        return line if 8 + len(line) <= codefmt.LINE_LENGTH and "\n" not in self.code else ""


def placed_code(var: str, placement: Placement, layout: str = "channels_first") -> str:
    """Spell a term result in the output's layout ``(B, c_out, *axes)``, broadcast axes as 1.

    Channels-first results are ``(B, c_out * factor, *kept)``; channels-last results are
    ``(B, *kept, c_out * factor)``. Rows are ordered (c_out, fixed axes...).
    """
    if placement.is_diagonal:
        raise ValueError("place the compact form of a diagonal term (Placement.compact)")
    fixed = [str(n) for n in placement.fixed_sizes]
    kept = [str(n) for n in placement.kept_sizes]
    expr = var
    if layout == "channels_last" and placement.kept_sizes:
        if fixed:
            expr = f"{expr}.unflatten(-1, (c_out, {', '.join(fixed)}))"
        current = (
            [("kept", k) for k in range(len(kept))]
            + [("channel", 0)]
            + [("fixed", k) for k in range(len(fixed))]
        )
    else:
        if fixed:
            expr = f"{expr}.view(batch, c_out, {', '.join([*fixed, *kept])})"
        current = (
            [("channel", 0)]
            + [("fixed", k) for k in range(len(fixed))]
            + [("kept", k) for k in range(len(kept))]
        )
    target = [("channel", 0)] + [role for role in placement.roles if role[0] != "broadcast"]
    permutation = [current.index(role) for role in target]
    if permutation != sorted(permutation):
        expr = f"{expr}.permute(0, {', '.join(str(1 + p) for p in permutation)})"
    if any(role[0] == "broadcast" for role in placement.roles):
        index = [":", ":"] + ["None" if role[0] == "broadcast" else ":" for role in placement.roles]
        while index[-1] == ":":
            index.pop()
        expr = f"{expr}[{', '.join(index)}]"
    return expr


def rows_slice(start: int, stop: int) -> str:
    """A row slice in units of ``c_out``: ``:c_out``, ``: 2 * c_out``, ``2 * c_out : 3 * c_out``.

    Used for parameter initialization only: in ``forward`` slicing would make each slice's
    backward allocate a zero tensor the size of the whole matmul result; ``torch.split`` does not.
    """

    def spell(value: int) -> str:
        return "c_out" if value == 1 else f"{value} * c_out"

    if start == 0:
        return ":c_out" if stop == 1 else f": {spell(stop)}"
    return f"{spell(start)} : {spell(stop)}"


def _columns(start: int, stop: int) -> str:
    """A column slice in units of ``c_in``."""

    def spell(value: int) -> str:
        return "c_in" if value == 1 else f"{value} * c_in"

    if start == 0:
        return ":c_in" if stop == 1 else f": {spell(stop)}"
    return f"{spell(start)} : {spell(stop)}"


def param_ref(op: MixOp, attribute: str) -> str:
    """A matmul's parameter: the module attribute, or the local variable a tied layer
    gathered it into."""
    return attribute if op.tied else f"self.{attribute}"


def _expanded_weight(op: MixOp, attribute: str | None = None) -> str:
    return f"{param_ref(op, attribute or op.weight)}.expand(batch, -1, -1)"


def _mix_input(op: MixOp, statements: list[Statement]) -> str:
    """The concatenated features of ``op`` in its layout; emits the concatenation if needed."""
    suffix = op.name.removeprefix("mix_")
    channels_last = op.layout == "channels_last"
    inputs = list(op.features)  # already in the op's layout
    comment = f"{op.name}: {', '.join(op.features)}"
    if len(inputs) == 1:
        statements.append(Statement("", comment))
        return inputs[0]
    parts = f"parts_{suffix}"
    statements.append(Statement(codefmt.wrap_list(inputs, 8, prefix=f"{parts} = "), comment))
    x = f"x_{suffix}"
    statements.append(Statement(f"{x} = torch.cat({parts}, dim={-1 if channels_last else 1})"))
    return x


def _accumulates(op: MixOp) -> bool:
    """Matrix-shaped channels-first features are mixed one ``baddbmm`` each (no concatenated
    copy of large tensors); vectors are concatenated for one matmul."""
    return op.layout == "channels_first" and len(op.kept) > 1 and len(op.features) > 1


def _accumulation(
    op: MixOp, first: str | None, target: str, outer: dict[str, tuple[str, str]]
) -> list[Statement]:
    """``target = first + sum_k W[:, cols_k] @ feature_k`` (``first`` None: start from 0).

    A feature in ``outer`` is ``u (x) v`` per channel and is added as a rank-one update
    ``(W_k * u) @ v`` without ever being built. A factored weight (``op.rank``) is never
    accumulated: its features are concatenated for ``up @ (down @ x)``.
    """
    statements = [Statement("", f"{op.name}: {', '.join(op.features)}")]
    accumulator, column = first, 0
    for feature, factor in zip(op.features, op.feature_factors):
        if feature in outer:
            u, v = outer[feature]
            theta = f"{param_ref(op, op.weight)}[:, {_columns(column, column + factor)}]"
            left = f"{target}_{feature}"
            code = f'{left} = torch.einsum("oc,bcj->bojc", {theta}, {u}).flatten(1, 2)'
            statements.append(Statement(code, f"{feature} = {u} (x) {v}: a rank-one update"))
            cols = op.kept_sizes[-1]
            if accumulator is None:
                statements.append(
                    Statement(f"{target} = torch.bmm({left}, {v}).view(batch, c_out, -1)")
                )
            else:
                rows = f"{accumulator}.view(batch, -1, {cols})"
                call = codefmt.call("torch.baddbmm", [rows, left, v], 8, prefix=f"{target} = ")
                statements.append(Statement(call))
                statements.append(Statement(f"{target} = {target}.view(batch, c_out, -1)"))
            accumulator, column = target, column + factor
            continue
        operand = f"{feature}.flatten(2)" if len(op.kept) > 1 else feature
        if len(op.features) == 1:
            weight = _expanded_weight(op)
        else:
            columns = _columns(column, column + factor)
            weight = f"{param_ref(op, op.weight)}[:, {columns}].expand(batch, -1, -1)"
        if accumulator is None:
            call = codefmt.call("torch.bmm", [weight, operand], 8, prefix=f"{target} = ")
        else:
            args = [accumulator, weight, operand]
            call = codefmt.call("torch.baddbmm", args, 8, prefix=f"{target} = ")
        statements.append(Statement(call))
        accumulator, column = target, column + factor
    return statements


def mix_statements(op: MixOp, outer: dict[str, tuple[str, str]]) -> list[Statement]:
    y = f"y_{op.name.removeprefix('mix_')}" if len(op.terms) > 1 else op.terms[0].name
    if op.rank and any(f in outer for f in op.features):
        raise ValueError(f"{op.name}: a factored weight cannot take rank-one features")
    accumulates = _accumulates(op) or any(f in outer for f in op.features)
    if accumulates and not op.has_bias and not op.rank:
        statements = _accumulation(op, None, y, outer)
        kept = ", ".join(str(n) for n in op.kept_sizes)
        statements.append(Statement(f"{y} = {y}.view(batch, -1, {kept})"))
        return statements + _split_statements(op, y)
    statements = []
    x = _mix_input(op, statements)
    bias = param_ref(op, op.bias) if op.has_bias else None
    if not op.kept or op.layout == "channels_last":
        if op.rank:  # a factored weight: up @ (down @ x)
            args: list[codefmt.Node] = [
                codefmt.Call("F.linear", (x, param_ref(op, op.down))),
                param_ref(op, op.up),
            ]
        else:
            args = [x, param_ref(op, op.weight)]
        code = codefmt.call("F.linear", args + ([bias] if bias else []), 8, prefix=f"{y} = ")
    else:
        operand = f"{x}.flatten(2)" if len(op.kept) > 1 else x
        if op.rank:
            mixed: list[codefmt.Node] = [
                _expanded_weight(op, op.up),
                codefmt.Call("torch.bmm", (_expanded_weight(op, op.down), operand)),
            ]
        else:
            mixed = [_expanded_weight(op), operand]
        code = codefmt.call("torch.bmm", mixed, 8, prefix=f"{y} = ")
        if bias:
            statements.append(Statement(code))
            code = f"{y} = {y} + {bias}[:, None]"
        if len(op.kept) > 1:
            statements.append(Statement(code))
            code = f"{y} = {y}.view(batch, -1, {', '.join(str(n) for n in op.kept_sizes)})"
    statements.append(Statement(code))
    return statements + _split_statements(op, y)


def _split_statements(op: MixOp, y: str) -> list[Statement]:
    """Rows of a matmul shared by several terms, split into one variable per term."""
    statements: list[Statement] = []
    if len(op.terms) > 1:
        sizes = [
            f"{t.placement.factor} * c_out" if t.placement.factor != 1 else "c_out"
            for t in op.terms
        ]
        dim = -1 if op.layout == "channels_last" and op.kept else 1
        split = f"split_{op.name.removeprefix('mix_')}"
        split_call = codefmt.Call("torch.split", (y, codefmt.Seq(tuple(sizes)), f"dim={dim}"))
        statements.append(Statement(codefmt.statement(split_call, 8, prefix=f"{split} = ")))
        for k, term in enumerate(op.terms):
            statements.append(Statement(f"{term.name} = {split}[{k}]"))
    return statements


def _fusable(op: MixOp, base: Term) -> bool:
    """Whether ``base`` can take its broadcast terms as the input of a ``baddbmm``."""
    placement = base.placement
    in_order = list(placement.roles) == [("kept", k) for k in range(len(placement.roles))]
    return (
        op.layout == "channels_first"
        and not op.rank
        and len(op.terms) == 1
        and not op.has_bias
        and bool(op.kept)
        and not placement.fixed_sizes
        and in_order
    )


def output_statements(
    out_var: str,
    terms: tuple[Term, ...],
    op_of: dict[str, MixOp],
    fused: set[str],
    outer: dict[str, tuple[str, str]],
) -> list[Statement]:
    """Add the terms of one output, nesting small broadcasts into larger ones first.

    Terms that write a diagonal (tied spaces) are summed in their compact form and embedded
    once per diagonal pattern, then added.
    """
    regular = tuple(t for t in terms if not t.placement.is_diagonal)
    diagonal = tuple(t for t in terms if t.placement.is_diagonal)
    statements, diagonals = _diagonal_statements(out_var, diagonal, op_of)
    if not regular:
        statements.append(Statement(f"{out_var} = {' + '.join(diagonals)}"))
        return statements
    statements = _regular_statements(out_var, regular, op_of, fused, outer) + statements
    for name in diagonals:
        statements.append(Statement(f"{out_var} = {out_var} + {name}"))
    return statements


def _diagonal_statements(
    out_var: str, terms: tuple[Term, ...], op_of: dict[str, MixOp]
) -> tuple[list[Statement], list[str]]:
    """Diagonal terms summed per merge pattern in compact form, then ``torch.diag_embed``."""
    by_merge: dict[tuple[tuple[int, ...], ...], list[Term]] = {}
    for term in terms:
        by_merge.setdefault(term.placement.merged, []).append(term)
    statements: list[Statement] = []
    names: list[str] = []
    stem = f"diag_{out_var.removeprefix('out_')}"
    for index, (merged, group) in enumerate(sorted(by_merge.items())):
        if len(merged) != 1 or len(merged[0]) != 2:
            raise GenerationError(
                f"output {group[0].placement.output}: writing to the diagonal {merged} (more "
                "than two axes of one space, or two tied pairs) is not generated"
            )
        first, second = merged[0]
        compact = {t.name: t.placement.compact() for t in group}
        ordered = sorted(group, key=lambda t: (-compact[t.name].numel, t.name))
        var = stem if index == 0 else f"{stem}_{index}"
        parts = [placed_code(t.name, compact[t.name], op_of[t.name].layout) for t in ordered]
        comment = f"{group[0].placement.output}: terms on the diagonal of axes {first} and {second}"
        statements.append(Statement(f"{var} = {parts[0]}", comment))
        for part in parts[1:]:
            statements.append(Statement(f"{var} = {var} + {part}"))
        sizes = compact[ordered[0].name].axis_sizes
        if not any(len(c.varying_axes) == len(c.roles) for c in compact.values()):
            shape = ", ".join(str(n) for n in sizes)
            statements.append(Statement(f"{var} = {var}.expand(batch, c_out, {shape})"))
        moved = var if first == len(sizes) - 1 else f"{var}.movedim({2 + first}, -1)"
        statements.append(
            Statement(f"{var} = torch.diag_embed({moved}, dim1={2 + first}, dim2={2 + second})")
        )
        names.append(var)
    return statements, names


def _regular_statements(
    out_var: str,
    terms: tuple[Term, ...],
    op_of: dict[str, MixOp],
    fused: set[str],
    outer: dict[str, tuple[str, str]],
) -> list[Statement]:
    ordered = sorted(
        terms, key=lambda t: (t.placement.numel, len(t.placement.varying_axes), t.name)
    )
    base = ordered[-1]
    if len(base.placement.varying_axes) != len(base.placement.roles):
        raise NotImplementedError(f"output {out_var} has no full-size term")
    children: dict[str, list[Term]] = {t.name: [] for t in ordered}
    for k, small in enumerate(ordered[:-1]):
        host = next(
            (
                t
                for t in ordered[k + 1 : -1]
                if small.placement.varying_axes < t.placement.varying_axes
            ),
            base,
        )
        children[host.name].append(small)
    statements: list[Statement] = []

    def placed(term: Term) -> str:
        code = placed_code(term.name, term.placement, op_of[term.name].layout)
        if term is not base and ".permute(" in code:
            # a small broadcast term: make it contiguous so that sums with it keep the
            # output's layout (a permuted operand would give a permuted full-size result)
            head, bracket, index = code.partition("[")
            code = f"{head}.contiguous(){bracket}{index}"
        return code

    def materialize(term: Term) -> str:
        """The term plus its nested children, as a variable or an expression."""
        kids = children[term.name]
        if not kids:
            return placed(term)
        acc = f"sum_{term.name}"
        first = materialize(kids[0])
        line = f"{acc} = {placed(term)} + {first}"
        if 8 + len(line) <= codefmt.LINE_LENGTH:
            statements.append(Statement(line))
        else:
            statements.append(Statement(f"{acc} = {placed(term)}"))
            statements.append(Statement(f"{acc} = {acc} + {first}"))
        for kid in kids[1:]:
            statements.append(Statement(f"{acc} = {acc} + {materialize(kid)}"))
        return acc

    top = children[base.name]
    if base.name in fused:
        op = op_of[base.name]
        sizes = ", ".join(str(n) for n in base.placement.axis_sizes)
        rest = f"rest_{out_var.removeprefix('out_')}"
        terms_sum = " + ".join(materialize(kid) for kid in top)
        statements.append(Statement(f"{rest} = {terms_sum}"))
        statements.append(
            Statement(f"{rest} = {rest}.expand(batch, c_out, {sizes}).reshape(batch, c_out, -1)")
        )
        statements += _accumulation(op, rest, out_var, outer)
        statements.append(Statement(f"{out_var} = {out_var}.view(batch, c_out, {sizes})"))
        return statements
    base_code = placed(base)
    if not top:
        statements.append(Statement(f"{out_var} = {base_code}"))
        return statements
    first = materialize(top[0])
    line = f"{out_var} = {base_code} + {first}"
    if 8 + len(line) <= codefmt.LINE_LENGTH:
        statements.append(Statement(line))
    else:
        statements.append(Statement(f"{out_var} = {base_code}"))
        statements.append(Statement(f"{out_var} = {out_var} + {first}"))
    for kid in top[1:]:
        statements.append(Statement(f"{out_var} += {materialize(kid)}"))
    return statements


def fused_terms(plan: LinearPlan) -> set[str]:
    """Names of base terms computed by ``baddbmm`` together with their output's broadcasts."""
    op_of = {term.name: op for op in plan.ops for term in op.terms}
    fused = set()
    for _, _, terms in plan.outputs:
        ordered = sorted(
            (t for t in terms if not t.placement.is_diagonal),
            key=lambda t: (t.placement.numel, len(t.placement.varying_axes), t.name),
        )
        if len(ordered) > 1 and _fusable(op_of[ordered[-1].name], ordered[-1]):
            fused.add(ordered[-1].name)
    return fused


def scaled(factor: int, name: str) -> str:
    return name if factor == 1 else f"{factor} * {name}"


def split_long(code: str) -> list[str]:
    """``x = (a).sum(...) / c`` too long for a line becomes ``x = a`` then ``x = x.sum(...) / c``."""
    if 8 + len(code) <= codefmt.LINE_LENGTH or " = (" not in code or ").sum(" not in code:
        return [code]
    target, rest = code.split(" = (", 1)
    inner, tail = rest.rsplit(").sum(", 1)
    return [f"{target} = {inner}", f"{target} = {target}.sum({tail}"]
