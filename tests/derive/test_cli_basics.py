"""What a new user meets first: ``--version``, a bare ``nfn-derive``, ``--help`` texts, ``--mlp``
typos, file permissions of generated modules, and commands discovered through entry points."""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from derive.cli.main import COMMAND_GROUP, DEFAULT_LAYER, LAYER_CHOICES, version
from derive.codegen.emit import write_atomic

ROOT = Path(__file__).resolve().parents[2]
BUILT_IN = ("inspect", "generate", "verify", "demo")
TASK_ENTRY_POINT = importlib.metadata.EntryPoint(
    name="tasks", value="nfn_tasks.commands:register", group=COMMAND_GROUP
)


class FakeEntryPoint:
    """Stands in for an installed entry point whose ``load()`` returns ``target``."""

    def __init__(self, name: str, target: Any, value: str = "fake.module:register") -> None:
        self.name, self.value, self.group = name, value, COMMAND_GROUP
        self._target = target

    def load(self) -> Any:
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch):
    """``entry_points(*eps)``: the CLI sees exactly these in its group (other groups unchanged)."""
    real = importlib.metadata.entry_points

    def install(*eps: Any) -> None:
        def fake(**kwargs: Any) -> Any:
            return list(eps) if kwargs.get("group") == COMMAND_GROUP else real(**kwargs)

        monkeypatch.setattr(importlib.metadata, "entry_points", fake)

    return install


def _hello_register(subparsers: Any) -> dict[str, Any]:
    hello = subparsers.add_parser("hello", help="say hello (a plug-in command)")
    hello.add_argument("--who", default="world")

    def handler(args: argparse.Namespace) -> int:
        print(f"hello {args.who}")
        return 0

    return {"hello": handler}


# ---------------------------------------------------------------------------------------------
# 1. --version
# ---------------------------------------------------------------------------------------------


def test_version_prints_name_and_installed_version(cli):
    code, out, err = cli("--version")
    assert code == 0 and err == ""
    assert out == f"nfn-derive {importlib.metadata.version('nfn-derive')}\n"
    assert re.fullmatch(r"nfn-derive \d+\.\d+\S*\n", out)


def test_version_falls_back_to_the_package(monkeypatch):
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    import derive

    monkeypatch.setattr(importlib.metadata, "version", missing)
    monkeypatch.setattr(derive, "__version__", "9.8.7", raising=False)
    assert version() == "9.8.7"


# ---------------------------------------------------------------------------------------------
# 2. a bare nfn-derive
# ---------------------------------------------------------------------------------------------


def test_bare_command_lists_commands_and_exits_2(cli, entry_points):
    entry_points(FakeEntryPoint("hello", _hello_register))
    code, out, err = cli()
    assert code == 2 and out == ""
    assert "required" not in err
    assert err.startswith("usage: nfn-derive [-h] [--version] COMMAND ...\n")
    for command in (*BUILT_IN, "hello"):
        assert re.search(rf"^\s+{command}\s+\S", err, re.MULTILINE), f"{command} not listed"
    assert "write a PyTorch module for one layer" in err
    assert "nfn-derive COMMAND --help" in err


# ---------------------------------------------------------------------------------------------
# 3. --layer: help from the one list of layer kinds, each of which generates
# ---------------------------------------------------------------------------------------------


def test_layer_choices_are_the_registered_kinds():
    from derive.pipeline import LAYER_KINDS

    assert tuple(LAYER_CHOICES) == tuple(LAYER_KINDS)
    assert DEFAULT_LAYER == "linear" and DEFAULT_LAYER in LAYER_CHOICES
    assert "bogus" not in LAYER_CHOICES


def test_layer_help_lists_kinds_and_default(cli):
    from derive.pipeline import LAYER_KINDS

    code, out, _ = cli("generate", "--help")
    assert code == 0
    help_text = " ".join(out.split())  # argparse wraps lines
    assert f"layer to generate: {', '.join(LAYER_KINDS)} (default linear)" in help_text


@pytest.mark.parametrize("layer", tuple(LAYER_CHOICES))
def test_every_layer_choice_generates(cli, tmp_path, layer):
    output = tmp_path / "layer.py"
    code, out, err = cli("generate", "--mlp", "2,3,2", "--layer", layer, "-o", output)
    assert code == 0, err
    assert out.startswith(f"wrote {output} ({layer} layer")
    compile(output.read_text(encoding="utf-8"), str(output), "exec")


def test_unknown_layer_names_the_choices(cli, one_line_error, tmp_path):
    code, out, err = cli("generate", "--mlp", "2,3,2", "--layer", "conv", "-o", tmp_path / "x.py")
    one_line_error(code, out, err, ["--layer", "'conv'", *LAYER_CHOICES])


