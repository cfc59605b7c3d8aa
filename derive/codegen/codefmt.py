"""Formatting of generated statements, so templates emit formatter-clean Python directly.

Expressions that may grow with the architecture (argument lists, feature lists, split sizes,
returned tuples) are built as small trees of :class:`Call` and :class:`Seq` nodes and laid out
with the formatter's rules:

- anything that fits on its line stays flat;
- a call that does not fit puts its arguments on one indented line if they fit there, and
  otherwise one argument per line with a trailing comma (each formatted recursively);
- a list or tuple literal that does not fit is exploded, one element per line, with a trailing
  comma.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "LINE_LENGTH",
    "Call",
    "Seq",
    "Node",
    "flat",
    "statement",
    "call",
    "wrap_list",
    "assign_tuple",
]

LINE_LENGTH = 100


@dataclass(frozen=True)
class Call:
    function: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]
    bracket: str = "["  # "[" for a list, "(" for a tuple


Node = Call | Seq | str


def flat(node: Node) -> str:
    """The node on one line."""
    if isinstance(node, str):
        return node
    if isinstance(node, Call):
        return f"{node.function}({', '.join(flat(a) for a in node.args)})"
    inner = ", ".join(flat(i) for i in node.items)
    if node.bracket == "(":
        return f"({inner},)" if len(node.items) == 1 else f"({inner})"
    return f"[{inner}]"


def _layout(node: Node, indent: int, prefix: str, suffix: str) -> str:
    pad = " " * indent
    one_line = f"{pad}{prefix}{flat(node)}{suffix}"
    if len(one_line) <= LINE_LENGTH or isinstance(node, str):
        return one_line
    if isinstance(node, Call):
        opening, closing = f"{node.function}(", ")"
        items = node.args
        body = ", ".join(flat(a) for a in items)
        if items and indent + 4 + len(body) <= LINE_LENGTH:
            return f"{pad}{prefix}{opening}\n{pad}    {body}\n{pad}{closing}{suffix}"
    else:
        opening, closing = node.bracket, "]" if node.bracket == "[" else ")"
        items = node.items
    lines = [f"{pad}{prefix}{opening}"]
    lines += [_layout(item, indent + 4, "", ",") for item in items]
    lines.append(f"{pad}{closing}{suffix}")
    return "\n".join(lines)


def statement(node: Node, indent: int, prefix: str = "") -> str:
    """``prefix + node`` formatted at ``indent``; the first line carries no indentation
    (templates place it), continuation lines carry their full indentation."""
    return _layout(node, indent, prefix, "")[indent:]


def call(function: str, args: Sequence[Node], indent: int, prefix: str = "") -> str:
    """``prefix + function(args)`` formatted at ``indent``."""
    return statement(Call(function, tuple(args)), indent, prefix)


def wrap_list(items: Sequence[Node], indent: int, prefix: str = "", suffix: str = "") -> str:
    """``prefix[items]suffix`` formatted at ``indent`` (exploded when too long)."""
    return _layout(Seq(tuple(items)), indent, prefix, suffix)[indent:]


def assign_tuple(targets: Sequence[str], value: str, indent: int) -> str:
    """``a, b, c = value``; parenthesized and exploded when it does not fit."""
    line = f"{', '.join(targets)} = {value}"
    if indent + len(line) <= LINE_LENGTH:
        return line
    return _layout(Seq(tuple(targets), "("), indent, "", f" = {value}")[indent:]


def _top_level_operator(expression: str) -> bool:
    """Whether ``expression`` has a binary operator outside every bracket and string."""
    depth = 0
    quote = ""
    for k, ch in enumerate(expression):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and ch in "+-*/" and expression[k - 1 : k] == " ":
            return True
    return False


def fit_assignment(code: str, indent: int) -> str:
    """``x = a / b`` too long for its line becomes ``x = (`` / ``a / b`` / ``)``, as the
    formatter writes it (only when the right-hand side is an operator expression that fits)."""
    if indent + len(code) <= LINE_LENGTH or "\n" in code or " = " not in code:
        return code
    target, value = code.split(" = ", 1)
    pad = " " * indent
    if _top_level_operator(value) and indent + 4 + len(value) <= LINE_LENGTH:
        return f"{target} = (\n{pad}    {value}\n{pad})"
    return code
