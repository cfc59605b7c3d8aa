"""Probe features on the INR task: they are the SIRENs' real hidden activations, they move
exactly as the hidden biases under sign flips and permutations, the models that take them stay
exactly invariant (generated monomial / polynomial) or permutation-invariant (hnp, nfn-hnp),
and every model kind that takes them learns with them."""

from __future__ import annotations

import pytest
import torch

from nfn_runtime import (
    GroupElement,
    WeightSpace,
    apply_group_element,
    inverse_permutation,
    sample_group_element,
)
from nfn_tasks.data import pixel_grid
from nfn_tasks.kinds import MODEL_KINDS
from nfn_tasks.models import (
    PROBELESS_KINDS,
    ModelConfig,
    build_model,
    calibrate,
    weight_space_layout,
)
from nfn_tasks.probes import ChainProbes, chain_layers
from nfn_tasks.train import TaskData, TrainConfig, task_data, task_loss, task_probes

MODEL = ModelConfig(channels=3, layers=2, invariant_dim=6, head_hidden=8, probe_grid=8)


def _data(zoos) -> TaskData:
    return task_data(zoos["inr"], "inr", TrainConfig(epochs=1, batch_size=8))


def _probes(data: TaskData) -> ChainProbes:
    probes = task_probes(data, MODEL)
    assert probes is not None
    return probes.double()


def _sign_group_element(data: TaskData, seed: int) -> GroupElement:
    """Sign flips and permutations of the hidden neurons (the SIREN's derived group)."""
    layout = weight_space_layout(data.zoo.architecture, tuple(data.zoo.input_shape), "monomial")
    assert {s.scaling for s in layout.spaces if s.permuted} == {"sign"}
    return sample_group_element(layout, torch.Generator().manual_seed(seed))


def _networks(data: TaskData, count: int = 6) -> WeightSpace:
    return data.weights.map(lambda t: t[:count].double())


def test_features_are_the_real_hidden_activations(zoos) -> None:
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


def test_features_move_as_the_hidden_biases(zoos) -> None:
    data = _data(zoos)
    probes = _probes(data)
    networks = _networks(data)
    for seed in range(3):
        g = _sign_group_element(data, seed)
        assert (g.scales["h1"] < 0).any()
        moved = probes(apply_group_element(networks, data.layout, g))
        for space, before, after in zip(probes.spaces, probes(networks), moved):
            gather = inverse_permutation(g.permutations[space])
            expected = before.index_select(1, gather) * g.scales[space].reshape(1, -1, 1)
            torch.testing.assert_close(after, expected, rtol=1e-10, atol=1e-10)
        assert not torch.allclose(moved[0], probes(networks)[0])  # the features did move


def _change(kind: str, data: TaskData, scales: bool) -> float:
    torch.manual_seed(0)
    networks = _networks(data)
    model = build_model(kind, data.zoo.architecture, data.zoo.input_shape, data.weights,
                        data.outputs, MODEL, probes=task_probes(data, MODEL))  # fmt: skip
    calibrate(model, data.weights.map(lambda t: t.index_select(0, data.train)))
    model = model.double().eval()
    g = _sign_group_element(data, 5)
    if not scales:
        g = type(g)(g.permutations, {s: torch.ones_like(d) for s, d in g.scales.items()})
    with torch.no_grad():
        before, after = model(networks), model(apply_group_element(networks, data.layout, g))
    return float((after - before).abs().max() / before.abs().max())


@pytest.mark.parametrize("kind", ["monomial", "polynomial"])
def test_sign_equivariant_models_with_probes_are_exactly_invariant(zoos, kind) -> None:
    assert _change(kind, _data(zoos), scales=True) < 1e-10


@pytest.mark.parametrize("kind", ["hnp", "nfn-hnp", "statnn"])
def test_permutation_models_with_probes_are_permutation_invariant(zoos, kind) -> None:
    data = _data(zoos)
    assert _change(kind, data, scales=False) < 1e-10
    assert _change(kind, data, scales=True) > 1e-4  # sign flips are not in their group


def test_every_kind_but_np_takes_probes(zoos) -> None:
    data = _data(zoos)
    for kind in MODEL_KINDS:
        model = build_model(kind, data.zoo.architecture, data.zoo.input_shape, data.weights,
                            data.outputs, MODEL, probes=task_probes(data, MODEL))  # fmt: skip
        fed = any(isinstance(m, ChainProbes) for m in model.modules())
        assert fed == (kind not in PROBELESS_KINDS), kind


@pytest.mark.parametrize("kind", [k for k in MODEL_KINDS if k not in PROBELESS_KINDS])
def test_every_kind_learns_with_probes(zoos, kind) -> None:
    data = _data(zoos)
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
        loss = task_loss("inr", model(batch), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_probes_only_on_the_inr_task_and_on_chains(zoos) -> None:
    relu = task_data(zoos["generalization-relu"], "generalization", TrainConfig())
    assert task_probes(relu, MODEL) is None
    assert task_probes(_data(zoos), ModelConfig(probe_grid=0)) is None
    cnn = weight_space_layout(relu.zoo.architecture, tuple(relu.zoo.input_shape))
    with pytest.raises(ValueError, match="layer 1 is not one dense weight and one bias"):
        chain_layers(cnn)
