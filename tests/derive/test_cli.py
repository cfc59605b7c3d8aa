"""``nfn-derive``: inspect, generate and verify through ``derive.cli.main.main``, and one-line errors
with exit code 2 for every kind of bad input (a few end to end in a real subprocess)."""

from __future__ import annotations

import ast
import importlib.util
import inspect as pyinspect
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from torch import nn

from derive.cli.main import main

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process; argparse errors exit through SystemExit, which counts as a code."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def inspect_json(argv: list[str], capsys) -> dict:
    code, out, err = run(["inspect", *argv, "--json"], capsys)
    assert code == 0, err
    assert err == ""
    return json.loads(out)


def import_path(path: Path, module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(module_name, None)
    return module


SPEC_YAML = (
    "name: yaml_net\nwidths: [2, 3, 3, 2]\nactivation: tanh\npermute: hidden\nscaling: auto\n"
)


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "net.yaml"
    path.write_text(SPEC_YAML, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------


def test_inspect_prints_group_tensors_and_formulas(capsys):
    code, out, err = run(["inspect", "--mlp", "2,3,3,2"], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == (
        "Weight space mlp_2_3_3_2: mlp 2-3-3-2, activations relu,relu; permute hidden; scaling auto"
    )
    assert "Group (per neuron space)" in lines
    assert re.search(r"^\s+space\s+size\s+permuted\s+scaling\s+decided by$", out, re.MULTILINE)
    assert re.search(
        r"^\s+in\s+2\s+no\s+none\s+input space \(HNP setting: fixed\)", out, re.MULTILINE
    )
    assert re.search(r"^\s+h1\s+3\s+yes\s+positive\s+hidden space\b.*; relu", out, re.MULTILINE)
    assert re.search(r"^\s+h2\s+3\s+yes\s+positive\s+hidden space\b.*; relu", out, re.MULTILINE)
    assert re.search(r"^\s+out\s+2\s+no\s+none\s+output space", out, re.MULTILINE)
    assert "Tensors" in lines
    assert re.search(r"^\s+W1\s+3x2\s+h1\(\+1\) in\(-1\)(\s|$)", out, re.MULTILINE)
    assert re.search(r"^\s+b1\s+3\s+h1\(\+1\)(\s|$)", out, re.MULTILINE)
    assert re.search(r"^\s+W3\s+2x3\s+out\(\+1\) h2\(-1\)(\s|$)", out, re.MULTILINE)
    assert "Equivariant linear maps: dimension 19 per channel pair, 8 maps" in out
    assert "W2'[i,j] += theta * W2[i,j]" in out
    assert "W1'[i,x] += sum_u theta[x,u] * W1[i,u]" in out
    assert "Equivariant constants: dimension 2 per channel pair" in out
    assert "Invariant linear functionals: dimension 2 per channel pair" in out


def test_inspect_latex(capsys):
    code, out, err = run(["inspect", "--mlp", "2,3,3,2", "--latex"], capsys)
    assert code == 0 and err == ""
    assert r"\mathrel{+}=" in out
    assert "Group (per neuron space)" in out


def test_inspect_json_structure(capsys):
    data = inspect_json(["--mlp", "2,3,3,2"], capsys)
    assert data["name"] == "mlp_2_3_3_2"
    assert data["architecture"]["widths"] == [2, 3, 3, 2]
    assert data["architecture"]["activations"] == ["relu", "relu"]
    spaces = data["spaces"]
    assert [(s["name"], s["size"], s["permuted"], s["scaling"]) for s in spaces] == [
        ("in", 2, False, "none"),
        ("h1", 3, True, "positive"),
        ("h2", 3, True, "positive"),
        ("out", 2, False, "none"),
    ]
    tensors = {t["name"]: t for t in data["tensors"]}
    assert list(tensors) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    assert tensors["W1"]["shape"] == [3, 2] and tensors["W1"]["axes"] == ["h1", "in"]
    assert tensors["b1"]["shape"] == [3] and tensors["b1"]["axes"] == ["h1"]
    assert tensors["W2"]["shape"] == [3, 3] and tensors["W2"]["axes"] == ["h2", "h1"]
    assert tensors["W3"]["shape"] == [2, 3] and tensors["W3"]["axes"] == ["out", "h2"]
    assert tensors["b3"]["shape"] == [2] and tensors["b3"]["axes"] == ["out"]
    linear = data["linear"]
    assert linear["dim"] == 19
    assert isinstance(linear["blocks"], dict)
    names = [t["name"] for t in data["tensors"]]
    for key in linear["blocks"]:
        out_name, in_name = key.split("<-")
        assert out_name in names and in_name in names
    assert "W2<-b1" in linear["blocks"]
    assert len(linear["blocks"]) == len(names) ** 2


def test_inspect_json_latex_adds_latex_formulas(capsys):
    code, out, _ = run(["inspect", "--mlp", "2,3,2", "--json", "--latex"], capsys)
    assert code == 0
    maps = json.loads(out)["linear"]["maps"]
    assert maps and all(r"\mathrel{+}=" in m["latex"] for m in maps)


@pytest.mark.parametrize(
    ("argv", "dim"),
    [
        pytest.param(["--mlp", "2,3,3,2", "--scaling", "none"], 114, id="perm-only-114"),
        pytest.param(["--mlp", "2,3,3,2", "--activation", "relu"], 19, id="relu-positive-19"),
        pytest.param(["--mlp", "2,3,3,2", "--activation", "tanh"], 23, id="tanh-sign-23"),
        pytest.param(
            ["--mlp", "2,3,3,2", "--activation", "identity"], 19, id="identity-nonzero-19"
        ),
        pytest.param(
            ["--mlp", "4,4,4,4", "--permute", "all", "--scaling", "none"],
            4 * 3**2 + 10 * 3 - 4,
            id="np-L3-62",
        ),
    ],
)
def test_documented_dimensions(capsys, argv, dim):
    data = inspect_json(argv, capsys)
    assert data["linear"]["dim"] == dim
    assert sum(data["linear"]["blocks"].values()) == data["linear"]["dim"]


def test_np_dimension_is_62_for_four_layers_of_four(capsys):
    assert (
        inspect_json(["--mlp", "4,4,4,4", "--permute", "all", "--scaling", "none"], capsys)[
            "linear"
        ]["dim"]
        == 62
    )


@pytest.mark.parametrize(("activation", "expected"), [("tanh", 2), ("relu", 0)])
def test_bias_to_last_weight_block(capsys, activation, expected):
    blocks = inspect_json(["--mlp", "2,3,3,2", "--activation", activation], capsys)["linear"][
        "blocks"
    ]
    assert blocks["W3<-b2"] == expected


def test_inspect_scaling_and_permute_options(capsys):
    data = inspect_json(["--mlp", "2,3,3,2", "--permute", "all", "--scaling", "sign"], capsys)
    assert [(s["permuted"], s["scaling"]) for s in data["spaces"]] == [
        (True, "none"),
        (True, "sign"),
        (True, "sign"),
        (True, "none"),
    ]


def test_per_layer_activation_list(capsys):
    data = inspect_json(["--mlp", "2,3,3,2", "--activation", "relu,tanh"], capsys)
    assert data["architecture"]["activations"] == ["relu", "tanh"]
    assert [s["scaling"] for s in data["spaces"]] == ["none", "positive", "sign", "none"]


# ---------------------------------------------------------------------------------------------
# Spec files and overrides
# ---------------------------------------------------------------------------------------------


def test_spec_file_same_as_mlp(capsys, spec_file):
    from_file = inspect_json([spec_file], capsys)
    from_mlp = inspect_json(
        ["--mlp", "2,3,3,2", "--activation", "tanh", "--name", "yaml_net"], capsys
    )
    assert from_file == from_mlp
    assert from_file["name"] == "yaml_net"
    code, table_file, _ = run(["inspect", spec_file], capsys)
    code2, table_mlp, _ = run(
        ["inspect", "--mlp", "2,3,3,2", "--activation", "tanh", "--name", "yaml_net"], capsys
    )
    assert code == code2 == 0
    assert table_file == table_mlp


def test_spec_file_generate_same_as_mlp(capsys, spec_file, tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    assert run(["generate", spec_file, "-o", a], capsys)[0] == 0
    assert (
        run(
            ["generate", "--mlp", "2,3,3,2", "--activation", "tanh", "--name", "yaml_net", "-o", b],
            capsys,
        )[0]
        == 0
    )
    assert a.read_text() == b.read_text()


def test_spec_file_overrides(capsys, spec_file):
    data = inspect_json(
        [spec_file, "--permute", "all", "--scaling", "none", "--name", "renamed"], capsys
    )
    assert data["name"] == "renamed"
    assert data["architecture"]["permute"] == "all"
    assert data["architecture"]["scaling"] == "none"
    assert data["architecture"]["activations"] == ["tanh", "tanh"]
    assert [(s["permuted"], s["scaling"]) for s in data["spaces"]] == [(True, "none")] * 4
    # without overrides the file's own settings hold
    data = inspect_json([spec_file], capsys)
    assert [(s["permuted"], s["scaling"]) for s in data["spaces"]] == [
        (False, "none"),
        (True, "sign"),
        (True, "sign"),
        (False, "none"),
    ]


def test_spec_file_verify(capsys, tmp_path):
    small = tmp_path / "small.yaml"
    small.write_text("widths: [2, 3, 2]\nactivation: tanh\n", encoding="utf-8")
    code, out, err = run(["verify", small, "--scaling", "none", "--samples", "1"], capsys)
    assert code == 0, out + err
    assert out.startswith("Verifying the generated layers of small (mlp 2-3-2, activations tanh)")
    assert "all checks passed" in out


# ---------------------------------------------------------------------------------------------
# generate and verify
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["linear", "invariant"])
def test_generate_writes_importable_module(capsys, tmp_path, layer):
    output = tmp_path / f"gen_{layer}.py"
    code, out, err = run(
        ["generate", "--mlp", "2,3,3,2", "--activation", "tanh", "--layer", layer, "-o", output],
        capsys,
    )
    assert code == 0 and err == ""
    assert out.startswith(f"wrote {output} ({layer} layer for mlp_2_3_3_2")
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name]  # no temp file left
    source = output.read_text(encoding="utf-8")
    assert "from nfn_runtime import" in source
    module = import_path(output, f"_nfn_cli_test_{layer}")
    assert module.__all__[0] == ("Mlp2332Linear" if layer == "linear" else "Mlp2332Invariant")
    cls = getattr(module, module.__all__[0])
    assert isinstance(cls, type) and issubclass(cls, nn.Module)
    params = list(pyinspect.signature(cls.__init__).parameters)
    assert params[:3] == ["self", "in_channels", "out_channels"]
    layer_module = cls(2, 3)
    assert layer_module.in_channels == 2 and layer_module.out_channels == 3
    assert sum(p.numel() for p in layer_module.parameters()) > 0


def test_generate_default_layer_is_linear_and_overwrites(capsys, tmp_path):
    output = tmp_path / "model.py"
    output.write_text("old content\n")
    code, _, _ = run(["generate", "--mlp", "2,3,2", "-o", output], capsys)
    assert code == 0
    text = output.read_text()
    assert "old content" not in text
    assert '__all__ = ["Mlp232Linear", "LAYOUT"]' in text


def test_generate_relative_output_in_cwd(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["generate", "--mlp", "2,3,2", "-o", "rel.py"], capsys)
    assert code == 0, err
    assert (tmp_path / "rel.py").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel.py"]


def test_verify_tanh_passes(capsys):
    code, out, err = run(["verify", "--mlp", "2,3,3,2", "--activation", "tanh"], capsys)
    assert code == 0, out + err
    assert err == ""
    assert out.startswith(
        "Verifying the generated layers of mlp_2_3_3_2 (mlp 2-3-3-2, activations tanh,tanh)"
    )
    assert "all checks passed" in out
    assert "FAIL" not in out


# ---------------------------------------------------------------------------------------------
# Bad input: exit code 2, one line on stderr, no traceback, no output file
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    args: tuple[str, ...]
    fragments: tuple[str, ...]
    commands: tuple[str, ...] = ("inspect", "generate", "verify")
    with_output: bool = True  # append ``-o OUT/model.py`` for generate
    files: dict[str, str] = field(default_factory=dict)


BAD_CASES = {
    "unknown-activation": Bad(
        ("--mlp", "2,3,3,2", "--activation", "bogus"), ("'bogus'", "hidden layer 1", "valid:")
    ),
    "unknown-activation-in-list": Bad(
        ("--mlp", "2,3,3,2", "--activation", "relu,nope"), ("'nope'", "hidden layer 2")
    ),
    "width-zero": Bad(("--mlp", "2,0,2"), ("widths[1]", "got 0")),
    "width-negative": Bad(("--mlp", "2,-3,2"), ("widths[1]", "got -3")),
    "width-not-a-number": Bad(("--mlp", "2,x,2"), ("--mlp", "'x'")),
    "width-float": Bad(("--mlp", "2,3.5,2"), ("--mlp", "'3.5'")),
    "single-width": Bad(("--mlp", "5"), ("--mlp", "at least two widths")),
    "wrong-activation-count": Bad(
        ("--mlp", "2,3,3,2", "--activation", "relu,tanh,relu"), ("3 activations", "2 hidden layers")
    ),
    "unknown-option": Bad(("--mlp", "2,3,2", "--bogus"), ("--bogus",)),
    "unknown-permute": Bad(("--mlp", "2,3,2", "--permute", "some"), ("--permute", "'some'")),
    "unknown-scaling": Bad(("--mlp", "2,3,2", "--scaling", "diag"), ("--scaling", "'diag'")),
    "malformed-yaml": Bad(
        ("{tmp}/bad.yaml",),
        ("bad.yaml", "malformed YAML", "line 2, column"),
        files={"bad.yaml": "widths: [2, 3\nactivation: relu\n"},
    ),
    "invalid-field-in-yaml": Bad(
        ("{tmp}/bad.yaml",), ("bad.yaml", "widths[0]"), files={"bad.yaml": "widths: [0, 3]\n"}
    ),
    "missing-spec-file": Bad(("{tmp}/nope.yaml",), ("nope.yaml", "cannot read spec file")),
    "spec-file-and-mlp": Bad(
        ("{tmp}/ok.yaml", "--mlp", "2,3,2"),
        ("spec file", "--mlp", "give one architecture"),
        files={"ok.yaml": "widths: [2, 3, 2]\n"},
    ),
    "activation-with-spec-file": Bad(
        ("{tmp}/ok.yaml", "--activation", "tanh"),
        ("--activation", "spec file"),
        files={"ok.yaml": "widths: [2, 3, 2]\n"},
    ),
    "no-architecture": Bad((), ("no architecture", "--mlp")),
    "output-folder-missing": Bad(
        ("--mlp", "2,3,2", "-o", "{tmp}/nowhere/model.py"),
        ("-o", "nowhere", "does not exist"),
        ("generate",),
        with_output=False,
    ),
    "output-not-py": Bad(
        ("--mlp", "2,3,2", "-o", "{tmp}/out/model.txt"),
        ("-o", "model.txt", ".py"),
        ("generate",),
        with_output=False,
    ),
    "output-missing": Bad(("--mlp", "2,3,2"), ("-o/--output",), ("generate",), with_output=False),
    "unknown-layer": Bad(
        ("--mlp", "2,3,2", "--layer", "bogus"), ("--layer", "'bogus'"), ("generate",)
    ),
    "samples-zero": Bad(("--mlp", "2,3,2", "--samples", "0"), ("--samples", "0"), ("verify",)),
}

BAD_PARAMS = [
    pytest.param(name, command, id=f"{command}-{name}")
    for name, case in BAD_CASES.items()
    for command in case.commands
]


def _bad_argv(case: Bad, command: str, tmp_path: Path) -> list[str]:
    for filename, text in case.files.items():
        (tmp_path / filename).write_text(text, encoding="utf-8")
    (tmp_path / "out").mkdir(exist_ok=True)
    argv = [command, *(a.replace("{tmp}", str(tmp_path)) for a in case.args)]
    if command == "generate" and case.with_output:
        argv += ["-o", str(tmp_path / "out" / "model.py")]
    return argv


@pytest.mark.parametrize(("name", "command"), BAD_PARAMS)
def test_bad_input(capsys, one_line_error, tmp_path, name, command):
    case = BAD_CASES[name]
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = _bad_argv(case, command, tmp_path)
    code, out, err = run(argv, capsys)
    one_line_error(code, out, err, list(case.fragments))
    if command == "generate":
        assert list((tmp_path / "out").iterdir()) == [], "generate left a file in the output folder"
        assert not (tmp_path / "nowhere").exists()
        after = sorted(p.name for p in tmp_path.iterdir())
        assert after == sorted(set(before) | set(case.files) | {"out"})


def test_output_is_an_existing_folder(capsys, one_line_error, tmp_path):
    folder = tmp_path / "model.py"
    folder.mkdir()
    # regression: os.replace onto the folder used to escape as an IsADirectoryError traceback
    code, out, err = run(["generate", "--mlp", "2,3,2", "-o", folder], capsys)
    one_line_error(code, out, err, ["-o", "model.py", "folder"])
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--mlp", "2,3,2", "--name", ""], id="mlp-empty-name"),
        pytest.param(["{spec}", "--name", "  "], id="spec-file-blank-name"),
    ],
)
def test_empty_name_is_rejected(capsys, one_line_error, spec_file, argv):
    argv = [str(spec_file) if a == "{spec}" else a for a in argv]
    # regression: --name '' used to be accepted (the report printed "Weight space : mlp ...")
    code, out, err = run(["inspect", *argv], capsys)
    one_line_error(code, out, err, ["name", "non-empty string"])


