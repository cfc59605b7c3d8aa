"""Channels-last and token layouts, written by hand (the families of ConvNeXt, MLP-Mixer and
ResMLP): permutes and transposes, nn.Linear and LayerNorm on the last axis, token-mixing
linears, functional norms on a module's own parameters, and parameters used directly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from derive.errors import SpecError
from derive.pipeline import derive, verify
from derive.weightspace.model import Scaling


class MixerBlock(nn.Module):
    """timm's MixerBlock: token mixing over (B, C, N), then channel mixing over (B, N, C)."""

    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.tok1 = nn.Linear(tokens, token_hidden)
        self.tok2 = nn.Linear(token_hidden, tokens)
        self.norm2 = nn.LayerNorm(dim)
        self.ch1 = nn.Linear(dim, channel_hidden)
        self.ch2 = nn.Linear(channel_hidden, dim)

    def forward(self, x):
        y = self.norm1(x).transpose(1, 2)
        x = x + self.tok2(F.gelu(self.tok1(y))).transpose(1, 2)
        return x + self.ch2(F.gelu(self.ch1(self.norm2(x))))


class Mixer(nn.Module):
    """Patches by a strided conv, flattened to tokens, one or more Mixer blocks, token mean."""

    def __init__(self, dim: int = 3, blocks: int = 1, classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, dim, 4, stride=4)
        self.blocks = nn.Sequential(*[MixerBlock(4, dim, 2, 3) for _ in range(blocks)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


class LayerNorm2d(nn.LayerNorm):
    """torchvision's and timm's LayerNorm2d: F.layer_norm between two permutes."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """torchvision's CNBlock: depthwise conv, channels-last LayerNorm and MLP, layer scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), 1e-6))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        return x + self.gamma * y


class ConvNeXt(nn.Module):
    """Patchify stem with LayerNorm2d, a block, a downsampling layer, a block, the head."""

    def __init__(self, dim: int = 3, classes: int = 2, second: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, dim, 2, stride=2), LayerNorm2d(dim))
        self.block = ConvNeXtBlock(dim)
        out = 2 * dim if second else dim
        self.down = (
            nn.Sequential(LayerNorm2d(dim), nn.Conv2d(dim, out, 2, stride=2), ConvNeXtBlock(out))
            if second
            else nn.Identity()
        )
        self.head_norm = nn.LayerNorm(out)
        self.head = nn.Linear(out, classes)

    def forward(self, x):
        x = self.down(self.block(self.stem(x)))
        return self.head(self.head_norm(x.mean((2, 3))))


class Affine(nn.Module):
    """timm's Affine (ResMLP's norm): addcmul(beta, alpha, x)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x):
        return torch.addcmul(self.beta, self.alpha, x)


class ResMLP(nn.Module):
    """A ResMLP block between a patch stem and a token mean: one token linear (N -> N),
    an MLP on the channels, layer scales of shape (dim,) on channels-last values."""

    def __init__(self, dim: int = 3, classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, dim, 4, stride=4)
        self.norm1 = Affine(dim)
        self.tokens = nn.Linear(4, 4)
        self.norm2 = Affine(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.ls1 = nn.Parameter(torch.full((dim,), 0.1))
        self.ls2 = nn.Parameter(torch.full((dim,), 0.1))
        self.norm = Affine(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = x + self.ls1 * self.tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.ls2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(self.norm(x).mean(dim=1))


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: F.batch_norm on the module's own parameters, then ReLU."""

    def forward(self, x):
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )
        return F.relu(x)


class ConvBNAct(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = BatchNormAct(3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).mean((2, 3)))


def _axes(space, name: str) -> list[tuple[str, int]]:
    return [(a.space, a.character) for a in space.tensor(name).axes]


def _source(space, key: str):
    return next(t for t in space.tensors if t.source_key == key)


def test_mixer_token_mixing_has_its_own_hidden_space_and_fixed_tokens():
    derivation = derive(Mixer(), (1, 8, 8))
    space = derivation.space
    token_hidden = _source(space, "blocks.0.tok1.weight")
    # token mixing reads the fixed token positions and writes a permuted hidden space
    assert [(a.space, a.character) for a in token_hidden.axes] == [("h2", 1), ("x4", 0)]
    assert space.space("h2").permuted and space.space("h2").scaling is Scaling.NONE
    # its second layer writes back onto the token axis, which the residual keeps fixed
    back = _source(space, "blocks.0.tok2.weight")
    assert [(a.space, a.character) for a in back.axes] == [("x4", 0), ("h2", -1)]
    assert _axes(space, "W1")[:2] == [("h1", 1), ("in", -1)]
    channel = _source(space, "blocks.0.ch1.weight")
    assert [(a.space, a.character) for a in channel.axes] == [("h3", 1), ("h1", -1)]
    assert "LayerNorm" in space.space("h1").decided_by
    report = verify(derivation, samples=2, only=["network", "linear"])
    assert report.ok, report.text()


