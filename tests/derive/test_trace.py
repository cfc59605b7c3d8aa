"""Tracing PyTorch modules into weight spaces: every supported operation and its group."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from derive.errors import SpecError
from derive.frontend.spec import mlp_spec
from derive.pipeline import derive, verify
from nfn_runtime import architectures as arch


def _spaces(derivation):
    return {s.name: (s.size, s.permuted, s.scaling.value) for s in derivation.space.spaces}


def _axes(derivation):
    return {t.name: [(a.space, a.character) for a in t.axes] for t in derivation.space.tensors}


class Lambda(nn.Module):
    """``Linear(3, 4) -> fn -> Linear(4, 2)``: one hidden space acted on by ``fn``."""

    def __init__(self, fn):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fn = fn
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(self.fn(self.fc1(x)))


ACTIVATION_FORMS = {
    "nn.ReLU": (nn.ReLU(), "positive"),
    "F.relu": (F.relu, "positive"),
    "torch.relu": (torch.relu, "positive"),
    "method-relu": (lambda x: x.relu(), "positive"),
    "nn.LeakyReLU": (nn.LeakyReLU(0.1), "positive"),
    "F.leaky_relu": (lambda x: F.leaky_relu(x, 0.2), "positive"),
    "nn.Tanh": (nn.Tanh(), "sign"),
    "torch.tanh": (torch.tanh, "sign"),
    "torch.sin": (torch.sin, "sign"),
    "method-sin": (lambda x: x.sin(), "sign"),
    "sin-omega": (lambda x: torch.sin(30.0 * x), "sign"),
    "nn.Hardtanh": (nn.Hardtanh(), "sign"),
    "nn.Hardtanh-asymmetric": (nn.Hardtanh(-1.0, 2.0), "none"),
    "nn.Softsign": (nn.Softsign(), "sign"),
    "nn.GELU": (nn.GELU(), "none"),
    "F.silu": (F.silu, "none"),
    "nn.Sigmoid": (nn.Sigmoid(), "none"),
    "torch.cos": (torch.cos, "none"),
    "nn.Identity": (nn.Identity(), "nonzero"),
    "nn.Dropout": (nn.Dropout(0.3), "nonzero"),
    "scalar-mul": (lambda x: 2.0 * x, "nonzero"),
    "neg": (lambda x: -x, "nonzero"),
    "relu-then-tanh": (lambda x: torch.tanh(torch.relu(x)), "none"),
    "constant-shift": (lambda x: torch.relu(x + 1.0), "none"),
    "relu-dropout": (nn.Sequential(nn.ReLU(), nn.Dropout(0.5)), "positive"),
}


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("form", list(ACTIVATION_FORMS))
def test_activation_decides_the_scaling(form):
    fn, expected = ACTIVATION_FORMS[form]
    module = fn if isinstance(fn, nn.Module) else _Fn(fn)
    derivation = derive(Lambda(module), (3,))
    assert _spaces(derivation) == {
        "in": (3, False, "none"),
        "h1": (4, True, expected),
        "out": (2, False, "none"),
    }


def test_traced_mlp_equals_the_mlp_spec():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    traced = derive(model, (5,))
    spec = derive(mlp_spec((5, 4, 3, 2), ["relu", "tanh"]))
    assert _spaces(traced) == _spaces(spec)
    assert _axes(traced) == _axes(spec)
    assert {b.key: b.dim for b in traced.basis.blocks} == {b.key: b.dim for b in spec.basis.blocks}
    assert [t.source_key for t in traced.space.tensors] == [
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
        "4.weight",
        "4.bias",
    ]


@pytest.mark.parametrize(
    ("conv", "shape", "kernel"),
    [
        (nn.Conv1d(2, 3, 5, padding=2), (2, 9), [("k5", 0)]),
        (nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 8, 8), [("k3", 0), ("k3", 0)]),
        (nn.Conv2d(2, 3, (1, 3), bias=False), (2, 5, 5), [("k1", 0), ("k3", 0)]),
        (nn.Conv3d(2, 3, 2), (2, 4, 4, 4), [("k2", 0), ("k2", 0), ("k2", 0)]),
    ],
    ids=["conv1d-k5", "conv2d-stride2", "conv2d-1x3-nobias", "conv3d"],
)
def test_conv_kernels_are_fixed_axes(conv, shape, kernel):
    dims = len(shape) - 1
    pool = [nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d][dims - 1](1)
    model = nn.Sequential(conv, nn.ReLU(), pool, nn.Flatten(), nn.Linear(3, 4))
    derivation = derive(model, shape)
    axes = _axes(derivation)
    assert axes["W1"] == [("h1", 1), ("in", -1), *kernel]
    assert ("b1" in axes) == (conv.bias is not None)
    assert axes["W2"] == [("out", 1), ("h1", -1)]
    assert _spaces(derivation)["h1"] == (3, True, "positive")
    shapes = {t.name: t.source_shape for t in derivation.space.tensors}
    assert shapes["W1"] == tuple(conv.weight.shape)


class Pooled(nn.Module):
    def __init__(self, activation, pool):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.act = activation
        self.pool = pool
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.pool(self.act(self.conv(x))))


POOLS = {
    "adaptive-avg": (lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1), False),
    "mean-dims": (lambda x: x.mean(dim=(2, 3)), False),
    "torch.mean-negative": (lambda x: torch.mean(x, dim=(-1, -2)), False),
    "sum": (lambda x: x.sum((2, 3)), False),
    "avgpool-then-mean": (lambda x: F.avg_pool2d(x, 2).mean((2, 3)), False),
    "adaptive-max": (lambda x: F.adaptive_max_pool2d(x, 1).flatten(1), True),
    "amax": (lambda x: x.amax(dim=(2, 3)), True),
    "maxpool-module-then-mean": (lambda x: nn.functional.max_pool2d(x, 2).mean((2, 3)), True),
}


@pytest.mark.parametrize("pool", list(POOLS))
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_pooling(pool, activation):
    fn, is_max = POOLS[pool]
    act = nn.ReLU() if activation == "relu" else nn.Tanh()
    derivation = derive(Pooled(act, _Fn(fn)), (1, 6, 6))
    expected = {"relu": "positive", "tanh": "sign"}[activation]
    if is_max:  # max passes positive scaling only: with tanh nothing is left
        expected = "positive" if activation == "relu" else "none"
    space = derivation.space.space("h1")
    assert space.scaling.value == expected
    if is_max:
        assert "max" in space.decided_by


SPATIAL = {
    "upsample": (nn.Upsample(scale_factor=2), "positive"),
    "interpolate": (lambda x: F.interpolate(x, size=(5, 5), mode="bilinear"), "positive"),
    "zero-pad": (nn.ZeroPad2d(1), "positive"),
    "reflect-pad": (lambda x: F.pad(x, (1, 1, 1, 1), mode="reflect"), "positive"),
    "constant-pad-0": (nn.ConstantPad2d(2, 0.0), "positive"),
    "constant-pad-1": (lambda x: F.pad(x, (1, 1, 1, 1), value=1.0), "none"),
}


@pytest.mark.parametrize("op", list(SPATIAL))
def test_spatial_resampling_and_padding(op):
    fn, expected = SPATIAL[op]
    module = fn if isinstance(fn, nn.Module) else _Fn(fn)
    pool = _Fn(lambda x: x.mean((2, 3)))
    derivation = derive(Pooled(nn.ReLU(), nn.Sequential(module, pool)), (1, 4, 4))
    space = derivation.space.space("h1")
    assert space.scaling.value == expected
    if expected == "none":
        assert "pads with the constant 1" in space.decided_by


FLATTENS = {
    "torch.flatten": lambda x: torch.flatten(x, 1),
    "method-flatten": lambda x: x.flatten(1),
    "view-size": lambda x: x.view(x.size(0), -1),
    "reshape": lambda x: x.reshape(x.shape[0], -1),
    "nn.Flatten": nn.Flatten(),
}


@pytest.mark.parametrize("form", list(FLATTENS))
def test_flatten_makes_channel_times_positions(form):
    fn = FLATTENS[form]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
            self.flat = fn if isinstance(fn, nn.Module) else _Fn(fn)
            self.head = nn.Linear(3 * 4 * 4, 5)

        def forward(self, x):
            return self.head(self.flat(torch.relu(self.conv(x))))

    derivation = derive(Net(), (2, 8, 8))
    head = derivation.space.tensor("W2")
    assert [(a.space, a.character) for a in head.axes] == [("out", 1), ("h1", -1), ("p16", 0)]
    assert head.source_shape == (5, 48)
    assert _spaces(derivation)["p16"] == (16, False, "none")


def test_residual_ties_spaces_and_keeps_what_all_users_allow():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc_in = nn.Linear(3, 4)
            self.block1 = nn.Linear(4, 4)
            self.block2 = nn.Linear(4, 4)
            self.fc_out = nn.Linear(4, 2)

        def forward(self, x):
            h = self.fc_in(x)
            h = h + torch.relu(self.block1(h))
            h = h + torch.tanh(self.block2(h))
            return self.fc_out(h)

    derivation = derive(Net(), (3,))
    # block outputs are tied with the stream: relu and tanh both act on it
    assert _spaces(derivation) == {
        "in": (3, False, "none"),
        "h1": (4, True, "none"),
        "out": (2, False, "none"),
    }
    axes = _axes(derivation)
    assert axes["W2"] == [("h1", 1), ("h1", -1)]
    decided = derivation.space.space("h1").decided_by
    assert "tied" in decided and "relu" in decided and "tanh" in decided


def test_residual_into_the_input_space_keeps_it_fixed():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.out = nn.Linear(3, 2)

        def forward(self, x):
            return self.out(x + torch.relu(self.fc(x)))

    derivation = derive(Net(), (3,))
    assert _spaces(derivation) == {"in": (3, False, "none"), "out": (2, False, "none")}
    assert _axes(derivation)["W1"] == [("in", 1), ("in", -1)]


def test_nested_modules_give_module_paths():
    derivation = derive(arch.ResidualMLP(3, 4, 5, 2, 2, "relu"), (3,))
    keys = [t.source_key for t in derivation.space.tensors]
    assert keys[:4] == ["fc_in.weight", "fc_in.bias", "blocks.0.0.weight", "blocks.0.0.bias"]
    assert keys[-2:] == ["fc_out.weight", "fc_out.bias"]
    names = [t.name for t in derivation.space.tensors]
    assert names == [f"{k}{i}" for i in range(1, 7) for k in "Wb"]


def test_batch_norm_takes_its_output_scaling_into_its_affine_parameters():
    # conv -> BN -> tanh: the conv feeds the norm alone, so the conv rows and the running
    # statistics stay unscaled and gamma, beta carry the output's sign flips
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 2)
    )
    derivation = derive(model, (1, 4, 4))
    space = derivation.space.space("h1")
    assert space.scaling.value == "sign"
    assert "BatchNorm2d at '1' takes its output's scaling" in space.decided_by
    axes = _axes(derivation)
    assert axes["W1"][0] == ("h1", 0) and axes["b1"] == [("h1", 0)]
    assert axes["W2"] == [("h1", 1)] and axes["b2"] == [("h1", 1)]
    buffers = {
        b.source_key: [(a.space, a.character) for a in b.axes] for b in derivation.space.buffers
    }
    assert buffers == {"1.running_mean": [("h1", 0)], "1.running_var": [("h1", 0)]}
    # BN -> ReLU keeps positive scaling (the output side is positively homogeneous)
    relu = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    assert derive(relu, (2,)).space.space("h1").scaling.value == "positive"


class _SharedInput(nn.Module):
    """The conv output feeds the norm and a skip: its rows cannot stay unscaled."""

    def __init__(self, affine: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3, affine=affine)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        h = self.conv(x)
        h = torch.relu(self.bn(h) + h)
        return self.head(h.mean(dim=(2, 3)))


@pytest.mark.parametrize("affine", [True, False], ids=["shared-input", "no-affine"])
def test_batch_norm_without_its_own_input_allows_sign_flips_only(affine):
    model = _SharedInput(affine) if affine else nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, affine=False), nn.Tanh(), nn.Flatten(),
        nn.Linear(12, 2),
    )  # fmt: skip
    derivation = derive(model, (1, 4, 4))
    space = derivation.space.space("h1")
    assert "eps in sqrt(var + eps)" in space.decided_by
    assert space.scaling.value in ("sign", "none")
    buffers = {
        b.source_key.rpartition(".")[2]: [(a.space, a.character) for a in b.axes]
        for b in derivation.space.buffers
    }
    assert buffers == {"running_mean": [("h1", 1)], "running_var": [("h1", 0)]}
    report = verify(derivation, samples=2, only=["network"])
    assert report.ok, report.text()


def test_layer_norm_breaks_scaling_but_keeps_permutations():
    model = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3), nn.ReLU(), nn.Linear(3, 2))
    space = derive(model, (2,)).space.space("h1")
    assert (space.permuted, space.scaling.value) == (True, "none")
    assert "LayerNorm" in space.decided_by


def test_softmax_output_and_np_setting():
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 4), nn.LogSoftmax(dim=1))
    derivation = derive(model, (2,), permute="all")
    assert _spaces(derivation) == {
        "in": (2, True, "none"),
        "h1": (3, True, "sign"),
        "out": (4, True, "none"),
    }


def test_scaling_override_applies_to_hidden_spaces():
    derivation = derive(arch.siren(), (2,), scaling="none")
    assert {s.scaling.value for s in derivation.space.spaces} == {"none"}


def test_example_architectures():
    cnn = derive(arch.small_cnn(), (1, 8, 8))
    assert [s.name for s in cnn.space.spaces] == ["in", "h1", "h2", "h3", "out", "k3"]
    assert {cnn.space.space(h).scaling.value for h in ("h1", "h2", "h3")} == {"positive"}
    assert derive(arch.small_cnn_tanh(), (1, 8, 8)).space.space("h2").scaling.value == "sign"
    siren = derive(arch.siren(), (2,))
    assert [s.scaling.value for s in siren.space.spaces] == ["none", "sign", "sign", "none"]


class Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 3)
        self.b = nn.Linear(2, 3)

    def forward(self, x):  # a concatenation as the network's output (two output spaces)
        return torch.cat([self.a(x), self.b(x)], dim=1)


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x, y):
        return self.fc(x) + y


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return x


class DirectParam(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 3))
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x @ self.weight)


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.spare = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x)


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 1)

    def forward(self, x):  # one gate value for all channels: not one per channel
        return self.a(x) * torch.sigmoid(self.b(x))


class ConvChannelsLast(nn.Module):
    """A convolution reading a channels-last map (its dim 1 is not the channel axis)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.conv(self.fc(x.permute(0, 2, 3, 1)))


