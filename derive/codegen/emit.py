"""Jinja rendering of layer plans into PyTorch modules, and safe writing of the result.

The environment follows symforce's: cached, ``StrictUndefined``, ``trim_blocks``,
``lstrip_blocks``, ``keep_trailing_newline``. Templates are found in the checkout's
``templates/`` folder or, in an installed wheel, in the ``derive.templates`` package.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import jinja2

__all__ = ["ModuleMeta", "template_dir", "environment", "render", "write_atomic"]


@dataclass(frozen=True)
class ModuleMeta:
    """What every generated file says about where it came from."""

    name: str
    spec_summary: str
    regenerate: str
    group_lines: tuple[str, ...]
    dim: int
    constant_dim: int
    num_maps: int


def template_dir() -> Path:
    """The folder holding the ``*.jinja`` templates (checkout first, then installed package)."""
    checkout = Path(__file__).resolve().parents[2] / "templates"
    if (checkout / "linear.py.jinja").is_file():
        return checkout
    installed = Path(str(resources.files("derive.templates")))
    if (installed / "linear.py.jinja").is_file():
        return installed
    raise FileNotFoundError("cannot find the nfn-derive templates (linear.py.jinja)")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(template: str, **context: object) -> str:
    """Render ``template`` and normalize trailing whitespace."""
    text = environment().get_template(template).render(**context)
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so no partial file is ever left.

    The file gets the permissions ``open(path, "w")`` would give it: those of the file it
    replaces, or for a new file 0o666 less the umask (the temporary file is created with mode
    0o666 and the kernel applies the umask, so 0o644 under the usual umask 022).
    """
    target = Path(path)
    directory = target.parent  # Path("x.py").parent is Path(".")
    keep_mode = stat.S_IMODE(target.stat().st_mode) if target.is_file() else None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = directory / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        if keep_mode is not None:
            os.chmod(tmp, keep_mode)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