def test_mixer_block_alone_on_token_inputs():
    """A block read on (batch, tokens, channels) inputs: dim 1 (the tokens) is the input
    space, the channels are fixed positions; the token MLP's output is tied to the input."""
    derivation = derive(MixerBlock(3, 4, 2, 5), (3, 4))
    space = derivation.space
    assert [s.name for s in space.spaces if s.role == "hidden"] == ["h1", "h2"]
    assert [(a.space, a.character) for a in _source(space, "tok2.weight").axes] == [
        ("in", 1),
        ("h1", -1),
    ]
    assert [(a.space, a.character) for a in _source(space, "ch2.weight").axes] == [
        ("x4", 0),
        ("h2", -1),
    ]
    report = verify(derivation, samples=2, only=["network", "linear", "invariant"])
    assert report.ok, report.text()


def test_convnext_channels_last_linears_share_the_channel_space():
    derivation = derive(ConvNeXt(second=False), (1, 4, 4))
    space = derivation.space
    # the depthwise conv keeps the stem's space; the channels-last MLP reads and writes it
    assert _axes(space, "W1")[:2] == [("h1", 1), ("in", -1)]
    assert [(a.space, a.character) for a in _source(space, "block.fc1.weight").axes] == [
        ("h2", 1),
        ("h1", -1),
    ]
    assert [(a.space, a.character) for a in _source(space, "block.fc2.weight").axes] == [
        ("h1", 1),
        ("h2", -1),
    ]
    assert [(a.space, a.character) for a in _source(space, "block.gamma").axes] == [("h1", 0)]
    assert [(a.space, a.character) for a in _source(space, "stem.1.weight").axes] == [("h1", 0)]
    assert all(s.scaling is Scaling.NONE for s in space.spaces if s.role == "hidden")
    report = verify(derivation, samples=2, only=["network", "linear", "invariant"])
    assert report.ok, report.text()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("factory", "shape"),
    [
        (lambda: ConvNeXt(), (1, 8, 8)),
        (lambda: Mixer(blocks=2), (1, 8, 8)),
        (lambda: UNet(), (1, 2, 2)),
    ],
    ids=["convnext-two-stages", "mixer-two-blocks", "unet"],
)
def test_layout_networks_pass_every_check(factory, shape):
    report = verify(derive(factory(), shape), samples=2)
    assert report.ok, report.text()


def test_resmlp_affine_and_layer_scales_on_channels_last_values():
    derivation = derive(ResMLP(), (1, 8, 8))
    space = derivation.space
    alpha, beta = _source(space, "norm1.alpha"), _source(space, "norm1.beta")
    assert (alpha.kind, beta.kind, alpha.layer) == ("weight", "bias", beta.layer)
    assert [(a.space, a.character) for a in alpha.axes] == [("h1", 0)]
    assert [(a.space, a.character) for a in beta.axes] == [("h1", 1)]
    assert [(a.space, a.character) for a in _source(space, "ls1").axes] == [("h1", 0)]
    # one token linear N -> N, added back to the tokens: fixed on both sides
    assert [(a.space, a.character) for a in _source(space, "tokens.weight").axes] == [
        ("x4", 0),
        ("x4", 0),
    ]
    # its bias is shared by every channel, so the channel space cannot scale
    assert "shared along the other axes" in space.space("h1").decided_by
    report = verify(derivation, samples=2, only=["network", "linear", "invariant"])
    assert report.ok, report.text()


def test_functional_batch_norm_on_its_own_parameters_keeps_the_output_scaling():
    derivation = derive(ConvBNAct(), (1, 5, 5))
    assert derivation.space.space("h1").scaling is Scaling.POSITIVE
    report = verify(derivation, samples=2, only=["network", "linear"])
    assert report.ok, report.text()


class _Wrap(nn.Module):
    def __init__(self, forward, **modules) -> None:
        super().__init__()
        self._forward = forward
        for name, module in modules.items():
            setattr(self, name, module)

    def forward(self, x):
        return self._forward(self, x)


