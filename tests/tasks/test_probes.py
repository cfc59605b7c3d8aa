"""Probe features on the INR task and on the CNN zoos: they are the networks' real hidden
activations (SIRENs at the pixel centres; each CNN channel's mean activation on training
digits), they move exactly as the hidden biases under the derived group (sign flips for sin and
tanh, positive scalings for ReLU, with permutations), the models that take them stay exactly
invariant (generated monomial / polynomial) or permutation-invariant (hnp, nfn-hnp, statnn),
and every model kind that takes them learns with them."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest
import torch
from torch import Tensor

from nfn_runtime import (
    GroupElement,
    WeightSpace,
    apply_group_element,
    sample_group_element,
)
from nfn_tasks.data import digits, pixel_grid, stratified_split
from nfn_tasks.kinds import MODEL_KINDS
from nfn_tasks.models import (
    PROBELESS_KINDS,
    ModelConfig,
    build_model,
    calibrate,
    unavailable_reason,
    weight_space_layout,
)
from nfn_tasks.probes import ProbeFeatures, chain_layers
from nfn_tasks.train import (
    TaskData,
    TrainConfig,
    probe_digits,
    task_data,
    task_loss,
    task_probes,
)
from nfn_tasks.zoo import Zoo

MODEL = ModelConfig(
    channels=3, layers=2, invariant_dim=6, head_hidden=8, probe_grid=8, probe_images=2
)
#: each task with probes, and the scalings its permuted spaces have in the derived group
TASKS = {
    "inr": {"sign"},
    "generalization-relu": {"positive"},
    "generalization-tanh": {"sign"},
    "generalization-transformer": {"none", "nonzero", "positive"},
}


@pytest.fixture(scope="module")
def tasks(zoos, transformer_zoo) -> dict[str, Zoo]:
    return {**zoos, "generalization-transformer": transformer_zoo}


def _data(zoos, name: str = "inr") -> TaskData:
    task = "inr" if name == "inr" else "generalization"
    return task_data(zoos[name], task, TrainConfig(epochs=1, batch_size=8))


def _probes(data: TaskData) -> ProbeFeatures:
    probes = task_probes(data, MODEL)
    assert probes is not None
    return probes.double()


def _group_element(data: TaskData, scalings: set[str], seed: int) -> GroupElement:
    """Scalings and permutations of the hidden neurons, with the heads of an attention
    relabelled (the network's derived group)."""
    layout = weight_space_layout(data.zoo.architecture, tuple(data.zoo.input_shape), "monomial")
    assert {s.scaling for s in layout.spaces if s.permuted} == scalings
    generator = torch.Generator().manual_seed(seed)
    return sample_group_element(layout, generator, move_heads=bool(layout.heads))


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


def _record(
    seen: dict[str, Tensor], name: str, module: object, inputs: object, out: Tensor
) -> None:
    seen[name] = out


def test_transformer_features_are_the_module_activations(tasks) -> None:
    data = _data(tasks, "generalization-transformer")
    probes = _probes(data)
    features = dict(
        zip(probes.biases, [f * r for f, r in zip(probes(_networks(data)), _rms(probes))])
    )
    by_key = {t.source_key: t.name for t in probes.targets if t.source_slice is None}
    images = probe_digits(data.zoo, MODEL.probe_images).double()
    for index in range(2):
        network = data.zoo.network(index).double().eval()
        seen: dict[str, Tensor] = {}
        hooks = [
            getattr(network, name).register_forward_hook(partial(_record, seen, name))
            for name in ("ln1", "fc")
        ]
        with torch.no_grad():
            network(images)
            stream = network.embed(images).flatten(2).transpose(1, 2) + network.pos
        for hook in hooks:
            hook.remove()
        queries = seen["ln1"] @ network.attn.in_proj_weight.T + network.attn.in_proj_bias
        expected = {
            "embed.bias": stream.mean(1).T,
            "fc.bias": torch.relu(seen["fc"]).mean(1).T,
        }
        for key, value in expected.items():
            torch.testing.assert_close(features[by_key[key]][index], value, rtol=0, atol=1e-5)
        parts = [t for t in probes.targets if t.source_key == "attn.in_proj_bias"]
        for t in parts:  # queries, keys (and values' outputs) of each head: the packed rows
            ((_, start, stop, _),) = t.source_slice or ()
            if stop <= 32:  # q and k rows: a linear map of the normalized tokens
                value = queries[..., start:stop].mean(1).T
                torch.testing.assert_close(features[t.name][index], value, rtol=0, atol=1e-5)


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
def test_features_move_as_their_biases(tasks, name) -> None:
    """Write probe p's features into their biases: the group element moves them to the
    features of the transformed networks (whatever it does: permutations, scalings, heads)."""
    data = _data(tasks, name)
    probes = _probes(data)
    networks = _networks(data)
    for seed in range(3):
        g = _group_element(data, TASKS[name], seed)
        moved = probes(apply_group_element(networks, data.layout, g))
        before = probes(networks)
        for p in range(probes.count):
            named = networks.named(data.layout)
            for bias, value, rms in zip(probes.biases, before, _rms(probes)):
                named[bias] = (value[:, :, p] * rms).unsqueeze(1)
            written = WeightSpace.from_named(data.layout, named)
            expected = apply_group_element(written, data.layout, g).named(data.layout)
            for bias, after, rms in zip(probes.biases, moved, _rms(probes)):
                torch.testing.assert_close(
                    after[:, :, p] * rms, expected[bias][:, 0], rtol=1e-10, atol=1e-10
                )
        assert not torch.allclose(moved[0], before[0])  # the features did move
        if name == "generalization-transformer":
            assert g.relabel  # the heads were relabelled too


def _rms(probes: ProbeFeatures) -> list[Tensor]:
    return [probes.rms[g] for g in probes.ties]


def _change(kind: str, data: TaskData, scalings: set[str], scales: bool) -> float:
    torch.manual_seed(0)
    networks = _networks(data)
    model = build_model(kind, data.zoo.architecture, data.zoo.input_shape, data.weights,
                        data.outputs, MODEL, probes=task_probes(data, MODEL))  # fmt: skip
    calibrate(model, data.weights.map(lambda t: t.index_select(0, data.train)))
    model = model.double().eval()
    g = _group_element(data, scalings, 5)
    if not scales:
        g = replace(g, scales={s: torch.ones_like(d) for s, d in g.scales.items()})
    with torch.no_grad():
        before, after = model(networks), model(apply_group_element(networks, data.layout, g))
    return float((after - before).abs().max() / before.abs().max())


SCALING_CASES = [
    (kind, name) for name in TASKS for kind in ("monomial", "polynomial")
    if (kind, name) != ("polynomial", "generalization-transformer")
]  # fmt: skip


@pytest.mark.parametrize(("kind", "name"), SCALING_CASES)
def test_scaling_equivariant_models_with_probes_are_exactly_invariant(tasks, kind, name) -> None:
    assert _change(kind, _data(tasks, name), TASKS[name], scales=True) < 1e-10


#: permutation-only models with probes; statnn's per-tensor statistics do not follow a
#: relabelling of heads, and the nfn package cannot read the transformer
PERMUTATION_CASES = [
    (kind, name) for name in TASKS for kind in ("hnp", "nfn-hnp", "statnn")
    if name != "generalization-transformer" or kind == "hnp"
]  # fmt: skip


@pytest.mark.parametrize(("kind", "name"), PERMUTATION_CASES)
def test_permutation_models_with_probes_are_permutation_invariant(tasks, kind, name) -> None:
    data = _data(tasks, name)
    assert _change(kind, data, TASKS[name], scales=False) < 1e-10
    assert _change(kind, data, TASKS[name], scales=True) > 1e-4  # scalings: not their group


@pytest.mark.parametrize("name", TASKS)
def test_every_kind_but_np_takes_probes(tasks, name) -> None:
    data = _data(tasks, name)
    architecture, shape = data.zoo.architecture, tuple(data.zoo.input_shape)
    for kind in MODEL_KINDS:
        if unavailable_reason(kind, architecture, shape, MODEL) is not None:
            continue
        model = build_model(kind, architecture, shape, data.weights, data.outputs, MODEL,
                            probes=task_probes(data, MODEL))  # fmt: skip
        fed = any(isinstance(m, ProbeFeatures) for m in model.modules())
        assert fed == (kind not in PROBELESS_KINDS), kind


LEARNING_CASES = [
    (kind, name)
    for name in ("inr", "generalization-relu", "generalization-transformer")
    for kind in MODEL_KINDS
    if kind not in PROBELESS_KINDS
    and (name != "generalization-transformer" or kind in ("monomial", "statnn", "mlp"))
]


@pytest.mark.parametrize(("kind", "name"), LEARNING_CASES)
def test_every_kind_learns_with_probes(tasks, kind, name) -> None:
    data = _data(tasks, name)
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


def test_transformer_probes_every_stream_query_key_value_and_hidden_space(tasks) -> None:
    probes = _probes(_data(tasks, "generalization-transformer"))
    layout = probes.layout
    assert sorted(probes.keys) == sorted(
        ["embed.bias", "attn.in_proj_bias", "attn.out_proj.bias", "fc.bias", "out.bias"]
    )
    # the stream three times, per head its query, key and value spaces, the MLP's hidden space
    (heads,) = layout.heads
    per_head = [s for spaces in heads.spaces for s in spaces]
    assert sorted(probes.spaces) == sorted(["h1"] * 3 + [*per_head, *per_head[::2]] + ["h6"])
    # corresponding biases of the two heads share a map: 3 stream + 3 head entries + 1 hidden
    assert probes.groups == 7
    assert len(set(probes.ties)) == 7 and len(probes.ties) == 3 + 6 + 1


def test_probes_only_where_asked_and_on_chains(tasks) -> None:
    relu = _data(tasks, "generalization-relu")
    assert task_probes(relu, replace(MODEL, probe_images=0)) is None
    assert task_probes(_data(tasks), replace(MODEL, probe_grid=0)) is None
    transformer = _data(tasks, "generalization-transformer")
    assert task_probes(transformer, replace(MODEL, probe_images=0)) is None
    with pytest.raises(ValueError, match=r"is not one weight \(out, in, \*kernel\) and one bias"):
        chain_layers(transformer.layout)
    residual = weight_space_layout("nfn_runtime.architectures:residual_mlp", (16,))
    with pytest.raises(ValueError, match="layer 3 writes space 'h1' as layer 1 does"):
        chain_layers(residual)
    with pytest.raises(ValueError, match=r"no bias of the weight space has the key\(s\)"):
        ProbeFeatures(relu.layout, ["head.weight"], dict, torch.zeros(1, 1, 8, 8), {})
