"""Shared fixtures: derive and load generated layers for a spec, cached per test session."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
import torch
from torch import nn

from derive.frontend.spec import mlp_spec
from derive.pipeline import Derivation, derive, generate
from derive.verify.checklist import load_generated

# One thread per process, in subprocesses too: the tests' tensors are tiny, and torch's thread pool
# spinning against any other busy process on a 2-core machine made training tests up to 10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


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


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[Any, str, str]]:
    """``cli(*argv)`` runs ``nfn-derive`` in-process -> (exit code, stdout, stderr)."""
    from derive.cli.main import main

    def run(*argv: Any) -> tuple[Any, str, str]:
        capsys.readouterr()
        try:
            code: Any = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def check_one_line_error(code: Any, out: str, err: str, fragments: list[str]) -> None:
    """Exit code 2, one ``nfn-derive: error:`` line on stderr naming every fragment, no stdout."""
    assert code == 2, f"exit code {code!r}, stderr {err!r}"
    assert "Traceback" not in out and "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, f"stderr is not one line: {err!r}"
    assert err.startswith("nfn-derive: error: "), err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert out == ""


@pytest.fixture
def one_line_error() -> Callable[[Any, str, str, list[str]], None]:
    return check_one_line_error
