"""Generated code is device- and dtype-agnostic: nothing in it names a device or a floating
dtype, tensors created in ``forward`` take ``device=`` and ``dtype=`` from the input, and every
kind runs in float64, bfloat16 and float16 (close to its float64 result) and on the meta
device (same shapes and dtypes as on the CPU)."""

from __future__ import annotations

import ast
import copy
import inspect
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import nfn_runtime.canonical
import nfn_runtime.checks
from derive.cli.regenerate import GENERATED_DIR
from derive.frontend.spec import load_spec, mlp_spec
from derive.layers.kind import LAYER_KINDS, LayerOptions, generate, generated_class
from derive.pipeline import Derivation, derive
from nfn_runtime import WeightSpace, random_weight_space

NETWORKS = ("mlp-relu", "mlp-tanh", "cnn")
KINDS = tuple(LAYER_KINDS)
#: torch functions that create a tensor from nothing: in forward they need device= and dtype=
FACTORIES = {
    "zeros",
    "ones",
    "empty",
    "full",
    "arange",
    "linspace",
    "eye",
    "tensor",
    "as_tensor",
    "rand",
    "randn",
    "randint",
    "scalar_tensor",
}
DTYPES = {"float16", "float32", "float64", "bfloat16", "half", "float", "double"}
CASTS = {"cpu", "cuda", "double", "float", "half", "bfloat16"}
#: relative distance to the float64 result allowed per dtype (measured: <= 1.2e-2 and 1e-3)
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 5e-2, torch.float16: 1e-2}


@cache
def _derivation(network: str) -> Derivation:
    if network == "cnn":
        return derive(load_spec(Path(GENERATED_DIR) / "specs" / "small_cnn.yaml"))
    return derive(mlp_spec((3, 4, 4, 2), network.removeprefix("mlp-"), name="small"))


def _options(network: str, kind: str) -> LayerOptions:
    """MAGEP needs matrix weights: conv networks get the complete family (degree 2)."""
    if LAYER_KINDS[kind].applies(_derivation(network)) is None:
        return LayerOptions()
    return LayerOptions(family="complete", degree=2)


def violations(source: str, every_function: bool = False) -> list[str]:
    """Every place where ``source`` pins a device or a dtype; tensor factories are checked in
    ``forward`` (in every function with ``every_function``: runtime code called by it)."""
    found = []
    tree = ast.parse(source)
    forwards = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef) and (every_function or n.name == "forward")
    ]
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in ("cpu", "cuda", "meta"):
            found.append(f"line {node.lineno}: device literal {node.value!r}")
        if isinstance(node, ast.Attribute) and node.attr in DTYPES:
            if isinstance(node.value, ast.Name) and node.value.id == "torch":
                found.append(f"line {node.lineno}: dtype literal torch.{node.attr}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in CASTS and not node.args and not node.keywords:
                found.append(f"line {node.lineno}: cast .{node.func.attr}()")
    for function in forwards:
        for node in ast.walk(function):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "torch":
                if node.func.attr in FACTORIES:
                    given = {k.arg for k in node.keywords}
                    if not {"device", "dtype"} <= given:
                        found.append(
                            f"line {node.lineno}: torch.{node.func.attr} in forward without "
                            "device= and dtype="
                        )
    return found


def _runtime_sources() -> list[tuple[str, str]]:
    """The runtime functions generated code calls in ``forward``."""
    return [
        (module.__name__, inspect.getsource(module))
        for module in (nfn_runtime.canonical, nfn_runtime.checks)
    ]


def test_the_scan_finds_pinned_devices_and_dtypes():
    source = (
        "import torch\n"
        "class M:\n"
        "    def forward(self, x):\n"
        "        a = torch.zeros(3, device=x.device)\n"
        "        b = x.to(torch.float32).cpu()\n"
        '        return torch.ones_like(x, device="cpu")\n'
    )
    found = violations(source)
    assert len(found) == 4, found
    fine = "def forward(x):\n    return torch.zeros(3, device=x.device, dtype=x.dtype)\n"
    assert not violations(fine)
    assert violations(fine.replace(", dtype=x.dtype", "").replace("forward", "helper"), True)


@pytest.mark.parametrize("path", sorted(GENERATED_DIR.glob("*.py")), ids=lambda p: p.stem)
def test_checked_in_sources_pin_no_device_or_dtype(path):
    assert violations(path.read_text()) == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("network", NETWORKS)
def test_generated_sources_pin_no_device_or_dtype(network, kind):
    source = generate(_derivation(network), kind, _options(network, kind))
    assert violations(source) == []


@pytest.mark.parametrize(("name", "source"), _runtime_sources(), ids=lambda v: str(v)[:30])
def test_runtime_called_in_forward_pins_no_device_or_dtype(name, source):
    assert violations(source, every_function=True) == [], name


def _flat(out: WeightSpace | Tensor) -> tuple[Tensor, ...]:
    return (out,) if isinstance(out, Tensor) else out.tensors()


def _layer(network: str, kind: str) -> nn.Module:
    torch.manual_seed(0)
    return generated_class(_derivation(network), kind, _options(network, kind))(2, 3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("network", NETWORKS)
def test_runs_in_every_floating_dtype(network, kind):
    """float64 is the reference; float32, bfloat16 and float16 give outputs and input gradients
    of their own dtype, close to it."""
    layer = _layer(network, kind).double()
    layout = _derivation(network).space.to_layout()
    x64 = random_weight_space(layout, 3, 2, torch.float64, torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = _flat(layer(x64))
    for dtype, tolerance in TOLERANCE.items():
        x = x64.map(lambda t, dtype=dtype: t.to(dtype).requires_grad_())
        got = _flat(copy.deepcopy(layer).to(dtype)(x))
        torch.autograd.backward(got, [torch.ones_like(g) for g in got])
        for g, w in zip(got, want):
            assert g.dtype == dtype
            error = float((g.detach().double() - w).norm() / w.norm())
            assert error <= tolerance, (dtype, error)
        assert all(t.grad is not None and t.grad.dtype == dtype for t in x.tensors())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("network", NETWORKS)
def test_runs_on_the_meta_device(network, kind):
    """``module.to("meta")`` with meta inputs: the shapes and dtypes of a CPU run."""
    layer = _layer(network, kind)
    layout = _derivation(network).space.to_layout()
    x = random_weight_space(layout, 3, 2, torch.float32, torch.Generator().manual_seed(1))
    want = _flat(layer(x))
    got = _flat(layer.to("meta")(x.map(lambda t: t.to("meta"))))
    assert [(t.shape, t.dtype, t.device.type) for t in got] == [
        (t.shape, t.dtype, "meta") for t in want
    ]
