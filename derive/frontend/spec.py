"""Architecture specs: YAML/JSON files, the Python API and the ``--mlp`` shorthand.

An MLP spec is a shorthand for a module: it builds
``nn.Sequential(Linear, Activation, ..., Linear)`` (:func:`nfn_runtime.architectures.mlp`),
which goes through the same tracer as any ``--torch`` module.

A spec names an architecture and the symmetry setting to derive for it::

    name: relu_mlp
    architecture: mlp
    widths: [784, 64, 64, 10]
    activation: relu          # one for all hidden layers, or a list with one per hidden layer
    permute: hidden           # hidden (HNP) | all (NP)
    scaling: auto             # auto | none | sign | positive | nonzero (override every hidden space)

Every problem is reported as a :class:`SpecError` naming the file and field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from derive.errors import SpecError
from derive.frontend.options import (
    PERMUTE_CHOICES,
    SCALING_CHOICES,
    ArchitectureSpec,
    check_choice,
    check_name,
)
from derive.frontend.torch_spec import TorchSpec, torch_spec_from_mapping
from derive.naming import identifier
from derive.symmetry.activations import canonical_activation, known_activations
from nfn_runtime.architectures import mlp

__all__ = [
    "MLPSpec",
    "PERMUTE_CHOICES",
    "SCALING_CHOICES",
    "mlp_spec",
    "load_spec",
    "spec_from_mapping",
    "parse_widths",
    "parse_activations",
    "check_name",
    "check_choice",
    "ArchitectureSpec",
    "TorchSpec",
]

_FIELDS = ("name", "architecture", "widths", "activation", "permute", "scaling")


@dataclass(frozen=True)
class MLPSpec:
    """A multilayer perceptron: widths n_0..n_L and one activation per hidden layer."""

    name: str
    widths: tuple[int, ...]
    activations: tuple[str, ...]
    permute: str = "hidden"
    scaling: str = "auto"
    source: str = "python"

    @property
    def num_layers(self) -> int:
        return len(self.widths) - 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.widths[0],)

    def build(self) -> nn.Module:
        """``nn.Sequential(Linear, Activation, ..., Linear)`` with these widths."""
        return mlp(self.widths, self.activations)

    def summary(self) -> str:
        widths = "-".join(str(w) for w in self.widths)
        return f"mlp {widths}, activations {','.join(self.activations) or 'none'}"

    def with_options(
        self, name: str | None = None, permute: str | None = None, scaling: str | None = None
    ) -> MLPSpec:
        return replace(
            self,
            name=self.name if name is None else name,
            permute=self.permute if permute is None else permute,
            scaling=self.scaling if scaling is None else scaling,
        )

    def proxy(self, hidden: int, other: int) -> MLPSpec:
        """At most three hidden layers (first, middle and last activations kept), widths
        capped at ``hidden`` (hidden) and ``other`` (input, output): every kind of block of a
        deeper MLP already occurs."""
        acts = list(self.activations)
        if len(acts) > 3:
            acts = [acts[0], acts[len(acts) // 2], acts[-1]]
        widths = (
            min(self.widths[0], other),
            *(min(w, hidden) for w in self.widths[1 : 1 + len(acts)]),
            min(self.widths[-1], other),
        )
        return replace(self, widths=widths, activations=tuple(acts), name=f"{self.name}_proxy")

    def options(self) -> str:
        """The command-line options that reproduce this spec."""
        acts = (
            ",".join(dict.fromkeys(self.activations))
            if len(set(self.activations)) == 1
            else ",".join(self.activations)
        )
        parts = [f"--mlp {','.join(str(w) for w in self.widths)}"]
        if self.activations:
            parts.append(f"--activation {acts}")
        parts.append(f"--permute {self.permute}")
        parts.append(f"--scaling {self.scaling}")
        parts.append(f"--name {identifier(self.name)}")
        return " ".join(parts)

    def architecture_data(self) -> dict[str, Any]:
        return {
            "kind": "mlp",
            "widths": list(self.widths),
            "activations": list(self.activations),
            "permute": self.permute,
            "scaling": self.scaling,
        }


def _check_widths(values: object, where: str) -> tuple[int, ...]:
    if not isinstance(values, (list, tuple)):
        raise SpecError(f"field 'widths': expected a list of integers, got {values!r}", where)
    widths: list[int] = []
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(
                f"field 'widths[{index}]': width must be a positive integer, got {value!r}", where
            )
        if value < 1:
            raise SpecError(
                f"field 'widths[{index}]': width must be a positive integer, got {value}", where
            )
        widths.append(value)
    if len(widths) < 2:
        raise SpecError(
            f"field 'widths': an MLP needs at least two widths (input and output), got {len(widths)}",
            where,
        )
    return tuple(widths)


def _check_activations(value: object, num_hidden: int, where: str) -> tuple[str, ...]:
    names: list[object]
    if isinstance(value, str):
        names = [value] * num_hidden
    elif isinstance(value, (list, tuple)):
        names = list(value)
        if len(names) == 1:
            names = names * num_hidden
        elif len(names) != num_hidden:
            raise SpecError(
                f"field 'activation': {len(names)} activations given for {num_hidden} hidden "
                f"layer{'s' if num_hidden != 1 else ''} (give one for all, or one per hidden layer)",
                where,
            )
    else:
        raise SpecError(f"field 'activation': expected a name or a list, got {value!r}", where)
    out: list[str] = []
    for index, name in enumerate(names):
        canonical = canonical_activation(name) if isinstance(name, str) else None
        if canonical is None:
            raise SpecError(
                f"field 'activation': unknown activation {name!r} at hidden layer {index + 1} "
                f"(valid: {', '.join(known_activations())})",
                where,
            )
        out.append(canonical)
    return tuple(out)


def _as_list(value: object) -> object:
    """Any non-string sequence becomes a list (validated afterwards); other values pass as they are."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    return value


