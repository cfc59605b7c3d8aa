"""Constructs of real networks: clamp, abs, rounding, stochastic depth, optional forward
arguments, and positions that a pool spreads from one (VGG / AlexNet heads at small inputs)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.fx
from torch import nn

from derive.pipeline import derive, verify
from derive.weightspace.model import Scaling
from nfn_runtime import state_dicts_from_weight_space, weight_space_from_state_dicts


class _Head(nn.Module):
    """``op(fc1(x))`` into ``fc2``: the op decides the scaling of the hidden space."""

    def __init__(self, op) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)
        self.op = op

    def forward(self, x):
        return self.fc2(self.op(self.fc1(x)))


@pytest.mark.parametrize(
    ("op", "name", "scaling"),
    [
        (lambda h: torch.clamp(h, min=0), "relu", Scaling.POSITIVE),
        (lambda h: h.clamp(min=0.0), "relu", Scaling.POSITIVE),
        (lambda h: torch.clamp_min(h, 0), "relu", Scaling.POSITIVE),
        (lambda h: torch.clamp(h, -1.0, 1.0), "hardtanh", Scaling.SIGN),
        (lambda h: h.clamp(0, 6), "hardtanh_asymmetric", Scaling.NONE),
        (lambda h: torch.abs(h), "abs", Scaling.POSITIVE),
        (lambda h: h.abs(), "abs", Scaling.POSITIVE),
    ],
    ids=["clamp-min0", "method-clamp", "clamp_min", "clamp-sym", "clamp-0-6", "abs", "Tensor.abs"],
)
def test_clamp_and_abs_are_activations(op, name, scaling):
    derivation = derive(_Head(op), (3,))
    hidden = derivation.space.space("h1")
    assert [a for a, _ in hidden.activations] == [name]
    assert hidden.scaling is scaling
    report = verify(derivation, samples=2, only=["network"])
    assert report.ok, report.text()


@pytest.mark.parametrize(
    "op",
    [
        lambda h: torch.div(h, 2, rounding_mode="floor"),
        lambda h: h // 2,
        lambda h: torch.floor(h),
        lambda h: h.div(3, rounding_mode="trunc"),
    ],
    ids=["div-floor", "floordiv", "floor", "Tensor.div-trunc"],
)
def test_rounding_leaves_permutations_only(op):
    derivation = derive(_Head(op), (3,))
    hidden = derivation.space.space("h1")
    assert hidden.permuted and hidden.scaling is Scaling.NONE
    assert "rounds" in hidden.decided_by
    # the group is a symmetry of the network (the outside check needs a network whose output
    # moves under small changes, which rounding prevents)
    report = verify(derivation, samples=2, only=["network"])
    assert report.checks[0].name == "network group check" and report.checks[0].ok


def test_rounding_by_a_tensor_is_refused():
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            h = self.fc(x)
            return h // h

    with pytest.raises(Exception, match="rounds a quotient of network activations by a tensor"):
        derive(Bad(), (3,))


def stochastic_depth(x, p, mode, training=True):
    """Stands in for torchvision.ops.stochastic_depth (same name and module, fx-wrapped)."""
    return x


stochastic_depth.__module__ = "torchvision.ops.stochastic_depth"
torch.fx.wrap("stochastic_depth")


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc_in = nn.Linear(3, 4)
        self.block = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 4))
        self.fc_out = nn.Linear(4, 2)

    def forward(self, x, mask=None, scale: float = 1.0):
        h = self.fc_in(x)
        h = h + stochastic_depth(self.block(h), 0.2, "row", self.training)
        if mask is not None:
            h = h * mask
        return self.fc_out(h * scale)


def test_stochastic_depth_and_optional_arguments():
    derivation = derive(_Residual(), (3,))
    assert [s.name for s in derivation.space.spaces] == ["in", "h1", "h2", "out"]
    report = verify(derivation, samples=2, only=["network", "linear"])
    assert report.ok, report.text()


class _TinyVGG(nn.Module):
    """A VGG-style head: features pooled to a fixed 3x3 map, flattened into the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(nn.Linear(4 * 9, 5), nn.ReLU(), nn.Linear(5, 3))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def test_positions_spread_from_one_are_permuted():
    # at 2x2 inputs the feature map is 1x1 and the adaptive pool copies it to 3x3: permuting
    # the classifier's 9 position columns is a symmetry, derived rather than flagged
    derivation = derive(_TinyVGG(), (3, 2, 2))
    copies = derivation.space.space("r9")
    assert copies.role == "replicated" and copies.permuted and copies.scaling is Scaling.NONE
    assert "same value" in copies.decided_by
    report = verify(derivation, samples=2, only=["network", "linear"])
    assert report.ok, report.text()


def test_positions_that_differ_stay_fixed():
    derivation = derive(_TinyVGG(), (3, 12, 12))  # a 6x6 map pooled to 3x3: positions differ
    assert derivation.space.space("p9").role == "fixed"
    report = verify(derivation, samples=2, only=["network"])
    assert report.ok, report.text()


