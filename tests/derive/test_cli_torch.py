"""The command line for traced PyTorch modules: --torch, --input-shape, torch spec files."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest
import torch

from nfn_runtime import assert_equivariant

CNN = ("--torch", "nfn_runtime.architectures:small_cnn", "--input-shape", "1,8,8")

USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, width=4):
            super().__init__()
            self.conv = nn.Conv2d(1, width, 3, padding=1)
            self.head = nn.Linear(width * 16, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.conv(x)).flatten(1))

    instance = Net()

    def broken():
        raise RuntimeError("no weights today")

    def not_a_module():
        return 42

    class Unsupported(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(4, 4)

        def forward(self, x):
            return self.rnn(x)[0]
    """
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "usernet.py").write_text(USER_MODULE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    import sys

    sys.modules.pop("usernet", None)


def test_inspect_table_shows_spaces_and_who_decided(cli):
    code, out, err = cli("inspect", *CNN)
    assert code == 0, err
    assert "torch module nfn_runtime.architectures:small_cnn, input 1x8x8" in out
    assert "relu (positively homogeneous) at ReLU at 'features.1'" in out
    assert "k3     3     no        none      fixed: kernel offsets" in out
    assert "W1      8x1x3x3  h1(+1) in(-1) k3(0) k3(0)" in out


def test_inspect_json(cli):
    code, out, _ = cli("inspect", *CNN, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["architecture"]["kind"] == "torch"
    assert data["architecture"]["input_shape"] == [1, 8, 8]
    assert [s["name"] for s in data["spaces"]] == ["in", "h1", "h2", "h3", "out", "k3"]
    tensors = {t["name"]: t for t in data["tensors"]}
    assert tensors["W1"]["axes"] == ["h1", "in", "k3", "k3"]
    assert tensors["W1"]["source_key"] == "features.0.weight"
    assert data["linear"]["dim"] == sum(data["linear"]["blocks"].values()) == 464


def test_generate_from_a_user_module_and_a_spec_file(cli, user_module):
    out_file = user_module / "layer.py"
    code, out, err = cli(
        "generate", "--torch", "usernet:instance", "--input-shape", "1,4,4", "-o", out_file
    )
    assert code == 0, err
    spec = importlib.util.spec_from_file_location("gen_usernet", out_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    layer = getattr(module, module.__all__[0])(2, 2)
    assert assert_equivariant(layer, module.LAYOUT, dtype=torch.float64, channels=2) <= 1e-10
    text = out_file.read_text()
    assert "--torch usernet:instance --input-shape 1,4,4" in text
    (user_module / "net.yaml").write_text(
        "name: wide\narchitecture: torch\nmodule: usernet:Net\narguments: {width: 5}\n"
        "input_shape: [1, 4, 4]\n",
        encoding="utf-8",
    )
    code, out, err = cli("inspect", user_module / "net.yaml", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["name"] == "wide"
    assert {s["name"]: s["size"] for s in data["spaces"]}["h1"] == 5
    assert data["architecture"]["arguments"] == {"width": 5}


BAD = {
    "no-input-shape": (("--torch", "usernet:Net"), ["--torch needs --input-shape"]),
    "input-shape-alone": (("--mlp", "2,3,2", "--input-shape", "2"), ["--input-shape applies"]),
    "bad-input-shape": (
        ("--torch", "usernet:Net", "--input-shape", "1,x"),
        ["--input-shape", "'x'"],
    ),
    "zero-input-shape": (("--torch", "usernet:Net", "--input-shape", "0,4"), ["positive integer"]),
    "torch-and-mlp": (
        ("--torch", "usernet:Net", "--mlp", "2,3", "--input-shape", "1"),
        ["give one architecture"],
    ),
    "activation-with-torch": (
        ("--torch", "usernet:Net", "--input-shape", "1,4,4", "--activation", "relu"),
        ["--activation applies to --mlp"],
    ),
    "no-colon": (
        ("--torch", "usernet.Net", "--input-shape", "1,4,4"),
        ["package.module:attribute"],
    ),
    "import-fails": (
        ("--torch", "nosuchmodule:Net", "--input-shape", "1"),
        ["cannot import 'nosuchmodule'"],
    ),
    "missing-attribute": (
        ("--torch", "usernet:Nope", "--input-shape", "1"),
        ["has no attribute 'Nope'"],
    ),
    "factory-raises": (("--torch", "usernet:broken", "--input-shape", "1"), ["no weights today"]),
    "not-a-module": (("--torch", "usernet:not_a_module", "--input-shape", "1"), ["returned a int"]),
    "unsupported-module": (
        ("--torch", "usernet:Unsupported", "--input-shape", "3,4"),
        ["GRU at 'rnn'", "not supported"],
    ),
    "wrong-shape": (
        ("--torch", "usernet:Net", "--input-shape", "2,4,4"),
        ["fails on an input of shape (2, 2, 4, 4)"],
    ),
}


@pytest.mark.parametrize("command", ["inspect", "generate", "verify"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_torch_input(cli, one_line_error, user_module, case, command):
    args, fragments = BAD[case]
    argv = [command, *args]
    out_dir = user_module / "out"
    out_dir.mkdir()
    if command == "generate":
        argv += ["-o", out_dir / "layer.py"]
    code, out, err = cli(*argv)
    one_line_error(code, out, err, fragments)
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("architecture: torch\ninput_shape: [2]\n", "field 'module' is missing"),
        ("architecture: torch\nmodule: a:b\n", "field 'input_shape' is missing"),
        ("architecture: torch\nmodule: a:b\ninput_shape: [0]\n", "input_shape[0]"),
        (
            "architecture: torch\nmodule: a:b\ninput_shape: [2]\nwidths: [2]\n",
            "unknown field 'widths'",
        ),
        ("architecture: torch\nmodule: [1]\ninput_shape: [2]\n", "field 'module'"),
        (
            "architecture: torch\nmodule: a:b\ninput_shape: [2]\narguments: [1]\n",
            "field 'arguments'",
        ),
        ("architecture: cnn\n", "'cnn' is not one of mlp, torch"),
    ],
    ids=[
        "no-module",
        "no-shape",
        "zero-shape",
        "mlp-field",
        "module-list",
        "arguments-list",
        "kind",
    ],
)
def test_bad_torch_spec_file(cli, one_line_error, tmp_path, text, fragment):
    path = tmp_path / "net.yaml"
    path.write_text(text, encoding="utf-8")
    code, out, err = cli("inspect", path)
    one_line_error(code, out, err, [fragment, "net.yaml"])