# ---------------------------------------------------------------------------------------------
# 4. plain-text help
# ---------------------------------------------------------------------------------------------

RST = re.compile(r"``|:(?:func|class|mod|meth|data|attr|ref|obj):`")


def test_no_rst_markup_in_any_help(cli, entry_points):
    entry_points(TASK_ENTRY_POINT)
    code, top, _ = cli("--help")
    assert code == 0
    commands = re.findall(r"^ {4}(\w[\w-]*)\s", top, re.MULTILINE)
    assert set(commands) >= {*BUILT_IN, "zoo", "train", "experiment"}
    texts = {"nfn-derive --help": top}
    for command in commands:
        code, out, _ = cli(command, "--help")
        assert code == 0
        texts[f"nfn-derive {command} --help"] = out
    for where, text in texts.items():
        assert not RST.search(text), f"{where}: {RST.search(text)}"


# ---------------------------------------------------------------------------------------------
# 5. --mlp typos name the entry at fault
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("widths", "fragments"),
    [
        pytest.param(
            "784x64x10",
            [
                "--mlp: widths[0] must be a positive integer, got '784x64x10' "
                "(separate widths with commas, e.g. 784,64,10)"
            ],
            id="x-separated",
        ),
        pytest.param(
            "784-64-64-10", ["widths[0]", "e.g. 784,64,64,10"], id="dash-separated-as-in-prose"
        ),
        pytest.param("2,x,2", ["--mlp: widths[1] must be a positive integer, got 'x'"], id="x"),
        pytest.param("2,3.5,2", ["widths[1]", "'3.5'"], id="float"),
        pytest.param("2,,2", ["widths[1]", "got ''"], id="empty-entry"),
    ],
)
def test_mlp_typo_names_the_entry(cli, one_line_error, tmp_path, widths, fragments):
    code, out, err = cli("generate", "--mlp", widths, "-o", tmp_path / "x.py")
    one_line_error(code, out, err, fragments)
    assert "width 0" not in err
    assert ("separate widths" in err) == ("e.g." in " ".join(fragments))
    assert list(tmp_path.iterdir()) == []


def test_mlp_zero_width_still_reported_by_value(cli, one_line_error):
    code, out, err = cli("inspect", "--mlp", "784,64,0,10")
    one_line_error(code, out, err, ["widths[2]", "got 0"])


# ---------------------------------------------------------------------------------------------
# 6. inspect --json --latex: the JSON report carries each map's LaTeX formula
# ---------------------------------------------------------------------------------------------


def test_json_with_latex_adds_a_latex_formula_to_every_map(cli):
    code, plain, err = cli("inspect", "--mlp", "2,3,3,2", "--activation", "tanh", "--json")
    assert code == 0, err
    code, with_latex, err = cli(
        "inspect", "--mlp", "2,3,3,2", "--activation", "tanh", "--json", "--latex"
    )
    assert code == 0, err
    plain_data, latex_data = json.loads(plain), json.loads(with_latex)
    assert "latex" not in plain
    for section in ("linear", "constants", "invariants"):
        maps = latex_data[section]["maps"]
        assert maps and all(m["latex"].strip() for m in maps), section
        for m in maps:
            del m["latex"]
    assert latex_data == plain_data  # --latex adds the formulas and changes nothing else


# ---------------------------------------------------------------------------------------------
# 7. permissions of generated files
# ---------------------------------------------------------------------------------------------

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