def mlp_spec(
    widths: Sequence[int],
    activation: str | Sequence[str] = "relu",
    permute: str = "hidden",
    scaling: str = "auto",
    name: str | None = None,
    source: str = "python",
) -> MLPSpec:
    """Validate and build an MLP spec (the Python API)."""
    checked = _check_widths(_as_list(widths), source)
    acts = _check_activations(_as_list(activation), len(checked) - 2, source)
    return MLPSpec(
        name=check_name(name, source)
        if name is not None
        else "mlp_" + "_".join(str(w) for w in checked),
        widths=checked,
        activations=acts,
        permute=check_choice(permute, PERMUTE_CHOICES, "permute", source),
        scaling=check_choice(scaling, SCALING_CHOICES, "scaling", source),
        source=source,
    )


def spec_from_mapping(
    data: Mapping[str, Any], where: str, default_name: str
) -> MLPSpec | TorchSpec:
    """Build a spec from a parsed YAML/JSON mapping (``architecture: mlp`` or ``torch``)."""
    architecture = data.get("architecture", "mlp")
    check_choice(architecture, ("mlp", "torch"), "architecture", where)
    if architecture == "torch":
        return torch_spec_from_mapping(data, where, default_name)
    unknown = sorted((key for key in data if key not in _FIELDS), key=str)
    if unknown:
        raise SpecError(
            f"unknown field {str(unknown[0])!r} (valid fields: {', '.join(_FIELDS)})", where
        )
    if "widths" not in data:
        raise SpecError("field 'widths' is missing (an MLP spec needs its layer widths)", where)
    name = check_name(data.get("name", default_name), where)
    widths = _check_widths(data["widths"], where)
    activation = data.get("activation", "relu")
    return MLPSpec(
        name=name,
        widths=widths,
        activations=_check_activations(activation, len(widths) - 2, where),
        permute=check_choice(data.get("permute", "hidden"), PERMUTE_CHOICES, "permute", where),
        scaling=check_choice(data.get("scaling", "auto"), SCALING_CHOICES, "scaling", where),
        source=where,
    )


def load_spec(path: str | Path) -> MLPSpec | TorchSpec:
    """Read a YAML or JSON spec file."""
    file = Path(path)
    where = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read spec file ({exc.strerror or exc})", where) from None
    except UnicodeDecodeError:
        raise SpecError("spec file is not UTF-8 text", where) from None
    try:
        if file.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", where
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "cannot parse"
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SpecError(f"malformed YAML{at}: {problem}", where) from None
    if not isinstance(data, dict):
        raise SpecError(
            f"a spec must be a mapping of fields ({', '.join(_FIELDS)}), got {type(data).__name__}",
            where,
        )
    return spec_from_mapping(data, where, default_name=file.stem)


def parse_widths(text: str) -> list[int]:
    """Parse ``784,64,64,10`` for ``--mlp``."""
    widths: list[int] = []
    for index, part in enumerate(text.split(",")):
        part = part.strip()
        try:
            widths.append(int(part))
        except ValueError:
            raise SpecError(
                f"width {index} must be a positive integer, got {part!r}", "--mlp"
            ) from None
    return widths


def parse_activations(text: str) -> str | list[str]:
    """Parse ``relu`` or ``relu,tanh`` for ``--activation``."""
    parts = [part.strip() for part in text.split(",")]
    return parts[0] if len(parts) == 1 else parts
