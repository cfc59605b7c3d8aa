"""The size budget of the linear layer: which matmuls are factored, at what rank, and that the
factored layers stay exactly equivariant (float64) and sensitive to transforms outside the group."""

from __future__ import annotations

import json
import re

import pytest
import torch

from derive.cli.main import main
from derive.errors import GenerationError, SpecError
from derive.frontend.spec import load_spec, mlp_spec
from derive.layers.kind import LayerOptions, generate, generated_class
from derive.layers.linear import budget_choice
from derive.pipeline import derive
from derive.plan import budget as budget_module
from derive.plan.budget import (
    DENSE_UP_TO,
    MIN_RANK,
    apply_budget,
    choose_budget,
    default_dim,
    layer_parameters,
    parse_budget,
)
from derive.verify.checklist import VerifyReport, sensitivity_check
from derive.verify.reference import ReferenceLinear
from nfn_runtime import equivariance_error

SPECS = "generated/specs"


def _mlp(widths, activation="relu", **options):
    return derive(mlp_spec(widths, activation, **options))


def test_parse_budget():
    assert parse_budget("dense") == "dense"
    assert parse_budget(" Default ") == "default"
    assert parse_budget("1_000") == 1000
    for bad in ("0", "-3", "3x", ""):
        with pytest.raises(SpecError, match="--budget: budget must be"):
            parse_budget(bad)


def test_a_budget_above_the_dense_dimension_keeps_every_matmul_dense():
    derivation = _mlp((200, 4, 3))
    choice = budget_choice(derivation, derivation.basis.dim)
    assert not choice.factored
    assert choice.kept_dim == choice.dense_dim == derivation.basis.dim
    assert apply_budget(derivation.linear_plan, choice) is derivation.linear_plan
    dense = budget_choice(derivation, "dense")
    assert dense.max_dim is None and not dense.factored


def test_the_rank_is_the_largest_within_the_budget():
    derivation = _mlp((200, 4, 3))
    choice = budget_choice(derivation, 6000)
    (op,) = choice.factored
    assert (op.out_factor, op.in_factor) == (201, 201)  # W1 and b1 over the input axis
    assert choice.kept_dim <= 6000
    # one more rank would not fit
    rest = choice.kept_dim - op.kept_dim
    assert rest + (op.rank + 1) * (op.out_factor + op.in_factor) > 6000
    assert op.dense_dim > DENSE_UP_TO and op.rank >= MIN_RANK


def test_an_explicit_budget_below_the_floor_is_refused_and_the_default_takes_the_floor():
    derivation = _mlp((784, 64, 64, 10))
    with pytest.raises(GenerationError, match="below the smallest layer"):
        budget_choice(derivation, 1000)
    choice = budget_choice(derivation, "default")
    network = derivation.space.to_layout().num_params()
    assert choice.max_dim == default_dim(network) == network // 64
    assert not choice.within and choice.factored[0].rank == MIN_RANK
    assert any("floor" in line for line in choice.lines())


def test_small_weight_spaces_stay_dense_by_default():
    """Every matmul of the small test networks is at most DENSE_UP_TO per channel pair."""
    for widths in ((3, 4, 2), (2, 3, 3, 2), (64, 32, 32, 10)):
        derivation = _mlp(widths)
        assert not budget_choice(derivation, "default").factored


def _forced(monkeypatch):
    """Factor every matmul where rank 1 saves coefficients."""
    monkeypatch.setattr(budget_module, "DENSE_UP_TO", 0)
    monkeypatch.setattr(budget_module, "MIN_RANK", 1)


def _small_budget(derivation) -> int:
    """A quarter of the dense dimension, or the floor where that is below it."""
    ops = derivation.linear_plan.ops
    dense = sum(op.out_factor * op.in_factor for op in ops)
    return max(dense // 4, budget_module._cost(ops, 1))


CASES = {
    "mlp-relu": lambda: _mlp((6, 4, 3, 5)),
    "mlp-tanh-np": lambda: _mlp((5, 3, 4), "tanh", permute="all"),
    "small-cnn": lambda: derive(load_spec(f"{SPECS}/small_cnn.yaml")),
    "flatten-cnn": lambda: derive(load_spec(f"{SPECS}/flatten_cnn.yaml")),
    "residual-mlp": lambda: derive(load_spec(f"{SPECS}/residual_mlp.yaml")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_factored_layers_are_equivariant_sensitive_and_sized_as_promised(monkeypatch, name):
    _forced(monkeypatch)
    derivation = CASES[name]()
    plan = derivation.linear_plan
    choice = choose_budget(plan, _small_budget(derivation), 10**9)
    assert choice.factored, "the case must factor something"
    cls = generated_class(derivation, "linear", LayerOptions(budget=_small_budget(derivation)))
    layer = cls(2, 3)
    count = sum(p.numel() for p in layer.parameters())
    assert count == layer_parameters(apply_budget(plan, choice), 2, 3)
    layout = derivation.space.to_layout()
    generator = torch.Generator().manual_seed(0)
    error = equivariance_error(
        layer, layout, n_samples=3, channels=2, dtype=torch.float64, generator=generator
    )
    assert error <= 1e-10
    report = VerifyReport()
    reference = ReferenceLinear(derivation.basis, 2, 3)
    sensitivity_check(layout, layer, reference, "budget", report, generator)
    assert report.ok, report.text()


def test_every_code_path_of_a_factored_matmul_is_exercised(monkeypatch):
    """Across the cases above: channels-last / pooled F.linear, channels-first bmm, and a
    factored matmul carrying the constants (bias)."""
    _forced(monkeypatch)
    sources = []
    for make in CASES.values():
        derivation = make()
        sources.append(generate(derivation, "linear", budget=_small_budget(derivation)))
    text = "\n".join(sources)
    assert re.search(r"F\.linear\(F\.linear\(\w+, self\.\w+_down\), self\.\w+_up\)", text)
    assert re.search(r"F\.linear\(\w+, self\.\w+_down\), self\.\w+_up, self\.\w+_bias", text)
    assert re.search(r"torch\.bmm\(\s*self\.\w+_up\.expand\(batch, -1, -1\),\s*torch\.bmm", text)


def test_the_generated_header_says_how_to_regenerate_with_the_budget():
    derivation = _mlp((200, 4, 3))
    source = generate(derivation, "linear", budget=6000)
    assert "--budget 6000 -o FILE" in source
    assert "Size budget" in source and "rank 14 x max(c_in, c_out)" in source
    dense = generate(derivation, "linear", budget="dense")
    assert "Size budget" not in dense and "--budget dense -o FILE" in dense


def test_cli_budget(tmp_path, capsys):
    out = tmp_path / "layer.py"
    assert main(["generate", "--mlp", "200,4,3", "--budget", "6000", "-o", str(out)]) == 0
    assert "mix_h1_down" in out.read_text()
    capsys.readouterr()
    bad = tmp_path / "bad.py"
    assert main(["generate", "--mlp", "784,64,10", "--budget", "100", "-o", str(bad)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "below the smallest layer" in err
    assert not bad.exists()
    assert main(["inspect", "--mlp", "200,4,3", "--budget", "6000"]) == 0
    text = capsys.readouterr().out
    assert "dimension 40,419 -> 5,646" in text and "writes W1, b1; reads W1, b1" in text
    assert main(["inspect", "--mlp", "200,4,3", "--budget", "6000", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["budget"]
    assert data["dense_dim"] == 40419 and data["kept_dim"] == 5646
    assert data["factored"][0]["rank_per_channel"] == 14
