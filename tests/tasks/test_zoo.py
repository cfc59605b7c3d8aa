"""Model zoos: deterministic bytes, the cache, recorded targets that match the networks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from nfn_tasks import zoo_build as zoo_module
from nfn_tasks.data import digits, pixel_grid, stratified_split
from nfn_tasks.zoo import CNNZooSettings, INRZooSettings, Zoo, settings_hash, zoo_bytes
from nfn_tasks.zoo_build import build_zoo, cache_path, generate_zoo


def test_digits_and_grid() -> None:
    images, labels = digits()
    assert images.shape == (1797, 1, 8, 8) and labels.shape == (1797,)
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    grid = pixel_grid()
    assert grid.shape == (64, 2)
    # row-major: the second pixel is in the first row, second column
    assert grid[1].tolist() == pytest.approx([-1.0, -1.0 + 2 / 7])


def test_stratified_split_is_a_partition() -> None:
    _, labels = digits()
    train, test = stratified_split(labels, 0.3, seed=0)
    assert len(set(train.tolist()) & set(test.tolist())) == 0
    assert len(train) + len(test) == len(labels)
    for label in range(10):
        share = float((labels[test] == label).sum()) / float((labels == label).sum())
        assert share == pytest.approx(0.3, abs=0.02)


@pytest.mark.parametrize(
    "settings",
    [CNNZooSettings.tiny("relu"), CNNZooSettings.tiny("tanh"), INRZooSettings.tiny()],
    ids=["cnn-relu", "cnn-tanh", "inr"],
)
def test_same_settings_same_bytes(settings, zoos) -> None:
    first = zoo_bytes(generate_zoo(settings))
    assert first == zoo_bytes(generate_zoo(settings))
    other = dataclasses.replace(settings, seed=settings.seed + 1)
    assert zoo_bytes(generate_zoo(other)) != first


def test_cnn_zoo_records_match_the_networks(relu_zoo: Zoo) -> None:
    assert relu_zoo.kind == "cnn" and len(relu_zoo) == 24
    settings = CNNZooSettings.tiny("relu")
    images, labels = digits()
    _, test = stratified_split(labels, settings.test_images, settings.seed)
    for index in (0, 7, 23):
        network = relu_zoo.network(index)
        with torch.no_grad():
            accuracy = (network(images[test]).argmax(1) == labels[test]).double().mean()
        assert float(accuracy) == pytest.approx(float(relu_zoo.targets[index]), abs=1e-6)
    # hyperparameters differ from network to network, and so do the accuracies
    for key in ("lr", "weight_decay", "init_scale", "train_fraction", "dropout"):
        assert float(relu_zoo.info[key].double().std()) > 0, key
    assert float(relu_zoo.targets.std()) > 0.01


def test_inr_zoo_fits_its_images(inr_zoo: Zoo) -> None:
    assert inr_zoo.kind == "inr" and len(inr_zoo) == 60  # 30 images, 2 fits each
    images, labels = digits(torch.float64)
    image = inr_zoo.info["image"]
    assert torch.equal(inr_zoo.targets, labels[image])
    assert torch.equal(inr_zoo.groups, image)
    for index in (0, 1, 59):
        network = inr_zoo.network(index).double()
        with torch.no_grad():
            error = (network(pixel_grid().double())[:, 0] - images[image[index]].flatten()).pow(2)
        assert float(error.mean()) == pytest.approx(float(inr_zoo.info["mse"][index]), rel=1e-3)
    # two fits of one image start from different initializations
    assert not torch.equal(inr_zoo.params["out.weight"][0], inr_zoo.params["out.weight"][1])


def test_split_keeps_groups_together(inr_zoo: Zoo) -> None:
    rest, test = inr_zoo.split(0.25, seed=3)
    assert len(rest) + len(test) == len(inr_zoo)
    assert not set(inr_zoo.groups[rest].tolist()) & set(inr_zoo.groups[test].tolist())
    assert torch.equal(inr_zoo.split(0.25, seed=3)[1], test)
    subset = inr_zoo.subset(test)
    assert torch.equal(subset.targets, inr_zoo.targets[test])
    assert torch.equal(subset.params["out.bias"], inr_zoo.params["out.bias"][test])


def test_settings_hash() -> None:
    settings = CNNZooSettings.tiny("relu")
    assert settings_hash(settings) == settings_hash(CNNZooSettings.tiny("relu"))
    assert settings_hash(settings) != settings_hash(dataclasses.replace(settings, networks=25))
    assert settings_hash(settings) != settings_hash(CNNZooSettings.tiny("tanh"))
    assert len({settings_hash(s) for s in (INRZooSettings(), INRZooSettings.small())}) == 2


def test_cache_reuses_and_repairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = INRZooSettings(images=4, seeds=1, steps=3)
    built = build_zoo(settings, tmp_path)
    path = cache_path(settings, tmp_path)
    assert path.exists() and path.read_bytes() == zoo_bytes(built)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(zoo_module, "generate_zoo", fail)
    assert zoo_bytes(build_zoo(settings, tmp_path)) == zoo_bytes(built)
    monkeypatch.undo()
    path.write_bytes(b"damaged")
    assert zoo_bytes(build_zoo(settings, tmp_path)) == zoo_bytes(built)


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NFN_ZOO_CACHE", str(tmp_path))
    settings = INRZooSettings(images=2, seeds=1, steps=1)
    assert cache_path(settings).parent == tmp_path


@pytest.mark.parametrize(
    "settings, message",
    [
        (CNNZooSettings(activation="gelu"), "relu or tanh"),
        (CNNZooSettings(networks=1), "at least 2"),
        (INRZooSettings(images=1), "images"),
    ],
)
def test_bad_settings(settings, message) -> None:
    with pytest.raises(ValueError, match=message):
        generate_zoo(settings)
