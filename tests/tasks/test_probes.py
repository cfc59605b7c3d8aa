"""Probe features on the INR task and on the CNN zoos: they are the networks' real hidden
activations (SIRENs at the pixel centres; each CNN channel's mean activation on training
digits), they move exactly as the hidden biases under the derived group (sign flips for sin and
tanh, positive scalings for ReLU, with permutations), the models that take them stay exactly
invariant (generated monomial / polynomial) or permutation-invariant (hnp, nfn-hnp, statnn),
and every model kind that takes them learns with them."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from nfn_runtime import (
    GroupElement,
    WeightSpace,
    apply_group_element,
    inverse_permutation,
    sample_group_element,
)
from nfn_tasks.data import digits, pixel_grid, stratified_split
from nfn_tasks.kinds import MODEL_KINDS
from nfn_tasks.models import (
    PROBELESS_KINDS,
    ModelConfig,
    build_model,
    calibrate,
    weight_space_layout,
)
from nfn_tasks.probes import ChainProbes, chain_layers
from nfn_tasks.train import (
    TaskData,
    TrainConfig,
    probe_digits,
    task_data,
    task_loss,
    task_probes,
)

MODEL = ModelConfig(
    channels=3, layers=2, invariant_dim=6, head_hidden=8, probe_grid=8, probe_images=2
)
#: each task with probes, and the scaling its hidden spaces have in the derived group
TASKS = {"inr": "sign", "generalization-relu": "positive", "generalization-tanh": "sign"}


def _data(zoos, name: str = "inr") -> TaskData:
    task = "inr" if name == "inr" else "generalization"
    return task_data(zoos[name], task, TrainConfig(epochs=1, batch_size=8))


def _probes(data: TaskData) -> ChainProbes:
    probes = task_probes(data, MODEL)
    assert probes is not None
    return probes.double()


def _group_element(data: TaskData, scaling: str, seed: int) -> GroupElement:
    """Scalings and permutations of the hidden neurons (the network's derived group)."""
    layout = weight_space_layout(data.zoo.architecture, tuple(data.zoo.input_shape), "monomial")
    assert {s.scaling for s in layout.spaces if s.permuted} == {scaling}
    return sample_group_element(layout, torch.Generator().manual_seed(seed))


def _networks(data: TaskData, count: int = 6) -> WeightSpace:
    return data.weights.map(lambda t: t[:count].double())


def test_siren_features_are_the_real_hidden_activations(zoos) -> None:
    data = _data(zoos)
    features = _probes(data)(_networks(data))
    for index in range(3):
        network = data.zoo.network(index).double()
        h, seen = pixel_grid().double(), []
        with torch.no_grad():  # the module's own layers, the way its forward uses them
            for layer in network.hidden:
                h = torch.sin(network.omega * layer(h))
                seen.append(h.T)  # (n, P)
        for value, expected, rms in zip(features, seen, _probes(data).rms):
            # the task's weights are float32 after the per-tensor normalization
            torch.testing.assert_close(value[index] * rms, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_cnn_features_are_the_mean_channel_activations(zoos, activation) -> None:
    data = _data(zoos, f"generalization-{activation}")
    probes = _probes(data)
    features = probes(_networks(data))
    images = probe_digits(data.zoo, MODEL.probe_images).double()
    for index in range(3):
        network = data.zoo.network(index).double().eval()
        h, seen = images, []
        with torch.no_grad():  # the module's own layers, the way its forward uses them
            for layer in network.features:
                h = layer(h)
                if not isinstance(layer, torch.nn.Conv2d):
                    seen.append(h.mean(dim=(-2, -1)).T)  # (channels, P)
        assert len(seen) == len(probes.spaces) == 3
        for value, expected, rms in zip(features, seen, probes.rms):
            torch.testing.assert_close(value[index] * rms, expected, rtol=0, atol=1e-5)


def test_probe_digits_are_training_digits_of_every_class(zoos) -> None:
    zoo = zoos["generalization-relu"]
    images, labels = digits(torch.float32)
    _, held_out = stratified_split(labels, zoo.settings["test_images"], zoo.settings["seed"])
    chosen = probe_digits(zoo, 3)
    assert chosen.shape == (30, 1, 8, 8)
    flat = images.flatten(1)
    rows = [int((flat == image.flatten()).all(1).nonzero()[0]) for image in chosen]
    assert not set(rows) & set(held_out.tolist())  # never an image the targets are measured on
    assert labels[rows].tolist() == [c for c in range(10) for _ in range(3)]


@pytest.mark.parametrize("name", TASKS)
def test_features_move_as_the_hidden_biases(zoos, name) -> None:
    data = _data(zoos, name)
    probes = _probes(data)
    networks = _networks(data)
    for seed in range(3):
        g = _group_element(data, TASKS[name], seed)
        if TASKS[name] == "sign":
            assert (g.scales["h1"] < 0).any()
        else:
            assert (g.scales["h1"] > 0).all() and g.scales["h1"].max() > 2 * g.scales["h1"].min()
        moved = probes(apply_group_element(networks, data.layout, g))
        for space, before, after in zip(probes.spaces, probes(networks), moved):
            gather = inverse_permutation(g.permutations[space])
            expected = before.index_select(1, gather) * g.scales[space].reshape(1, -1, 1)
            torch.testing.assert_close(after, expected, rtol=1e-10, atol=1e-10)
        assert not torch.allclose(moved[0], probes(networks)[0])  # the features did move


def _change(kind: str, data: TaskData, scaling: str, scales: bool) -> float:
    torch.manual_seed(0)
    networks = _networks(data)
    model = build_model(kind, data.zoo.architecture, data.zoo.input_shape, data.weights,
                        data.outputs, MODEL, probes=task_probes(data, MODEL))  # fmt: skip
    calibrate(model, data.weights.map(lambda t: t.index_select(0, data.train)))
    model = model.double().eval()
    g = _group_element(data, scaling, 5)
    if not scales:
        g = type(g)(g.permutations, {s: torch.ones_like(d) for s, d in g.scales.items()})
    with torch.no_grad():
        before, after = model(networks), model(apply_group_element(networks, data.layout, g))
    return float((after - before).abs().max() / before.abs().max())


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("kind", ["monomial", "polynomial"])
def test_scaling_equivariant_models_with_probes_are_exactly_invariant(zoos, kind, name) -> None:
    assert _change(kind, _data(zoos, name), TASKS[name], scales=True) < 1e-10


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("kind", ["hnp", "nfn-hnp", "statnn"])
def test_permutation_models_with_probes_are_permutation_invariant(zoos, kind, name) -> None:
    data = _data(zoos, name)
    assert _change(kind, data, TASKS[name], scales=False) < 1e-10
    assert _change(kind, data, TASKS[name], scales=True) > 1e-4  # scalings: not their group


@pytest.mark.parametrize("name", TASKS)
def test_every_kind_but_np_takes_probes(zoos, name) -> None:
    data = _data(zoos, name)
    for kind in MODEL_KINDS:
        model = build_model(kind, data.zoo.architecture, data.zoo.input_shape, data.weights,
                            data.outputs, MODEL, probes=task_probes(data, MODEL))  # fmt: skip
        fed = any(isinstance(m, ChainProbes) for m in model.modules())
        assert fed == (kind not in PROBELESS_KINDS), kind


@pytest.mark.parametrize("name", ["inr", "generalization-relu"])
@pytest.mark.parametrize("kind", [k for k in MODEL_KINDS if k not in PROBELESS_KINDS])
def test_every_kind_learns_with_probes(zoos, kind, name) -> None:
    data = _data(zoos, name)
    batch = data.weights.map(lambda t: t.index_select(0, data.train[:16]))
    targets = data.targets[data.train[:16]]
    torch.manual_seed(0)
    probes = task_probes(data, MODEL)
    model = build_model(kind, data.zoo.architecture, data.zoo.input_shape, batch, data.outputs,
                        MODEL, probes=probes)  # fmt: skip
    calibrate(model, batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = task_loss(data.task, model(batch), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_probes_only_where_asked_and_on_chains(zoos, transformer_zoo) -> None:
    relu = _data(zoos, "generalization-relu")
    assert task_probes(relu, replace(MODEL, probe_images=0)) is None
    assert task_probes(_data(zoos), replace(MODEL, probe_grid=0)) is None
    transformer = task_data(transformer_zoo, "generalization", TrainConfig())
    assert task_probes(transformer, MODEL) is None
    with pytest.raises(ValueError, match=r"is not one weight \(out, in, \*kernel\) and one bias"):
        chain_layers(transformer.layout)
    residual = weight_space_layout("nfn_runtime.architectures:residual_mlp", (16,))
    with pytest.raises(ValueError, match="layer 3 writes space 'h1' as layer 1 does"):
        chain_layers(residual)
