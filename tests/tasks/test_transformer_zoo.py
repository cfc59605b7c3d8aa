"""The transformer zoo: deterministic and cached, its records match its networks, every member
traces to the attention group (checked on the member itself in float64), transformed members
compute the same function, and the tiny setting runs the transformer task end to end."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from derive.pipeline import derive, verify
from derive.weightspace.model import Scaling
from nfn_runtime import apply_group_element, sample_group_element, weight_space_from_state_dicts
from nfn_tasks import zoo_build
from nfn_tasks.data import digits, stratified_split
from nfn_tasks.experiment import SETTINGS, run_experiment
from nfn_tasks.models import ModelConfig, build_model, calibrate, weight_space_layout
from nfn_tasks.robustness import (
    function_change,
    group_layout,
    held_out_networks,
    transform_test_networks,
    transformations,
)
from nfn_tasks.train import TrainConfig, predict, task_data, zoo_weight_space
from nfn_tasks.zoo import TransformerZooSettings, Zoo, zoo_bytes
from nfn_tasks.zoo_build import build_zoo, cache_path, generate_zoo
from nfn_tasks.zoo_transformer import TRANSFORMER_FACTORIES, DigitTransformer, transformer_forward

TINY = TransformerZooSettings.tiny()
FEW = dataclasses.replace(TINY, networks=4, epochs=(1, 1))


def test_same_settings_same_bytes_and_the_cache(tmp_path: Path, monkeypatch) -> None:
    first = zoo_bytes(generate_zoo(FEW))
    assert first == zoo_bytes(generate_zoo(FEW))
    assert zoo_bytes(generate_zoo(dataclasses.replace(FEW, seed=1))) != first
    built = build_zoo(FEW, tmp_path)
    path = cache_path(FEW, tmp_path)
    assert path.read_bytes() == zoo_bytes(built) == first
    assert path.name.startswith("transformer-")

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(zoo_build, "generate_zoo", fail)
    assert zoo_bytes(build_zoo(FEW, tmp_path)) == first


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="norm/attention"):
        generate_zoo(dataclasses.replace(FEW, norm="post"))
    with pytest.raises(ValueError, match="at least 2"):
        generate_zoo(dataclasses.replace(FEW, networks=1))


def test_records_match_the_networks(transformer_zoo: Zoo) -> None:
    zoo = transformer_zoo
    assert zoo.kind == "transformer" and len(zoo) == TINY.networks
    assert zoo.architecture == "nfn_tasks.zoo_transformer:digit_transformer"
    images, labels = digits()
    _, test = stratified_split(labels, TINY.test_images, TINY.seed)
    for index in (0, 5, len(zoo) - 1):
        network = zoo.network(index)
        assert isinstance(network.attn, torch.nn.MultiheadAttention)
        with torch.no_grad():
            accuracy = (network(images[test]).argmax(1) == labels[test]).double().mean()
        assert float(accuracy) == pytest.approx(float(zoo.targets[index]), abs=1e-6)
    for key in ("lr", "weight_decay", "init_scale", "train_fraction"):
        assert float(zoo.info[key].double().std()) > 0, key
    assert float(zoo.targets.std()) > 0.01


@pytest.mark.parametrize("norm, attention", list(TRANSFORMER_FACTORIES))
def test_the_batched_forward_is_the_module(norm: str, attention: str) -> None:
    torch.manual_seed(0)
    networks = [DigitTransformer(norm=norm, attention=attention).eval() for _ in range(3)]
    for network in networks:
        torch.nn.init.normal_(network.pos)
    params = {
        key: torch.stack([n.state_dict()[key] for n in networks])
        for key in networks[0].state_dict()
    }
    images, _ = digits()
    batched = transformer_forward(params, images[:20], norm=norm, attention=attention)
    with torch.no_grad():
        for index, network in enumerate(networks):
            torch.testing.assert_close(batched[index], network(images[:20]), atol=1e-5, rtol=1e-5)


def test_a_member_traces_to_the_attention_group_and_passes_the_network_check(
    transformer_zoo: Zoo,
) -> None:
    member = transformer_zoo.network(3).double()
    derivation = derive(member, transformer_zoo.input_shape, name="transformer")
    hidden = [s for s in derivation.space.spaces if s.role == "hidden"]
    scalings = sorted(s.scaling.value for s in hidden)
    # the residual stream (LayerNorm: permutations only), 2 heads x (query/key, value), the MLP
    assert scalings == ["none", "nonzero", "nonzero", "nonzero", "nonzero", "positive"]
    assert all(s.permuted for s in hidden)
    heads = [s for s in hidden if s.scaling is Scaling.NONZERO]
    assert all(s.size == 8 for s in heads)
    report = verify(derivation, samples=2, only=["network"])
    assert report.ok, report.text()


def test_every_member_reads_into_the_traced_layout(transformer_zoo: Zoo) -> None:
    """Every network loads into the traced weight space and back: the zoo's stacked weights,
    sliced per head, are the tensors of each member's own state dict."""
    zoo = transformer_zoo
    layout = weight_space_layout(zoo.architecture, zoo.input_shape)
    stacked = zoo_weight_space(zoo, layout)
    members = weight_space_from_state_dicts(
        [zoo.network(i).state_dict() for i in range(len(zoo))], layout
    )
    for a, b in zip(stacked.tensors(), members.tensors()):
        assert torch.equal(a, b)