@pytest.mark.parametrize(
    ("forward", "modules", "shape", "message"),
    [
        (
            lambda m, x: m.fc(x.permute(1, 0, 2)),
            {"fc": nn.Linear(3, 2)},
            (2, 3),
            "the batch axis (dim 0) must stay first",
        ),
        (
            lambda m, x: m.bn(x.permute(0, 2, 1)),
            {"bn": nn.BatchNorm1d(3)},
            (2, 3),
            "reads dim 1 as channels, but the channel axis of this value is dim 2",
        ),
        (
            lambda m, x: m.fc(x.permute(0, 2, 1).reshape(x.shape[0], -1)),
            {"fc": nn.Linear(6, 2)},
            (2, 3),
            "reshapes (2, 3, 2) to (2, 6)",
        ),
        (
            lambda m, x: m.fc(x.transpose(1, 2) + x),
            {"fc": nn.Linear(2, 2)},
            (2, 2),
            "adds a value with channels at dim 2 to one with channels at dim 1",
        ),
        (
            lambda m, x: m.fc(m.norm(x).mean(dim=2)),
            {"fc": nn.Linear(2, 2), "norm": nn.LayerNorm(3)},
            (2, 3),
            None,
        ),
    ],
    ids=["batch-moved", "bn-channels-last", "flatten-channels-last", "add-layouts", "fine"],
)
def test_layout_errors_name_the_operation(forward, modules, shape, message):
    module = _Wrap(forward, **modules)
    if message is None:
        derive(module, shape)
        return
    with pytest.raises(SpecError) as info:
        derive(module, shape)
    assert message in str(info.value), str(info.value)


class LeNet5(nn.Module):
    """LeCun et al.'s LeNet-5: tanh convolutions, average pooling, three linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5, padding=2)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.f5 = nn.Linear(16 * 5 * 5, 120)
        self.f6 = nn.Linear(120, 84)
        self.out = nn.Linear(84, 10)

    def forward(self, x):
        x = F.avg_pool2d(torch.tanh(self.c1(x)), 2)
        x = F.avg_pool2d(torch.tanh(self.c3(x)), 2).flatten(1)
        return self.out(torch.tanh(self.f6(torch.tanh(self.f5(x)))))


class SmallCNNZoo(nn.Module):
    """The Small CNN Zoo's network (Unterthiner et al.): three strided 3x3 convolutions,
    global average pooling, a linear head."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, width, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2),
            nn.ReLU(),
        )
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.convs(x).mean((2, 3)))


class UNet(nn.Module):
    """A two-level U-Net: BN-ReLU encoder, max pooling, a transposed-convolution decoder, skip
    concatenation, per-pixel output."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.up = nn.ConvTranspose2d(4, 3, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(6, 3, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        e = self.enc(x)
        m = self.mid(F.max_pool2d(e, 2))
        return self.out(self.dec(torch.cat([self.up(m), e], dim=1)))


class TokenMLP(nn.Module):
    """A ViT without attention: patch tokens, a class token, a position embedding, a
    pre-norm MLP block, the class token read out (plus the token mean: without attention
    nothing else reaches the class token)."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 5, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        x = x + self.fc2(F.gelu(self.fc1(self.norm(x))))
        return self.head(x[:, 0] + x.mean(dim=1))


@pytest.mark.parametrize(
    ("factory", "shape", "scalings"),
    [
        (LeNet5, (1, 28, 28), {"sign": 4}),
        (SmallCNNZoo, (1, 28, 28), {"positive": 3}),
        (UNet, (1, 4, 4), {"positive": 3, "nonzero": 1}),
    ],
    ids=["lenet5", "small-cnn-zoo", "unet"],
)
def test_classic_networks_trace_and_pass_the_network_check(factory, shape, scalings):
    derivation = derive(factory(), shape)
    counts: dict[str, int] = {}
    for space in derivation.space.spaces:
        if space.role == "hidden":
            counts[space.scaling.value] = counts.get(space.scaling.value, 0) + 1
    assert counts == scalings
    report = verify(derivation, samples=2, only=["network"])
    assert report.ok, report.text()


def test_unet_transposed_convolution_and_skip():
    derivation = derive(UNet(), (1, 4, 4))
    space = derivation.space
    up = _source(space, "up.weight")
    assert [(a.space, a.character) for a in up.axes[:2]] == [("h2", -1), ("h3", 1)]
    decoder = [t for t in space.tensors if t.source_key == "dec.0.weight"]
    assert len(decoder) == 2  # the skip concatenation: one part per side
    # (the linear layer's checks take a minute and a half here: in the slow tier below)
    report = verify(derivation, samples=2, only=["network", "invariant"])
    assert report.ok, report.text()


def test_class_token_and_position_embedding_are_tensors_of_the_weight_space():
    derivation = derive(TokenMLP(), (1, 8, 8))
    space = derivation.space
    assert [(a.space, a.character) for a in _source(space, "cls_token").axes] == [("h1", 1)]
    assert [(a.space, a.character) for a in _source(space, "pos_embed").axes] == [
        ("x5", 0),
        ("h1", 1),
    ]
    report = verify(derivation, samples=2, only=["network", "linear"])
    assert report.ok, report.text()