# ---------------------------------------------------------------------------------------------
# End to end in a real subprocess. Each one pays for importing torch, so they are few, and a
# module-scoped autouse fixture starts them all before the first test of this file: they run
# while the in-process tests do, and the tests at the end of the file collect their results.
# ---------------------------------------------------------------------------------------------

SUBPROCESS_CASES = {
    "unknown-activation": (["inspect", "--mlp", "2,3,3,2", "--activation", "bogus"], "'bogus'"),
    "unknown-option": (
        ["generate", "--mlp", "2,3,2", "--bogus", "-o", "{tmp}/out/x.py"],
        "--bogus",
    ),
    "output-folder-missing": (
        ["generate", "--mlp", "2,3,2", "-o", "{tmp}/nowhere/x.py"],
        "nowhere",
    ),
}


@pytest.fixture(scope="module", autouse=True)
def _subprocesses(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    (tmp / "out").mkdir()
    procs = {}
    for name, (args, _) in SUBPROCESS_CASES.items():
        argv = [sys.executable, "-m", "derive.cli", *(a.replace("{tmp}", str(tmp)) for a in args)]
        procs[name] = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    results: dict[str, tuple[int, str, str]] = {}

    def result(name: str) -> tuple[int, str, str]:
        if name not in results:
            out, err = procs[name].communicate(timeout=120)
            results[name] = (procs[name].returncode, out, err)
        return results[name]

    yield tmp, result
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# ---------------------------------------------------------------------------------------------
# Sanitization of user-supplied names in generated code
# ---------------------------------------------------------------------------------------------

EVIL_NAME = 'evil"""; import os; os.system("x") #'
WEIRD_NAME = (
    "He said \"hi\" and 'bye' \\ back\\slash \\n\n"
    '"""\n'
    "import os\n"
    'os.system("echo pwned")  # Ünïcødé 日本 ✓\n'
    "x = 1  # injected line"
)
INJECTED_LINES = [
    "import os",
    'os.system("echo pwned")  # Ünïcødé 日本 ✓',
    "x = 1  # injected line",
]


def _check_sanitized(path: Path, layer: str) -> None:
    text = path.read_text(encoding="utf-8")
    compile(text, str(path), "exec")
    tree = ast.parse(text)
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    assert len(classes) == 1
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", classes[0]), classes[0]
    assert classes[0].endswith("Linear" if layer == "linear" else "Invariant")
    exported = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "__all__"
    )
    assert ast.literal_eval(exported)[0] == classes[0]
    assert "import os" not in text
    assert "os.system" not in text
    stripped = {line.strip() for line in text.splitlines()}
    for line in INJECTED_LINES:
        assert line.strip() not in stripped
    imports = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert "os" not in imports
    assert not any(
        isinstance(node, ast.Call) and ast.unparse(node.func) == "os.system"
        for node in ast.walk(tree)
    )