def test_verify_only_names_a_valid_group(cli, one_line_error):
    code, out, _ = cli("verify", "--mlp", "3,4,2", "--only", "network")
    assert code == 0 and "network group check" in out and "linear" not in out
    one_line_error(
        *cli("verify", "--mlp", "3,4,2", "--only", "netw"),
        ["--only", "unknown check 'netw'", "valid: symbolic, network, linear"],
    )


class _BasicBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + x)


class _TinyResNet(nn.Module):
    """conv -> BN -> ReLU stem, one basic block with its residual, pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.block = _BasicBlock(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = self.block(torch.relu(self.bn(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class _InvertedResidual(nn.Module):
    """MobileNet v2's block: 1x1 expansion, depthwise 3x3, 1x1 projection, each with BN."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 6, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.project = nn.Conv2d(6, 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = nn.functional.relu6(self.bn1(self.expand(x)))
        h = torch.relu(self.bn2(self.dw(h)))
        h = self.bn3(self.project(h))
        return self.fc(torch.flatten(self.pool(h), 1))


def test_batchnorm_relu_networks_keep_positive_scaling():
    derivation = derive(_TinyResNet(), (3, 5, 5))
    hidden = [s for s in derivation.space.spaces if s.role == "hidden"]
    assert [(s.name, s.scaling) for s in hidden] == [
        ("h1", Scaling.POSITIVE),  # stem BN output, tied with the block's residual stream
        ("h2", Scaling.POSITIVE),  # the block's inner BN output
    ]
    report = verify(derivation, samples=2, only=["network", "linear", "invariant"])
    assert report.ok, report.text()


def test_depthwise_convolutions_tie_their_channels():
    derivation = derive(_InvertedResidual(), (3, 5, 5))
    weight = derivation.space.tensor("W3")  # the depthwise kernel: one channel axis
    assert weight.source_key == "dw.weight" and [a.space for a in weight.axes] == ["h1", "k3", "k3"]
    assert weight.axes[0].character == -1  # its rows stay unscaled: bn2 takes the scaling
    assert derivation.space.space("h1").scaling is Scaling.NONE  # relu6 after the expansion
    report = verify(derivation, samples=2, only=["network", "linear"])
    assert report.ok, report.text()


def test_grouped_convolution_of_the_input_reads_fixed_channels():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2))
    derivation = derive(model, (4, 3, 3))
    pieces = [t for t in derivation.space.tensors if t.source_key == "0.weight"]
    assert [[a.space for a in t.axes[:2]] for t in pieces] == [["h1", "g2"], ["h2", "g2"]]
    report = verify(derivation, samples=2, only=["network", "linear"])
    assert report.ok, report.text()


