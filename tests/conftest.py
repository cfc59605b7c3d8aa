"""Shared fixtures: derive and load generated layers for a spec, cached per test session."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
import torch
from torch import nn

from derive.pipeline import Derivation, derive, generate
from derive.spec import mlp_spec
from derive.verify import load_generated


@cache
def _build(
    widths: tuple[int, ...], activation: Any, permute: str, scaling: str
) -> tuple[Derivation, type[nn.Module], type[nn.Module]]:
    spec = mlp_spec(widths, activation, permute=permute, scaling=scaling, name="case")
    derivation = derive(spec)
    classes = []
    for layer in ("linear", "invariant"):
        module = load_generated(generate(derivation, layer), f"case_{layer}")
        classes.append(getattr(module, module.__all__[0]))
    return derivation, classes[0], classes[1]


Builder = Callable[..., tuple[Derivation, type[nn.Module], type[nn.Module]]]


@pytest.fixture(scope="session")
def build() -> Builder:
    """``build(widths, activation="relu", permute="hidden", scaling="auto")`` ->
    (derivation, generated linear class, generated invariant class)."""

    def make(
        widths: tuple[int, ...],
        activation: Any = "relu",
        permute: str = "hidden",
        scaling: str = "auto",
    ) -> tuple[Derivation, type[nn.Module], type[nn.Module]]:
        act = tuple(activation) if isinstance(activation, list) else activation
        return _build(tuple(widths), act, permute, scaling)

    return make


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
