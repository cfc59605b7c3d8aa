"""The command line for polynomial layers: inspect --degree, generate, verify, bad options."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from derive.cli.main import main
from nfn_runtime import WeightSpace, random_weight_space


def _run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_degree_json_lists_terms_with_output_degree_and_formula(capsys):
    code, out, _ = _run(capsys, "inspect", "--mlp", "2,3,3,2", "--degree", "2", "--json")
    assert code == 0
    data = json.loads(out)
    poly = data["polynomial"]
    assert poly["count"] == len(poly["terms"]) > 0
    for term in poly["terms"]:
        assert {"family", "output", "degree", "formula"} <= set(term)
        assert 2 <= term["degree"] <= 2
    families = {t["family"] for t in poly["terms"]}
    assert families == {"magep", "complete"}
    assert poly["families"]["complete"]["by_degree"]["2"] == {"terms": 13, "dimension": 48}
    lacking = poly["magep_lacks"]
    assert lacking["count"] == len(lacking["terms"]) == 9
    in_magep = [t for t in poly["terms"] if t.get("in_magep")]
    assert len(in_magep) == 13 - 9
    assert data["linear"]["dim"] == 19  # the linear report is still there


def test_inspect_degree_table_and_latex(capsys):
    code, out, _ = _run(
        capsys, "inspect", "--mlp", "2,3,3,2", "--activation", "tanh", "--degree", "3"
    )
    assert code == 0
    assert "Polynomial terms of degree 2..3" in out
    assert (
        "complete family: 195 terms (degree 2: 37 terms, dimension 113, degree 3: 158 terms" in out
    )
    assert "b2'[i] += mean_p theta * b1[p] * W2[i,p]" in out
    code, out, _ = _run(capsys, "inspect", "--mlp", "2,3,2", "--degree", "2", "--latex")
    assert code == 0 and r"\mathrel{+}=" in out


def test_inspect_counts_only_when_the_complete_family_explodes(capsys):
    args = ["inspect", "--mlp", "4,5,5,5,3", "--scaling", "none", "--degree", "2"]
    code, out, _ = _run(capsys, *args, "--max-terms", "100")
    assert code == 0
    assert "870 complete terms exceed --max-terms 100; counts only" in out


@pytest.mark.parametrize(
    ("layer", "extra", "returns"),
    [
        ("polynomial", [], "ws"),
        ("polynomial", ["--degree", "3"], "ws"),
        ("polynomial", ["--fixed-psi"], "ws"),
        ("polynomial", ["--family", "complete", "--degree", "2"], "ws"),
        ("polynomial-invariant", [], "tensor"),
        ("polynomial-invariant", ["--family", "complete", "--degree", "2"], "tensor"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
def test_generate_polynomial_layers(capsys, tmp_path, layer, extra, returns):
    path = tmp_path / "poly.py"
    code, out, _ = _run(
        capsys,
        "generate",
        "--mlp",
        "3,4,4,2",
        "--activation",
        "tanh",
        "--layer",
        layer,
        *extra,
        "-o",
        str(path),
    )
    assert code == 0 and "wrote" in out
    spec = importlib.util.spec_from_file_location("poly_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    layer_obj = getattr(module, module.__all__[0])(2, 3)
    y = layer_obj(random_weight_space(module.LAYOUT, 2, 2, torch.float32))
    if returns == "ws":
        assert isinstance(y, WeightSpace) and y.channels == 3
    else:
        assert y.shape == (2, 3)
    if "--fixed-psi" in extra:
        assert not any(n.startswith("psi_") for n, _ in layer_obj.named_parameters())


def test_verify_covers_polynomial_layers(capsys):
    code, out, _ = _run(capsys, "verify", "--mlp", "2,3,3,2", "--activation", "relu")
    assert code == 0
    assert "polynomial magep matches reference" in out
    assert "polynomial invariant (float64)" in out
    code, out, _ = _run(capsys, "verify", "--mlp", "2,3,2", "--family", "complete", "--degree", "2")
    assert code == 0
    assert "polynomial degree-2 completeness" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--degree", "0"], "--degree must be a positive integer"),
        (["--max-terms", "0"], "--max-terms must be a positive integer"),
        (
            ["--family", "complete", "--degree", "2", "--max-params", "10"],
            "more than the limit of 10",
        ),
        (["--permute", "all", "--scaling", "none"], "NP setting"),
    ],
    ids=["degree-0", "max-terms-0", "max-params", "magep-np"],
)
def test_bad_polynomial_options(capsys, tmp_path, args, message):
    path = tmp_path / "x.py"
    code, out, err = _run(
        capsys, "generate", "--mlp", "3,4,4,2", "--layer", "polynomial", *args, "-o", str(path)
    )
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("nfn-derive: error:") and message in err
    assert "Traceback" not in out + err
    assert not path.exists() and not list(tmp_path.iterdir())