BAD_MODULES = {
    "cat-output": (Cat(), (2,), "returns a concatenation"),
    "shared-module": (Twice(), (3,), "called twice"),
    "two-inputs": (TwoInputs(), (3,), "takes 2 inputs (x, y)"),
    "control-flow": (Branchy(), (3,), "torch.fx cannot trace"),
    "direct-parameter": (DirectParam(), (3,), "uses the parameter or buffer 'weight' directly"),
    "unused-parameter": (Unused(), (3,), "parameter 'spare.weight' is not used"),
    "gating-product": (Gate(), (3,), "multiplies activations of different channels"),
    "reciprocal": (Lambda(_Fn(lambda x: 1.0 / x)), (3,), "divides by network activations"),
    "embedding": (nn.Sequential(nn.Embedding(4, 3)), (2,), "Embedding at '0'"),
    "prelu": (
        nn.Sequential(nn.Linear(2, 2), nn.PReLU(), nn.Linear(2, 1)),
        (2,),
        "learned activation slopes",
    ),
    "conv-on-channels-last": (ConvChannelsLast(), (2, 2, 2), "channel axis of this value is dim 3"),
    "wrong-input-shape": (
        nn.Sequential(nn.Linear(3, 2)),
        (4,),
        "fails on an input of shape (2, 4)",
    ),
    "layer-norm-partial": (
        nn.Sequential(nn.Conv2d(1, 2, 1), nn.LayerNorm((3, 3)), nn.Flatten(), nn.Linear(18, 1)),
        (1, 3, 3),
        "only a LayerNorm over all",
    ),
    "not-a-module": (lambda x: x, (2,), "expected an nn.Module"),
}


@pytest.mark.parametrize("case", list(BAD_MODULES))
def test_unsupported_input_names_the_operation(case):
    module, shape, message = BAD_MODULES[case]
    with pytest.raises(SpecError) as info:
        derive(module, shape)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_derive_needs_an_input_shape():
    with pytest.raises(SpecError, match="input_shape"):
        derive(arch.siren())


def test_tracing_restores_training_mode():
    model = arch.SmallCNN(dropout=0.5)
    model.train()
    derive(model, (1, 8, 8))
    assert all(m.training for m in model.modules())
