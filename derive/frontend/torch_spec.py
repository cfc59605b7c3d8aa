"""Specs for PyTorch modules: ``--torch package.module:attribute``, spec files, the Python API.

A :class:`TorchSpec` names where the module comes from (an import path to an ``nn.Module``
instance or a factory returning one, or a module object passed from Python), the shape of one
input without the batch axis, and the symmetry options. Spec files use::

    name: small_cnn
    architecture: torch
    module: nfn_runtime.architectures:small_cnn   # an nn.Module or a factory returning one
    arguments: {}                                 # keyword arguments for the factory
    input_shape: [1, 8, 8]
    permute: hidden
    scaling: auto
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from derive.errors import SpecError
from derive.frontend.options import PERMUTE_CHOICES, SCALING_CHOICES, check_choice, check_name

__all__ = [
    "TorchSpec",
    "TORCH_FIELDS",
    "torch_spec",
    "torch_spec_from_mapping",
    "parse_input_shape",
    "load_module",
]

TORCH_FIELDS = (
    "name",
    "architecture",
    "module",
    "arguments",
    "input_shape",
    "permute",
    "scaling",
)


@dataclass(frozen=True)
class TorchSpec:
    """A PyTorch module to trace, with the shape of one input and the symmetry options."""

    name: str
    target: str  # "package.module:attribute", or a description of a Python object
    input_shape: tuple[int, ...]
    permute: str = "hidden"
    scaling: str = "auto"
    source: str = "python"
    arguments: tuple[tuple[str, Any], ...] = ()
    module: Any = field(default=None, compare=False, repr=False)

    @property
    def importable(self) -> bool:
        return self.module is None

    def build(self) -> nn.Module:
        """The module: the one given, or a fresh one from the import path."""
        if self.module is not None:
            return self.module  # type: ignore[no-any-return]
        return load_module(self.target, dict(self.arguments), self.source)

    def summary(self) -> str:
        shape = "x".join(str(n) for n in self.input_shape)
        return f"torch module {self.target}, input {shape}"

    def options(self) -> str:
        """The command-line options that reproduce this spec."""
        if not self.importable or self.arguments:
            return f"{self.source} (spec from {self.target})"
        shape = ",".join(str(n) for n in self.input_shape)
        return (
            f"--torch {self.target} --input-shape {shape} --permute {self.permute} "
            f"--scaling {self.scaling} --name {self.name}"
        )

    def with_options(
        self, name: str | None = None, permute: str | None = None, scaling: str | None = None
    ) -> TorchSpec:
        return replace(
            self,
            name=self.name if name is None else name,
            permute=self.permute if permute is None else permute,
            scaling=self.scaling if scaling is None else scaling,
        )

    def proxy(self, hidden: int, other: int) -> None:
        """A module cannot shrink itself: its weight space is capped instead."""
        return None

    def architecture_data(self) -> dict[str, Any]:
        return {
            "kind": "torch",
            "module": self.target,
            "arguments": dict(self.arguments),
            "input_shape": list(self.input_shape),
            "permute": self.permute,
            "scaling": self.scaling,
        }


def parse_input_shape(text: str, where: str = "--input-shape") -> tuple[int, ...]:
    """``1,8,8`` -> ``(1, 8, 8)`` (one input without the batch axis)."""
    shape = []
    for index, part in enumerate(text.split(",")):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise SpecError(
                f"entry {index} must be a positive integer, got {part!r}", where
            ) from None
        if value < 1:
            raise SpecError(f"entry {index} must be a positive integer, got {value}", where)
        shape.append(value)
    return tuple(shape)


def _check_shape(value: object, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise SpecError(
            f"field 'input_shape': expected a list of positive integers, got {value!r}", where
        )
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            raise SpecError(
                f"field 'input_shape[{index}]': must be a positive integer, got {item!r}", where
            )
    return tuple(value)


def load_module(target: str, arguments: Mapping[str, Any], where: str) -> nn.Module:
    """Import ``package.module:attribute`` and return the ``nn.Module`` it is or makes."""
    module_path, colon, attribute = target.partition(":")
    if not colon or not module_path or not attribute:
        raise SpecError(f"module {target!r} must look like 'package.module:attribute'", where)
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        imported = importlib.import_module(module_path)
    except Exception as exc:
        raise SpecError(f"cannot import {module_path!r}: {exc}", where) from None
    finally:
        if added:
            sys.path.remove(cwd)
    obj: Any = imported
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{module_path!r} has no attribute {attribute!r}", where)
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        if arguments:
            raise SpecError(
                f"{target!r} is a module instance; 'arguments' apply to factories only", where
            )
        return obj
    if not callable(obj):
        raise SpecError(
            f"{target!r} is a {type(obj).__name__}, not an nn.Module or a factory", where
        )
    try:
        built = obj(**arguments)
    except Exception as exc:
        raise SpecError(f"calling {target!r} failed: {type(exc).__name__}: {exc}", where) from None
    if not isinstance(built, nn.Module):
        raise SpecError(f"{target!r} returned a {type(built).__name__}, not an nn.Module", where)
    return built


def torch_spec(
    target: str | nn.Module,
    input_shape: Sequence[int],
    permute: str = "hidden",
    scaling: str = "auto",
    name: str | None = None,
    source: str = "python",
    arguments: Mapping[str, Any] | None = None,
) -> TorchSpec:
    """Validate and build a spec for a module object or an import path (the Python API)."""
    shape = _check_shape(list(input_shape), source)
    module = None if isinstance(target, str) else target
    if isinstance(target, str):
        label = target
        default_name = target.rpartition(":")[2].replace(".", "_") or "network"
    else:
        label = f"python object {type(target).__name__}"
        default_name = type(target).__name__
    return TorchSpec(
        name=check_name(name, source) if name is not None else default_name,
        target=label,
        input_shape=shape,
        permute=check_choice(permute, PERMUTE_CHOICES, "permute", source),
        scaling=check_choice(scaling, SCALING_CHOICES, "scaling", source),
        source=source,
        arguments=tuple(sorted((arguments or {}).items())),
        module=module,
    )


def torch_spec_from_mapping(data: Mapping[str, Any], where: str, default_name: str) -> TorchSpec:
    """A spec file with ``architecture: torch``."""
    unknown = sorted((key for key in data if key not in TORCH_FIELDS), key=str)
    if unknown:
        raise SpecError(
            f"unknown field {str(unknown[0])!r} (valid fields for a torch spec: "
            f"{', '.join(TORCH_FIELDS)})",
            where,
        )
    for required in ("module", "input_shape"):
        if required not in data:
            raise SpecError(f"field {required!r} is missing (a torch spec needs it)", where)
    target = data["module"]
    if not isinstance(target, str):
        raise SpecError(
            f"field 'module': expected 'package.module:attribute', got {target!r}", where
        )
    arguments = data.get("arguments", {}) or {}
    if not isinstance(arguments, dict) or not all(isinstance(k, str) for k in arguments):
        raise SpecError(f"field 'arguments': expected a mapping of names, got {arguments!r}", where)
    return TorchSpec(
        name=check_name(data.get("name", default_name), where),
        target=target,
        input_shape=_check_shape(data["input_shape"], where),
        permute=check_choice(data.get("permute", "hidden"), PERMUTE_CHOICES, "permute", where),
        scaling=check_choice(data.get("scaling", "auto"), SCALING_CHOICES, "scaling", where),
        source=where,
        arguments=tuple(sorted(arguments.items())),
    )
