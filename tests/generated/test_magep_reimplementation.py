"""The re-implementation of MAGEP-NFN's invariant layer used as the speed peer
(benchmarks/magep_invariant.py) is honest: exactly invariant under the group (permutations of
hidden neurons with their positive scalings for ReLU, sign flips for tanh), sensitive to
transformations outside it, its two path schedules agree, and each of its terms is the
corresponding MAGEP invariant of our own reference up to a constant factor (the paper does not
normalize path products; we do)."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from math import prod
from pathlib import Path

import pytest
import torch

from derive.basis.magep import MagepTerm
from derive.frontend.spec import mlp_spec
from derive.pipeline import derive
from derive.plan.invariant import invariant_plan
from derive.verify.reference_magep import magep_term_value
from nfn_runtime import (
    assert_invariant,
    random_weight_space,
    sample_outside_group,
    sensitivity_error,
)

ROOT = Path(__file__).resolve().parents[2]
CASES = {
    # name: (widths, activation)
    "L2-relu": ((3, 4, 2), "relu"),
    "L3-relu": ((2, 3, 4, 2), "relu"),
    "L4-relu": ((3, 4, 3, 5, 2), "relu"),
    "L3-tanh": ((2, 3, 4, 2), "tanh"),
}


def _module():
    """benchmarks/magep_invariant.py, loaded from its path (benchmarks/ is no package we ship)."""
    name = "magep_invariant_under_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, ROOT / "benchmarks" / "magep_invariant.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _layer(widths, schedule="chain", channels=(2, 3)):
    torch.manual_seed(0)
    return _module().MagepInvariant(widths, *channels, schedule=schedule)


def _layout(name):
    widths, activation = CASES[name]
    return derive(mlp_spec(widths, activation, name="peer")).space.to_layout()


@pytest.mark.parametrize("schedule", ["chain", "pairs"])
@pytest.mark.parametrize("name", list(CASES))
def test_reimplementation_is_invariant(name, schedule):
    widths, _ = CASES[name]
    layer = _layer(widths, schedule)
    layout = _layout(name)
    assert assert_invariant(layer, layout, torch.float64, channels=2, n_samples=3) <= 1e-10
    assert assert_invariant(layer, layout, torch.float32, channels=2, n_samples=2) <= 1e-4


@pytest.mark.parametrize(
    ("name", "kind", "space"),
    [
        ("L3-relu", "decoupled_scale", "h1"),
        ("L3-relu", "decoupled_permutation", "h2"),
        ("L3-relu", "permute_fixed", "in"),
        ("L3-relu", "permute_fixed", "out"),
        ("L3-tanh", "decoupled_scale", "h2"),
    ],
    ids=str,
)
def test_reimplementation_is_sensitive_outside_the_group(name, kind, space):
    """(Not to a scaling shared by a neuron's rows and columns, of any sign: path products
    cancel every such factor, so the paper's invariants are invariant under all nonzero
    scalings; our layer's pooled, canonicalized features are what sees a negative one.)"""
    layout = _layout(name)
    transform = sample_outside_group(layout, kind, torch.Generator().manual_seed(3), space=space)
    layer = _layer(CASES[name][0])
    assert sensitivity_error(layer, layout, transform, channels=2) > 1e-3


@pytest.mark.parametrize("name", list(CASES))
def test_schedules_agree(name):
    widths, _ = CASES[name]
    chain, pairs = _layer(widths, "chain"), _layer(widths, "pairs")
    pairs.load_state_dict(chain.state_dict())
    x = random_weight_space(_layout(name), 3, 2, torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(pairs.double()(x), chain.double()(x), rtol=1e-10, atol=1e-12)


def _psi_for(layer, term: MagepTerm) -> torch.Tensor:
    """The re-implementation's Psi that plays the role of ``term``'s."""
    if term.kind == "WW0":
        return layer.psi
    if term.kind == "bW0":
        return layer.psi_row
    if term.kind == "trWW":
        return layer.psi_trace[term.t - 1]
    return layer.psi_trace_row[term.t - 1]


def _unnormalized_wb(term: MagepTerm, chain, named, psi) -> torch.Tensor:
    """``sum_t [W](L,t) b_t`` without our normalization: each path of our reference divided
    by sqrt(n_t ... n_(L-1)), their sum by sqrt(number of paths), undone path by path."""
    total = torch.zeros(())
    for degree in term.degrees:
        t = term.i - degree + 1
        path = magep_term_value(replace(term, degrees=(degree,)), chain, named, psi)
        total = total + path * prod(chain.sizes[t : term.i]) ** 0.5
    return total


def _matching_feature(features, term: MagepTerm, layers: int) -> torch.Tensor:
    index = {"W": 0, "WW0": 1, "bW0": 2, "Wb": 3}
    if term.kind in index:
        return features[index[term.kind]]
    offset = 5 + 2 * (term.t - 1) + (term.kind == "trbW")
    return features[offset].squeeze(-1)


@pytest.mark.parametrize("name", list(CASES))
def test_terms_are_ours_up_to_normalization(name):
    widths, activation = CASES[name]
    derivation = derive(mlp_spec(widths, activation, name="peer"))
    magep = invariant_plan(derivation.space, True).magep
    assert magep is not None
    layer = _layer(widths).double()
    x = random_weight_space(derivation.space.to_layout(), 3, 2, torch.float64)
    named = x.named(derivation.space.to_layout())
    with torch.no_grad():
        features = layer.features(x)
        assert len(features) == 5 + 2 * (len(widths) - 2)
        checked = set()
        for term in magep.terms:
            psi = {p.name: _psi_for(layer, term) for p in term.psi}
            if term.kind == "Wb":  # a sum of paths normalized differently: no one factor
                want = _unnormalized_wb(term, magep.chain, named, psi).flatten()
            else:
                want = magep_term_value(term, magep.chain, named, psi).flatten()
            got = _matching_feature(features, term, len(widths) - 1).flatten()
            scale = float(got @ want / (want @ want))
            assert abs(scale) > 0, term.var
            torch.testing.assert_close(got, scale * want, rtol=1e-10, atol=1e-12)
            checked.add(term.kind)
        torch.testing.assert_close(features[4], named[magep.chain.biases[-1]])
    assert checked == {"W", "WW0", "bW0", "Wb", "trWW", "trbW"}
