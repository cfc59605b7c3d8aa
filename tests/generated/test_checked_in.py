"""The checked-in modules of generated/ import on their own and are exactly equivariant."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from derive.cli.regenerate import GENERATED_DIR
from nfn_runtime import assert_equivariant, assert_invariant

MODULES = sorted(p.stem for p in GENERATED_DIR.glob("*_linear.py")) + sorted(
    p.stem for p in GENERATED_DIR.glob("*_invariant.py")
)


def _load(stem):
    spec = importlib.util.spec_from_file_location(f"generated_{stem}", GENERATED_DIR / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("stem", MODULES)
def test_checked_in_module(stem):
    module = _load(stem)
    cls = getattr(module, module.__all__[0])
    layer = cls(2, 3)
    assert layer.in_channels == 2 and layer.out_channels == 3
    if stem.endswith("_linear"):
        assert (
            assert_equivariant(layer, module.LAYOUT, dtype=torch.float64, channels=2, n_samples=2)
            <= 1e-10
        )
    else:
        assert (
            assert_invariant(layer, module.LAYOUT, dtype=torch.float64, channels=2, n_samples=2)
            <= 1e-10
        )
        assert layer(
            __import__("nfn_runtime").random_weight_space(module.LAYOUT, 5, 2, torch.float32)
        ).shape == (5, 3)


def test_bad_input_shape_is_reported():
    module = _load("relu_mlp_linear")
    layer = module.__dict__[module.__all__[0]](2, 2)
    from nfn_runtime import random_weight_space

    x = random_weight_space(module.LAYOUT, 1, 3)
    with pytest.raises(ValueError, match="W1 has shape"):
        layer(x)
