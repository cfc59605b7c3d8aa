"""Tiny zoos, generated once per test session into a temporary cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfn_tasks.zoo import CNNZooSettings, INRZooSettings, TransformerZooSettings, Zoo
from nfn_tasks.zoo_build import build_zoo


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoos")


@pytest.fixture(scope="session")
def relu_zoo(zoo_cache: Path) -> Zoo:
    return build_zoo(CNNZooSettings.tiny("relu"), zoo_cache)


@pytest.fixture(scope="session")
def tanh_zoo(zoo_cache: Path) -> Zoo:
    return build_zoo(CNNZooSettings.tiny("tanh"), zoo_cache)


@pytest.fixture(scope="session")
def inr_zoo(zoo_cache: Path) -> Zoo:
    return build_zoo(INRZooSettings.tiny(), zoo_cache)


@pytest.fixture(scope="session")
def transformer_zoo(zoo_cache: Path) -> Zoo:
    return build_zoo(TransformerZooSettings.tiny(), zoo_cache)


@pytest.fixture(scope="session")
def zoos(relu_zoo: Zoo, tanh_zoo: Zoo, inr_zoo: Zoo) -> dict[str, Zoo]:
    return {"generalization-relu": relu_zoo, "generalization-tanh": tanh_zoo, "inr": inr_zoo}
