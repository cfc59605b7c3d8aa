"""The robustness experiment's ingredients: transformations that keep every test network's
function (and a check that notices when they do not), and models built from generated layers
that are exactly invariant (float64) while permutation-only models are not."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nfn_runtime import WeightSpace
from nfn_tasks.models import ModelConfig, build_model, calibrate
from nfn_tasks.robustness import (
    Transformation,
    function_change,
    held_out_networks,
    transform_test_networks,
    transformations,
)
from nfn_tasks.train import TaskData, TrainConfig, predict, task_data

CONFIG = TrainConfig(epochs=1, batch_size=8)
MODEL = ModelConfig(channels=3, layers=2, invariant_dim=6, head_hidden=8)
TASKS = {"generalization-relu": "generalization", "generalization-tanh": "generalization",
         "inr": "inr"}  # fmt: skip


def _data(zoos, name: str) -> TaskData:
    return task_data(zoos[name], TASKS[name], CONFIG)


def test_transformations_per_activation() -> None:
    relu = transformations("relu")
    assert [t.label for t in relu] == ["k=1", "k=2", "k=3", "k=4"]
    assert relu[-1].scale_range == (1.0, 1e4)
    for activation in ("tanh", "sin"):
        assert [t.label for t in transformations(activation)] == ["sign"]


@pytest.mark.parametrize("name", list(TASKS))
def test_transformed_networks_compute_the_same_function(zoos, name) -> None:
    data = _data(zoos, name)
    for transformation in transformations(data.zoo.activation):
        moved = transform_test_networks(data, transformation, seed=1)
        assert function_change(data, moved) < 1e-9
        assert _distance(held_out_networks(data), moved) > 0.1  # the weights did move


def _distance(a: WeightSpace, b: WeightSpace) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a.tensors(), b.tensors()))


def test_function_check_notices_a_wrong_transformation(zoos) -> None:
    data = _data(zoos, "generalization-relu")
    moved = transform_test_networks(data, transformations("relu")[0], seed=1)
    named = moved.named(data.layout)
    first = data.layout.tensors[0].name
    named[first] = -named[first]  # a sign flip is not a symmetry of a ReLU network
    broken = WeightSpace.from_named(data.layout, named)
    assert function_change(data, broken) > 1e-2


def _prediction_change(kind: str, data: TaskData, moved: WeightSpace) -> float:
    torch.manual_seed(0)
    example = data.weights.map(lambda t: t[:2])
    model = build_model(kind, data.zoo.architecture, data.zoo.input_shape, example,
                        data.outputs, MODEL)  # fmt: skip
    calibrate(model, data.weights.map(lambda t: t.index_select(0, data.train)))
    model = model.double().eval()
    index = torch.arange(len(data.test))
    before, after = predict(model, held_out_networks(data), index), predict(model, moved, index)
    return float((after - before).abs().max() / before.abs().max())


@pytest.mark.parametrize("kind", ["monomial", "polynomial"])
@pytest.mark.parametrize("name", list(TASKS))
def test_monomial_and_polynomial_models_are_exactly_invariant(zoos, name, kind) -> None:
    data = _data(zoos, name)
    for transformation in transformations(data.zoo.activation):
        moved = transform_test_networks(data, transformation, seed=2)
        assert _prediction_change(kind, data, moved) < 1e-9, transformation.label


@pytest.mark.parametrize("kind", ["hnp", "np", "statnn", "nfn-hnp"])
@pytest.mark.parametrize("name", list(TASKS))
def test_permutation_only_models_see_the_scaling(zoos, name, kind) -> None:
    data = _data(zoos, name)
    transformation = transformations(data.zoo.activation)[-1]
    moved = transform_test_networks(data, transformation, seed=2)
    assert _prediction_change(kind, data, moved) > 1e-4
    # ... but permutations alone leave them unchanged
    permuted = transform_test_networks(
        data, dataclasses.replace(transformation, scale_range=(1.0, 1.0)), seed=2
    )
    if data.zoo.activation == "relu":
        assert _prediction_change(kind, data, permuted) < 1e-9


def test_transformation_description() -> None:
    assert Transformation("k=2", (1.0, 100.0), 2).describe() == "scales in [1, 1e2] + permutations"
    assert transformations("tanh")[0].describe() == "sign flips + permutations"
