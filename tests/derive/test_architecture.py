"""The shape of the code: stages as packages without import cycles, no hidden imports, the core
independent of the application, and the layer-kind registry."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest
import torch

import derive
from derive.errors import GenerationError
from derive.frontend.spec import mlp_spec
from derive.layers import LAYER_KINDS
from derive.layers.kind import LayerKind, LayerOptions, generate, layer_kind, register
from derive.pipeline import derive as run_derive
from nfn_runtime import WeightSpace, random_weight_space

ROOT = Path(derive.__file__).parent
#: the stages in pipeline order; a module may import its own stage or earlier ones
STAGES = (
    "errors",
    "naming",
    "weightspace",
    "symmetry",
    "frontend",
    "basis",
    "plan",
    "derivation",
    "codegen",
    "verify",
    "layers",
    "pipeline",
    "cli",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> tuple[set[str], list[str]]:
    """derive/nfn_tasks modules imported at module level, and imports nested in functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: set[str] = set()
    nested: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            + [f"{node.module}.{a.name}" for a in node.names if node.module]
        )
        ours = [n for n in names if n.split(".")[0] in ("derive", "nfn_tasks")]
        if not ours:
            continue
        if node.col_offset == 0:
            top.update(ours)
        elif not _under_type_checking(tree, node):
            nested.append(f"{_module_name(path)}: {ours[0]}")
    return top, nested


def _under_type_checking(tree: ast.Module, target: ast.AST) -> bool:
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            if any(target is child for child in ast.walk(node)):
                return True
    return False


def _sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _stage(module: str) -> int:
    return STAGES.index(module.split(".")[1])


def test_every_module_belongs_to_a_stage():
    for path in _sources():
        module = _module_name(path)
        if module != "derive":
            assert module.split(".")[1] in STAGES, module


def test_no_import_cycles_and_stages_only_import_earlier_ones():
    modules = {_module_name(p): p for p in _sources()}
    graph = nx.DiGraph()
    backwards = []
    for module, path in modules.items():
        graph.add_node(module)
        top, _ = _imports(path)
        for name in top:
            target = name if name in modules else name.rpartition(".")[0]
            if target in modules and target != module and target != "derive":
                graph.add_edge(module, target)
                if module != "derive" and _stage(target) > _stage(module):
                    backwards.append(f"{module} -> {target}")
    assert nx.is_directed_acyclic_graph(graph), nx.find_cycle(graph)
    assert not backwards, backwards


#: the command line imports the pipeline when a command runs, so that --help, --version and a
#: bare ``nfn-derive`` answer without importing torch (0.2 s instead of several seconds)
LAZY_IMPORTS_ALLOWED = {"derive.cli.main"}


def test_no_function_level_imports_of_project_modules():
    nested = [
        entry
        for path in _sources()
        if _module_name(path) not in LAZY_IMPORTS_ALLOWED
        for entry in _imports(path)[1]
    ]
    assert not nested, nested


def test_the_core_does_not_import_the_application():
    for path in _sources():
        top, _ = _imports(path)
        assert not [n for n in top if n.startswith("nfn_tasks")], path


def test_layer_kinds_are_registered_in_order():
    assert list(LAYER_KINDS) == ["linear", "invariant", "polynomial", "polynomial-invariant"]
    for name, kind in LAYER_KINDS.items():
        assert kind.name == name and kind.help and kind.template.endswith(".jinja")
        assert layer_kind(name) is kind


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(GenerationError, match="valid: linear, invariant, polynomial"):
        layer_kind("quadratic")


def test_a_kind_registers_once_and_renders_through_its_context():
    linear = LAYER_KINDS["linear"]
    with pytest.raises(ValueError, match="registered twice"):
        register(linear)
    derivation = run_derive(mlp_spec((2, 3, 2), "relu"))
    extra = LayerKind(
        name="linear-copy",
        help="the linear layer under another name",
        class_suffix="LinearCopy",
        template=linear.template,
        context=linear.context,
        reference=linear.reference,
        checks=linear.checks,
    )
    register(extra)
    try:
        source = generate(derivation, "linear-copy")
        assert "class Mlp232LinearCopy(nn.Module)" in source
        assert "--layer linear-copy" in source
        reference = extra.reference(derivation, LayerOptions(), 2, 3)
        assert sum(p.numel() for p in reference.parameters()) > 0
    finally:
        del LAYER_KINDS["linear-copy"]


def test_polynomial_kinds_say_why_they_do_not_apply():
    cnn = run_derive(mlp_spec((2, 3, 2), "relu", permute="all"))
    reason = LAYER_KINDS["polynomial"].applies(cnn)
    assert reason is not None and "fixed" in reason
    assert LAYER_KINDS["linear"].applies(cnn) is None


@pytest.mark.parametrize("name", ["linear", "invariant", "polynomial", "polynomial-invariant"])
def test_every_kind_builds_its_slow_reference(name):
    derivation = run_derive(mlp_spec((2, 3, 3, 2), "tanh"))
    kind = LAYER_KINDS[name]
    assert kind.applies(derivation) is None
    reference = kind.reference(derivation, LayerOptions(degree=2), 2, 3).double()
    layout = derivation.space.to_layout()
    x = random_weight_space(layout, 2, 2, torch.float64, torch.Generator().manual_seed(0))
    out = reference(x)
    values = out.tensors() if isinstance(out, WeightSpace) else (out,)
    assert all(torch.isfinite(v).all() for v in values)
