"""The README's commands and Python example stay true."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from derive.cli import main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_the_two_setup_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.S)
    assert first_block is not None
    lines = [line.split("#")[0].strip() for line in first_block.group(1).strip().splitlines()]
    assert lines == ["make demo", "make test"]
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    assert "demo: $(STAMP)" in makefile and "test: $(STAMP)" in makefile
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "make test" in ci


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
    assert (
        "class TanhMlpLinear" in namespace["source"] or "Linear(nn.Module)" in namespace["source"]
    )
