"""Safe Python identifiers and class names from user-supplied names."""

from __future__ import annotations

import keyword
import re

__all__ = ["identifier", "class_name", "comment_text"]

_UNSAFE = re.compile(r"[^0-9a-zA-Z_]+")


def identifier(name: str, prefix: str = "x", part: bool = False) -> str:
    """A lowercase Python identifier made only of ``[a-z0-9_]``, never a keyword.

    With ``part=True`` the result is only a piece of a longer name, so keywords are allowed.
    """
    text = _UNSAFE.sub("_", name).strip("_").lower() or prefix
    if text[0].isdigit() and not part:
        text = f"{prefix}_{text}"
    if not part and (keyword.iskeyword(text) or keyword.issoftkeyword(text)):
        text = f"{text}_"
    return text


def class_name(name: str, suffix: str) -> str:
    """``relu-mlp`` + ``Linear`` -> ``ReluMlpLinear`` (only letters and digits)."""
    words = [w for w in _UNSAFE.sub(" ", name).replace("_", " ").split() if w]
    stem = "".join(w[:1].upper() + w[1:] for w in words) or "Weights"
    if stem[0].isdigit():
        stem = f"Net{stem}"
    return f"{stem}{suffix}"


def comment_text(text: str) -> str:
    """Text safe inside a generated comment or docstring: printable ASCII, no quotes or backslashes."""
    cleaned = "".join(ch if (ch.isascii() and ch.isprintable()) else "?" for ch in text)
    return cleaned.replace('"""', "'''").replace("\\", "/")
