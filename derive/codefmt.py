"""Line wrapping for generated code, so templates emit formatted Python directly.

The rules follow the formatter's: a call that does not fit on one line puts its arguments on
one indented line if they fit there, and otherwise one argument per line with a trailing comma.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["LINE_LENGTH", "call", "assign_tuple", "wrap_list"]

LINE_LENGTH = 100


def _wrap(opening: str, items: Sequence[str], closing: str, indent: int) -> str:
    pad = " " * indent
    flat = f"{opening}{', '.join(items)}{closing}"
    if indent + len(flat) <= LINE_LENGTH:
        return flat
    inner = ", ".join(items)
    if indent + 4 + len(inner) <= LINE_LENGTH and len(items) > 0:
        return f"{opening}\n{pad}    {inner}\n{pad}{closing}"
    body = "".join(f"{pad}    {item},\n" for item in items)
    return f"{opening}\n{body}{pad}{closing}"


def call(function: str, args: Sequence[str], indent: int, prefix: str = "") -> str:
    """``prefix + function(args)``, wrapped to the line length at ``indent`` spaces."""
    return _wrap(f"{prefix}{function}(", list(args), ")", indent)


def wrap_list(items: Sequence[str], indent: int, prefix: str = "", suffix: str = "") -> str:
    """``prefix[items]suffix`` wrapped like a call."""
    return _wrap(f"{prefix}[", list(items), f"]{suffix}", indent)


def assign_tuple(targets: Sequence[str], value: str, indent: int) -> str:
    """``a, b, c = value`` (parenthesized and wrapped when it does not fit)."""
    flat = f"{', '.join(targets)} = {value}"
    if indent + len(flat) <= LINE_LENGTH:
        return flat
    pad = " " * indent
    inner = ", ".join(targets)
    if indent + 4 + len(inner) <= LINE_LENGTH:
        return f"(\n{pad}    {inner},\n{pad}) = {value}"
    body = "".join(f"{pad}    {t},\n" for t in targets)
    return f"(\n{body}{pad}) = {value}"