@pytest.mark.parametrize("layer", ["linear", "invariant"])
def test_evil_name_option_is_sanitized(capsys, tmp_path, layer):
    output = tmp_path / "evil.py"
    code, _, err = run(
        ["generate", "--mlp", "2,3,2", "--name", EVIL_NAME, "--layer", layer, "-o", output], capsys
    )
    assert code == 0, err
    _check_sanitized(output, layer)
    assert 'evil"""' not in output.read_text()


@pytest.mark.parametrize("layer", ["linear", "invariant"])
def test_weird_yaml_name_is_sanitized(capsys, tmp_path, layer):
    spec = tmp_path / "weird.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"name": WEIRD_NAME, "widths": [2, 3, 2], "activation": "tanh"}, allow_unicode=True
        ),
        encoding="utf-8",
    )
    output = tmp_path / "weird.py"
    code, _, err = run(["generate", spec, "--layer", layer, "-o", output], capsys)
    assert code == 0, err
    _check_sanitized(output, layer)
    text = output.read_text(encoding="utf-8")
    assert text.isascii()
    assert "\\ back" not in text


@pytest.mark.parametrize("name", list(SUBPROCESS_CASES))
def test_subprocess_exit_code_and_no_traceback(_subprocesses, one_line_error, name):
    tmp, result = _subprocesses
    code, out, err = result(name)
    one_line_error(code, out, err, [SUBPROCESS_CASES[name][1]])
    assert list((tmp / "out").iterdir()) == []
    assert not (tmp / "nowhere").exists()
