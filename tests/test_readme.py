"""The README's commands and Python example stay true."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from derive.cli.main import main
from derive.verify.checklist import load_generated

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _check_linear_source(namespace: dict[str, object], class_name: str) -> None:
    """The example's ``source`` is the linear layer of its derivation ``d``: one class, named
    after the network, with one parameter per basis map and per constant (one channel)."""
    source, derivation = namespace["source"], namespace["d"]
    assert isinstance(source, str)
    classes = [node.name for node in ast.parse(source).body if isinstance(node, ast.ClassDef)]
    assert classes == [class_name]
    module = load_generated(source, "readme_example")
    assert module.__all__[0] == class_name
    layer = getattr(module, class_name)(1, 1)
    parameters = sum(p.numel() for p in layer.parameters())
    assert parameters == derivation.basis.dim + derivation.basis.constant_dim


def test_readme_opens_with_the_two_setup_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.S)
    assert first_block is not None
    lines = [line.split("#")[0].strip() for line in first_block.group(1).strip().splitlines()]
    assert lines == ["make demo", "make test"]
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    assert "demo: $(STAMP)" in makefile and "test: $(STAMP)" in makefile
    assert 'pytest -q -m "not slow"' in makefile and "test-all: $(STAMP)" in makefile
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "make lint" in ci and "make test" in ci


def test_generated_module_example_runs(tmp_path, monkeypatch):
    assert (
        main(
            [
                "generate",
                "--mlp",
                "784,64,64,10",
                "--name",
                "relu_mlp",
                "--layer",
                "linear",
                "-o",
                str(tmp_path / "relu_linear.py"),
            ]
        )
        == 0
    )
    example = next(block for block in _python_blocks() if "from relu_linear import" in block)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict[str, object] = {}
    exec(compile(example, "README example", "exec"), namespace)
    out = namespace["out"]
    assert out.weights[0].shape == (8, 16, 64, 784)
    sys.modules.pop("relu_linear", None)


def test_pipeline_example_runs():
    example = next(block for block in _python_blocks() if "from derive.pipeline import" in block)
    namespace: dict[str, object] = {}
    exec(compile(example, "README pipeline example", "exec"), namespace)
    _check_linear_source(namespace, "Mlp784646410Linear")


def test_traced_module_example_runs():
    example = next(block for block in _python_blocks() if "import SmallCNN" in block)
    namespace: dict[str, object] = {}
    exec(compile(example, "README traced example", "exec"), namespace)
    _check_linear_source(namespace, "SmallCNNLinear")
    derivation = namespace["d"]
    assert {s.scaling.value for s in derivation.space.spaces} == {"none", "sign"}


def test_readme_torch_commands_run(capsys, tmp_path):
    block = re.search(r"```bash\n(nfn-derive inspect  --torch.*?)```", README, flags=re.S)
    assert block is not None
    ran = []
    for line in block.group(1).strip().splitlines():
        argv = line.split()[1:]
        if argv[0] == "verify":
            continue  # the same checks run in tests/generated (test_traced_layers)
        if argv[0] == "generate":
            argv[argv.index("-o") + 1] = str(tmp_path / "layer.py")
        assert main(argv) == 0
        ran.append(argv[0])
    assert ran == ["inspect", "generate"]
    assert (tmp_path / "layer.py").exists()
    capsys.readouterr()


def test_readme_shows_the_measured_experiment():
    root = Path(__file__).resolve().parent.parent
    table = (root / "results" / "small" / "results.md").read_text().strip()
    assert table in README
    assert (root / "results" / "small" / "robustness.png").exists()
    assert "](results/small/robustness.png)" in README
    makefile = (root / "Makefile").read_text()
    assert "nfn-derive experiment --setting small --out results/small" in makefile
    assert "make results    # = nfn-derive experiment --setting small --out results/small" in README