@pytest.fixture
def umask():
    """``umask(mask)`` sets the process umask for this test."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@posix_only
@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_write_atomic_new_file_mode_follows_umask(tmp_path, umask, mask, mode):
    umask(mask)
    target = tmp_path / "layer.py"
    write_atomic(target, "x = 1\n")
    assert target.stat().st_mode & 0o777 == mode
    assert target.read_text() == "x = 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["layer.py"]  # no temporary file left


@posix_only
def test_write_atomic_keeps_the_mode_of_the_file_it_replaces(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "layer.py"
    target.write_text("old\n")
    target.chmod(0o640)
    write_atomic(target, "new\n")
    assert target.stat().st_mode & 0o777 == 0o640
    assert target.read_text() == "new\n"


def test_write_atomic_relative_path_and_no_leftover_on_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_atomic("rel.py", "y = 2\n")
    assert Path("rel.py").read_text() == "y = 2\n"
    (tmp_path / "folder.py").mkdir()
    with pytest.raises(OSError):
        write_atomic("folder.py", "z = 3\n")  # os.replace cannot replace a folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.py", "rel.py"]


@posix_only
def test_generated_module_is_world_readable(cli, tmp_path, umask):
    umask(0o022)
    output = tmp_path / "layer.py"
    code, _, err = cli("generate", "--mlp", "2,3,2", "-o", output)
    assert code == 0, err
    assert output.stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------------------------------
# 8. the demo's output folder is not for git
# ---------------------------------------------------------------------------------------------


def test_demo_folder_is_git_ignored():
    lines = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "nfn_demo/" in lines
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        check = subprocess.run(
            [git, "check-ignore", "-q", "nfn_demo/relu_mlp_linear.py"], cwd=ROOT, check=False
        )
        assert check.returncode == 0


# ---------------------------------------------------------------------------------------------
# 9. commands from entry points; derive never imports nfn_tasks
# ---------------------------------------------------------------------------------------------


def test_plugin_command_is_discovered_and_run(cli, entry_points):
    entry_points(FakeEntryPoint("hello", _hello_register))
    code, out, err = cli("hello", "--who", "nfn")
    assert (code, out, err) == (0, "hello nfn\n", "")
    code, out, _ = cli("--help")
    assert "say hello (a plug-in command)" in out


def test_task_commands_come_from_their_entry_point(cli, entry_points, one_line_error):
    entry_points(TASK_ENTRY_POINT)
    for command in ("zoo", "train", "experiment"):
        code, out, _ = cli(command, "--help")
        assert code == 0 and out.startswith(f"usage: nfn-derive {command}")
    code, out, err = cli("train", "--task", "inr", "--model", "hnp", "--epochs", "0")
    one_line_error(code, out, err, ["--epochs", "0"])


def test_without_entry_points_only_built_in_commands(cli, entry_points, one_line_error):
    entry_points()
    code, out, err = cli("zoo", "inr")
    one_line_error(code, out, err, ["'zoo'"])
    code, out, err = cli("inspect", "--mlp", "2,3,2", "--json")
    assert code == 0 and err == ""


@pytest.mark.parametrize(
    ("plugin", "fragment"),
    [
        pytest.param(ModuleNotFoundError("No module named 'gone'"), "'gone'", id="import-error"),
        pytest.param(lambda subparsers: None, "dict of command name", id="returns-none"),
        pytest.param(
            lambda subparsers: {"inspect": lambda args: 0}, "'inspect' exists", id="name-taken"
        ),
    ],
)
def test_broken_plugin_is_skipped_with_a_warning(cli, entry_points, plugin, fragment):
    entry_points(FakeEntryPoint("broken", plugin), FakeEntryPoint("hello", _hello_register))
    code, out, err = cli("hello")
    assert code == 0 and out == "hello world\n"
    assert err.count("\n") == 1 and err.startswith("nfn-derive: warning: ")
    assert "'broken'" in err and fragment in err
    code, out, _ = cli("inspect", "--mlp", "2,3,2", "--json")
    assert code == 0 and json.loads(out)["linear"]["dim"] > 0


def test_half_registered_plugin_command_fails_in_one_line(cli, entry_points):
    def half(subparsers: Any) -> dict[str, Any]:
        subparsers.add_parser("half")
        raise RuntimeError("register() crashed after adding 'half'")

    entry_points(FakeEntryPoint("half", half))
    code, out, err = cli("half")
    assert code == 2 and out == "" and "Traceback" not in err
    warning, error = err.splitlines()
    assert warning.startswith("nfn-derive: warning: ") and "crashed" in warning
    assert error == "nfn-derive: error: command 'half' is not available"


def test_register_adds_the_task_commands():
    from nfn_tasks.commands import register

    parser = argparse.ArgumentParser()
    handlers = register(parser.add_subparsers(dest="command"))
    assert sorted(handlers) == ["experiment", "train", "zoo"]
    assert all(callable(h) for h in handlers.values())
    assert parser.parse_args(["zoo", "inr"]).command == "zoo"


def test_derive_never_imports_nfn_tasks():
    offenders = []
    for path in sorted((ROOT / "derive").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name == "nfn_tasks" or name.startswith("nfn_tasks.") for name in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_pyproject_declares_the_task_entry_point():
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    group = data["project"].get("entry-points", {}).get(COMMAND_GROUP, {})
    assert group == {"tasks": "nfn_tasks.commands:register"}


def test_help_and_version_do_not_import_torch():
    # the layer-kind registry (and torch) is read only when a command needs it
    probe = (
        "import sys\n"
        "from derive.cli.main import main\n"
        "for argv in (['--version'], ['--help'], []):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "False", "nfn-derive --help now imports torch"


def test_python_dash_m_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "derive.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.startswith("nfn-derive ")
