"""One front end: an MLP spec builds an nn.Sequential that the tracer reads like any module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from derive.frontend.spec import mlp_spec
from derive.frontend.torch_spec import torch_spec
from derive.pipeline import derive, trace_spec
from derive.symmetry.activations import ACTIVATION_SCALING, known_activations
from derive.verify.checklist import VerifyReport
from derive.verify.network import network_checks
from nfn_runtime.architectures import ACTIVATION_FUNCTIONS, Activation, mlp


def test_runtime_and_derive_know_the_same_activations():
    assert set(ACTIVATION_FUNCTIONS) == set(known_activations())


@pytest.mark.parametrize("activation", sorted(ACTIVATION_SCALING))
def test_every_activation_reaches_the_group_by_name(activation):
    derivation = derive(mlp_spec((2, 3, 2), activation))
    hidden = derivation.space.space("h1")
    assert hidden.activations == ((activation, "Activation at '1'"),)
    assert hidden.scaling is ACTIVATION_SCALING[activation]
    assert derivation.space.setting == "permute hidden; scaling auto"


@pytest.mark.parametrize("activation", ["relu", "tanh", "sin", "gelu", "identity", "prelu"])
def test_the_network_group_check_runs_for_mlp_specs(activation):
    report = VerifyReport()
    network_checks(derive(mlp_spec((3, 4, 4, 2), activation)), report, 2, 0)
    names = [c.name for c in report.checks]
    assert names == ["network group check", "network outside group"]
    assert report.ok, report.text()


def test_mlp_spec_and_the_same_module_traced_agree():
    spec = mlp_spec((3, 4, 2), "tanh", name="same")
    module = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    from_spec = trace_spec(spec)
    from_module = trace_spec(torch_spec(module, (3,), name="same"))
    assert [(s.name, s.size, s.role) for s in from_spec.spaces] == [
        (s.name, s.size, s.role) for s in from_module.spaces
    ]
    assert from_spec.tensors == from_module.tensors
    assert derive(spec).basis.dim == derive(module, (3,)).basis.dim


def test_mlp_builder_matches_the_widths_and_keys():
    model = mlp((5, 4, 3, 2), ("relu", "sin"))
    assert list(model.state_dict()) == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "4.weight",
        "4.bias",
    ]
    assert isinstance(model[1], Activation) and model[3].name == "sin"
    x = torch.randn(2, 5)
    expected = model[4](torch.sin(model[2](torch.relu(model[0](x)))))
    torch.testing.assert_close(model(x), expected)
    with pytest.raises(ValueError, match="need 2 activations"):
        mlp((5, 4, 3, 2), ("relu",))
    with pytest.raises(ValueError, match="unknown activation 'swish2'"):
        Activation("swish2")


def test_proxy_of_an_mlp_spec_keeps_three_hidden_layers():
    spec = mlp_spec((6, 5, 5, 5, 5, 5, 4), ["relu", "tanh", "sin", "gelu", "relu"], name="deep")
    proxy = spec.proxy(3, 2)
    assert proxy.widths == (2, 3, 3, 3, 2)
    assert proxy.activations == ("relu", "sin", "relu")
    assert proxy.name == "deep_proxy"


def test_printing_the_intermediates_is_short():
    derivation = derive(mlp_spec((784, 64, 64, 10), "relu", name="printed"))
    for value in (derivation, derivation.space, derivation.basis, derivation.linear_plan):
        assert len(str(value)) < 1000 and len(repr(value)) < 1000
    assert str(derivation.basis).startswith("LinearBasis of printed: dimension 616427")
    assert str(derivation.linear_plan).startswith("LinearPlan of printed:")


@pytest.mark.parametrize(("activation", "override"), [("tanh", "none"), ("relu", "none")])
def test_a_chosen_subgroup_is_said_not_failed(activation, override):
    report = VerifyReport()
    spec = mlp_spec((3, 4, 2), activation, scaling=override)
    network_checks(derive(spec), report, 2, 0)
    outside = report.checks[-1]
    assert outside.ok and "subgroup chosen by --scaling none" in outside.detail


def test_a_claimed_group_larger_than_the_network_fails():
    report = VerifyReport()
    network_checks(derive(mlp_spec((3, 4, 2), "tanh", scaling="positive")), report, 2, 0)
    assert not report.checks[0].ok  # positive scales are no symmetry of tanh