def test_large_per_head_scalings_keep_the_function(transformer_zoo: Zoo) -> None:
    data = task_data(transformer_zoo, "generalization", TrainConfig(epochs=1, batch_size=8))
    layout = group_layout(data)
    strongest = transformations(transformer_zoo.activation, transformer_zoo.kind)[-1]
    assert strongest.scale_range == (1.0, 1e4) and strongest.signed
    moved = transform_test_networks(data, strongest, seed=3)
    assert function_change(data, moved) < 1e-9
    # the query/key and value spaces did get large scales of both signs
    g = sample_group_element(layout, torch.Generator().manual_seed(0), (1e3, 1e4))
    nonzero = [s.name for s in layout.spaces if s.scaling == "nonzero"]
    assert len(nonzero) == 4
    scales = torch.cat([g.scales[name] for name in nonzero])
    assert float(scales.abs().min()) >= 1e3 and bool((scales < 0).any())
    one = held_out_networks(data).map(lambda t: t[:1])
    transformed = apply_group_element(one, layout, g)
    assert max(float((a - b).abs().max()) for a, b in zip(one.tensors(), transformed.tensors())) > 1


@pytest.mark.parametrize(
    "kind, invariant",
    [("monomial", True), ("hnp", False), ("np", False), ("statnn", False), ("mlp", False)],
)
def test_only_the_generated_monomial_model_is_invariant(transformer_zoo: Zoo, kind: str,
                                                        invariant: bool) -> None:  # fmt: skip
    data = task_data(transformer_zoo, "generalization", TrainConfig(epochs=1, batch_size=8))
    moved = transform_test_networks(data, transformations("relu", "transformer")[-1], seed=2)
    torch.manual_seed(0)
    model = build_model(kind, transformer_zoo.architecture, transformer_zoo.input_shape,
                        data.weights.map(lambda t: t[:2]), data.outputs,
                        ModelConfig(channels=3, layers=2, invariant_dim=6, head_hidden=8))  # fmt: skip
    calibrate(model, data.weights.map(lambda t: t.index_select(0, data.train)))
    model = model.double().eval()
    index = torch.arange(len(data.test))
    before, after = predict(model, held_out_networks(data), index), predict(model, moved, index)
    change = float((after - before).abs().max() / before.abs().max())
    assert change < 1e-9 if invariant else change > 1e-4


def test_the_tiny_setting_runs_the_transformer_task(transformer_zoo: Zoo, zoo_cache: Path,
                                                     tmp_path: Path) -> None:  # fmt: skip
    settings = dataclasses.replace(SETTINGS["tiny"], tasks=("generalization-transformer",))
    assert "generalization-transformer" in SETTINGS["tiny"].tasks
    results = run_experiment(settings, tmp_path, zoo_cache, progress=False, log=lambda _: None)
    task = results["tasks"]["generalization-transformer"]
    assert task["metric"] == "kendall_tau" and task["zoo_size"] == TINY.networks
    assert all(t["max_function_change"] < 1e-9 for t in task["transformations"])
    assert set(task["excluded"]) == {"polynomial", "nfn-hnp", "nfn-np"}
    assert set(task["models"]) == {"hnp", "np", "monomial", "statnn", "mlp"}
    monomial = task["models"]["monomial"]
    for label in ("k=1", "k=4"):
        assert monomial["transformed"][label]["mean"] == pytest.approx(
            monomial["clean_float64"]["mean"], abs=1e-9
        )
    table = (tmp_path / "results.md").read_text()
    assert "**generalization-transformer**" in table
    assert "`nfn-hnp` not applicable: the nfn package" in table
    assert (tmp_path / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_zoo_command(cli, transformer_zoo: Zoo, zoo_cache: Path) -> None:
    code, out, _ = cli("zoo", "generalization-transformer", "--setting", "tiny", "--cache-dir",
                       zoo_cache, "--no-progress")  # fmt: skip
    assert code == 0
    assert "16 networks of nfn_tasks.zoo_transformer:digit_transformer (transformer zoo)" in out
    assert "test accuracy: min" in out
