"""The derived group of a traced network, checked on the network itself (float64): group
elements leave its outputs unchanged, transformations outside the group change them, and a
wrong group (too large or too small) is caught."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from derive.pipeline import derive
from derive.verify.checklist import VerifyReport
from derive.verify.network import network_checks
from derive.weightspace.model import Scaling
from nfn_runtime import (
    architectures as arch,
)
from nfn_runtime import (
    network_symmetry_error,
    sample_group_element,
    state_dicts_from_weight_space,
    transform_buffers,
    weight_space_from_state_dicts,
)


class TiedResidual(nn.Module):
    """Blocks of one linear layer each: their weights have the stream space on both axes."""

    def __init__(self, activation: str = "relu"):
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        self.act = arch.activation_module(activation)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + self.act(block(h))
        return self.out(h)


class ConvResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 3, 3, padding=1)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.proj = nn.Conv2d(3, 4, 1)
        self.body = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = h + torch.relu(self.conv(h))
        h = torch.relu(self.proj(h) + self.body(h))  # a projection shortcut
        return self.head(h.mean((2, 3)))


def _bn_net():
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 3, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(3, 2),
    )


def _ln_net():
    return nn.Sequential(
        nn.Linear(3, 4), nn.LayerNorm(4), nn.GELU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)
    )


NETWORKS = {
    "small-cnn-relu": (arch.small_cnn, (1, 8, 8), "hidden"),
    "small-cnn-tanh": (arch.small_cnn_tanh, (1, 8, 8), "hidden"),
    "flatten-cnn": (arch.flatten_cnn, (1, 8, 8), "hidden"),
    "siren": (lambda: arch.Siren(2, (5, 4), 1), (2,), "hidden"),
    "residual-mlp": (lambda: arch.ResidualMLP(3, 4, 5, 2, 2, "relu"), (3,), "hidden"),
    "tied-residual-relu": (TiedResidual, (3,), "hidden"),
    "tied-residual-tanh": (lambda: TiedResidual("tanh"), (3,), "hidden"),
    "conv-residual": (ConvResidual, (2, 5, 5), "hidden"),
    "batchnorm-maxpool": (_bn_net, (1, 6, 6), "hidden"),
    "layernorm-gelu": (_ln_net, (3,), "hidden"),
    "np-flatten-cnn": (arch.flatten_cnn, (1, 8, 8), "all"),
    "np-residual": (TiedResidual, (3,), "all"),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_group_is_a_symmetry_of_the_network(name):
    factory, shape, permute = NETWORKS[name]
    torch.manual_seed(0)
    derivation = derive(factory(), shape, permute=permute)
    report = VerifyReport()
    network_checks(derivation, report, samples=3, seed=1)
    assert report.ok, report.text()
    names = [c.name for c in report.checks]
    assert names == ["network group check", "network outside group"]
    assert "all" in report.checks[1].detail


def test_batch_norm_buffers_are_transformed():
    torch.manual_seed(0)
    model = _bn_net().double().eval()
    with torch.no_grad():
        model[1].running_mean.normal_()
    derivation = derive(model, (1, 6, 6))
    layout = derivation.space.to_layout()
    g = sample_group_element(layout, torch.Generator().manual_seed(0))
    moved = transform_buffers(model.state_dict(), layout, g)
    assert set(moved) == {"1.running_mean", "1.running_var"}
    perm, signs = g.permutations["h1"], g.scales["h1"]
    expected = torch.empty(3, dtype=torch.float64)
    expected[perm] = model[1].running_mean
    torch.testing.assert_close(moved["1.running_mean"], expected * signs)
    expected[perm] = model[1].running_var
    torch.testing.assert_close(moved["1.running_var"], expected)
    # without moving the running mean, a sign flip is not a symmetry any more
    inputs = torch.randn(4, 1, 6, 6, dtype=torch.float64)

    def params_only(ws):
        from nfn_runtime import apply_group_element

        return apply_group_element(ws, layout, g)

    flipped = (g.scales["h1"] < 0).any()
    if flipped:
        assert network_symmetry_error(model, layout, inputs, params_only) > 1e-6
    assert network_symmetry_error(model, layout, inputs, g) < 1e-10


@pytest.mark.parametrize(
    ("scaling", "failures"),
    [
        # sign flips are not symmetries of a ReLU network: the claimed group is too large
        ("sign", {"network group check": "max relative"}),
        # an explicit subgroup: the positive scalings the network has beyond it are reported
        ("none", {}),
        ("nonzero", {"network group check": "max relative"}),
    ],
)
def test_a_wrong_group_is_caught(scaling, failures):
    torch.manual_seed(0)
    derivation = derive(arch.SmallCNN(1, (3, 3), 2, "relu"), (1, 6, 6), scaling=scaling)
    report = VerifyReport()
    network_checks(derivation, report, samples=2, seed=0)
    failed = {c.name: c.detail for c in report.checks if not c.ok}
    assert set(failed) == set(failures)
    for name, fragment in failures.items():
        assert fragment in failed[name]
    if scaling == "none":
        outside = next(c for c in report.checks if c.name == "network outside group")
        assert "subgroup chosen by --scaling none" in outside.detail


def test_a_group_derived_too_small_is_caught():
    # the same network with the group the derivation should have found, then shrunk by hand
    # (as a derivation bug would): positive scales of the hidden spaces leave the outputs alone
    torch.manual_seed(0)
    derivation = derive(arch.SmallCNN(1, (3, 3), 2, "relu"), (1, 6, 6))
    shrunk = dataclasses.replace(
        derivation,
        space=dataclasses.replace(
            derivation.space,
            spaces=tuple(
                dataclasses.replace(s, scaling=Scaling.NONE) for s in derivation.space.spaces
            ),
        ),
    )
    report = VerifyReport()
    network_checks(shrunk, report, samples=2, seed=0)
    failed = {c.name: c.detail for c in report.checks if not c.ok}
    assert set(failed) == {"network outside group"}
    assert "positive_scale on h" in failed["network outside group"]
    assert "group may be too small" in failed["network outside group"]


@pytest.mark.parametrize("name", ["flatten-cnn", "batchnorm-maxpool", "conv-residual"])
def test_state_dict_round_trip(name):
    factory, shape, _ = NETWORKS[name]
    model = factory()
    layout = derive(model, shape).space.to_layout()
    state = model.state_dict()
    ws = weight_space_from_state_dicts([state, state], layout)
    assert ws.batch_size == 2 and ws.channels == 1
    ws.validate(layout)
    back = state_dicts_from_weight_space(ws, layout)[1]
    parameters = dict(model.named_parameters())
    assert set(back) == set(parameters)
    for key, value in back.items():
        assert torch.equal(value, parameters[key].detach())
    if name == "flatten-cnn":
        head = ws.weights[2]
        assert head.shape == (2, 1, 10, 4, 16)  # (out, channel, position) of the flattened map
        assert torch.equal(head[0, 0].reshape(10, 64), model.head.weight.detach())