class _Fire(nn.Module):
    """SqueezeNet's fire module (squeeze, then 1x1 and 3x3 expands concatenated), a BN over
    the concatenation, a 1x1 conv head."""

    def __init__(self) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(3, 2, 1)
        self.expand1 = nn.Conv2d(2, 3, 1)
        self.expand3 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(7)
        self.head = nn.Conv2d(7, 5, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        h = torch.relu(self.squeeze(x))
        h = torch.cat([torch.relu(self.expand1(h)), torch.tanh(self.expand3(h))], 1)
        return torch.flatten(self.pool(self.head(self.bn(h))), 1)


class _DenseBlock(nn.Module):
    """DenseNet's pattern: every layer reads the concatenation of all earlier features."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 3, 3, padding=1)
        self.layer1 = nn.Conv2d(3, 2, 3, padding=1)
        self.layer2 = nn.Conv2d(5, 2, 3, padding=1)
        self.head = nn.Linear(7, 3)

    def forward(self, x):
        f0 = torch.relu(self.stem(x))
        f1 = torch.relu(self.layer1(f0))
        f01 = torch.cat([f0, f1], dim=1)
        f2 = torch.relu(self.layer2(f01))
        features = torch.cat((f01, f2), 1)
        return self.head(features.mean(dim=(2, 3)))


class _UNetSkip(nn.Module):
    """A U-Net skip: the upsampled decoder features concatenated with the encoder's."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(1, 3, 3, padding=1)
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = nn.Conv2d(7, 2, 3, padding=1)

    def forward(self, x):
        e = torch.relu(self.enc(x))
        d = torch.relu(self.down(e))
        return self.dec(torch.cat([self.up(d), e], dim=1))


@pytest.mark.parametrize(
    ("model", "shape", "parts"),
    [
        (_Fire, (3, 4, 4), {"head.weight": 2, "bn.weight": 2, "bn.running_mean": 2}),
        (_DenseBlock, (2, 4, 4), {"layer2.weight": 2, "head.weight": 3}),
        (_UNetSkip, (1, 4, 4), {"dec.weight": 2}),
    ],
    ids=["fire", "dense-block", "unet-skip"],
)
def test_concatenations_are_direct_sums(model, shape, parts):
    derivation = derive(model(), shape)
    space = derivation.space
    for key, count in parts.items():
        pieces = [t for t in (*space.tensors, *space.buffers) if t.source_key == key]
        assert len(pieces) == count and all(t.source_slice is not None for t in pieces)
        spans = sorted(tuple(t.source_slice[0][1:3]) for t in pieces)
        assert all(len(t.source_slice) == 1 and t.source_slice[0][3] == 1 for t in pieces)
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    report = verify(derivation, samples=2, only=["network", "linear", "invariant"])
    assert report.ok, report.text()


def test_parts_round_trip_through_the_state_dict():
    model = _DenseBlock()
    layout = derive(model, (2, 4, 4)).space.to_layout()
    state = model.state_dict()
    ws = weight_space_from_state_dicts([state], layout)
    (back,) = state_dicts_from_weight_space(ws, layout)
    assert set(back) == set(state)
    for key, value in back.items():
        torch.testing.assert_close(value, state[key])


def test_inspect_json_shows_the_slices(cli):
    code, out, _ = cli(
        "inspect", "--torch", "tests.derive.test_trace_reach:_UNetSkip", "--input-shape", "1,4,4",
        "--json",
    )  # fmt: skip
    assert code == 0
    report = json.loads(out)
    sliced = [t for t in report["tensors"] if t["source_slice"] is not None]
    assert [(t["source_key"], t["source_slice"]) for t in sliced] == [
        ("dec.weight", [[1, 0, 4, 1]]),
        ("dec.weight", [[1, 4, 7, 1]]),
    ]


def test_concatenation_along_positions_keeps_the_channel_space_and_batch_is_refused():
    class Positions(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.head = nn.Linear(2, 2)
            self.dim = dim

        def forward(self, x):
            h = torch.relu(self.conv(x))
            return self.head(torch.cat([h, 2 * h], dim=self.dim).mean(dim=(2, 3)))

    derivation = derive(Positions(2), (1, 4, 4))
    assert derivation.space.space("h1").scaling is Scaling.POSITIVE
    report = verify(derivation, samples=2, only=["network"])
    assert report.ok, report.text()
    with pytest.raises(Exception, match=r"concatenates along dim 0; only the channel axis"):
        derive(Positions(0), (1, 4, 4))


class _SqueezeExcite(nn.Module):
    """conv -> BN -> x * sigmoid(x) (SiLU by hand) -> squeeze-excite gate -> layer scale."""

    def __init__(self, channels: int = 4, reduced: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)
        self.gamma = nn.Parameter(torch.rand(channels, 1, 1) + 0.5)
        self.head = nn.Linear(channels, 3)

    def forward(self, x):
        h = self.bn(self.conv(x))
        h = h * torch.sigmoid(h)
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(h.mean((2, 3), keepdim=True)))))
        h = self.gamma * (h * gate)
        return self.head(h.mean(dim=(2, 3)))


def test_gates_tie_their_factors_and_layer_scales_are_tensors():
    derivation = derive(_SqueezeExcite(), (3, 5, 5))
    space = derivation.space
    gated = space.space("h1")  # conv output, the gate's output and the gated product: one space
    assert gated.scaling is Scaling.NONE and "the gate x * g" in gated.decided_by
    assert space.space("h2").scaling is Scaling.POSITIVE  # the squeeze (ReLU) keeps its own
    gamma = next(t for t in space.tensors if t.source_key == "gamma")
    assert [(a.space, a.character) for a in gamma.axes] == [("h1", 0)]
    report = verify(derivation, samples=2, only=["network", "linear", "invariant"])
    assert report.ok, report.text()


def test_products_that_are_not_gates_or_channel_scales_are_refused():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.scale = nn.Parameter(torch.ones(1, 4))
            self.head = nn.Linear(4, 1)

        def forward(self, x):  # fine: one value per channel of (batch, 4)
            return self.head(self.a(x) * self.scale)

    assert derive(Mixed(), (3,)).space.tensor("W2").source_key == "scale"

    class Positions(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.scale = nn.Parameter(torch.ones(2, 4, 4))  # one value per channel and position
            self.head = nn.Linear(2, 1)

        def forward(self, x):
            return self.head((self.conv(x) * self.scale).mean(dim=(2, 3)))

    # one value per channel and position: the tensor has the channel axis and fixed positions
    scale = derive(Positions(), (1, 4, 4)).space.tensor("W2")
    assert [(a.space, a.character) for a in scale.axes] == [("h1", 0), ("x4", 0), ("x4", 0)]

    class Rows(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.scale = nn.Parameter(torch.ones(1, 4, 1))  # shared by the channels
            self.head = nn.Linear(2, 1)

        def forward(self, x):
            return self.head((self.conv(x) * self.scale).mean(dim=(2, 3)))

    with pytest.raises(Exception, match=r"'scale' of shape \(1, 4, 1\); only parameters with"):
        derive(Rows(), (1, 4, 4))

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(3, 2)
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.a(x) * self.b(x).sum(dim=1, keepdim=True))

    with pytest.raises(Exception, match="reduces over dims 1; only spatial axes"):
        derive(Outer(), (3,))
