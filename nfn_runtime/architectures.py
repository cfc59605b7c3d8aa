"""Reference network architectures whose weights NFNs read.

Plain ``nn.Module`` classes (no project imports), used for the generated examples, the model
zoos and the tests: the MLP that every ``--mlp`` spec builds (an ``nn.Sequential`` of
``nn.Linear`` layers and named :class:`Activation` modules), a small CNN of the kind found in generalization-prediction zoos (conv
layers, global average pooling, a linear head), a CNN that flattens into a linear head, a SIREN
(sine activations) and a residual MLP. Each has a zero-argument factory for
``nfn-derive --torch nfn_runtime.architectures:NAME``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATION_MODULES",
    "ACTIVATION_FUNCTIONS",
    "PRELU_SLOPE",
    "Activation",
    "mlp",
    "SmallCNN",
    "FlattenCNN",
    "Siren",
    "ResidualMLP",
    "activation_module",
    "small_cnn",
    "small_cnn_tanh",
    "flatten_cnn",
    "siren",
    "residual_mlp",
]

#: activation name -> module class, for the architectures below
ACTIVATION_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}


def activation_module(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (a key of :data:`ACTIVATION_MODULES`)."""
    try:
        return ACTIVATION_MODULES[name]()
    except KeyError:
        valid = ", ".join(ACTIVATION_MODULES)
        raise ValueError(f"unknown activation {name!r} (valid: {valid})") from None


#: the slope of ``prelu`` in :class:`Activation` (a PReLU at PyTorch's initial slope, kept fixed)
PRELU_SLOPE = 0.25

#: activation name -> the function :class:`Activation` applies (the names ``nfn-derive`` knows)
ACTIVATION_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "prelu": lambda x: F.leaky_relu(x, PRELU_SLOPE),
    "abs": torch.abs,
    "tanh": torch.tanh,
    "sin": torch.sin,
    "softsign": F.softsign,
    "hardtanh": F.hardtanh,
    "tanhshrink": F.tanhshrink,
    "softshrink": F.softshrink,
    "hardshrink": F.hardshrink,
    "identity": lambda x: x,
    "gelu": F.gelu,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "softplus": F.softplus,
    "elu": F.elu,
    "selu": F.selu,
    "celu": F.celu,
    "mish": F.mish,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "logsigmoid": F.logsigmoid,
    "cos": torch.cos,
    "hardtanh_asymmetric": lambda x: F.hardtanh(x, 0.0, 1.0),
}


class Activation(nn.Module):
    """A pointwise activation known by its name (a key of :data:`ACTIVATION_FUNCTIONS`).

    ``nfn-derive`` traces it as one operation and reads the name, so an MLP spec's
    activations reach the group exactly as written (``prelu`` is a PReLU whose slope stays at
    :data:`PRELU_SLOPE`; a learned slope would be a parameter of the weight space).
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in ACTIVATION_FUNCTIONS:
            valid = ", ".join(ACTIVATION_FUNCTIONS)
            raise ValueError(f"unknown activation {name!r} (valid: {valid})")
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        return ACTIVATION_FUNCTIONS[self.name](x)

    def extra_repr(self) -> str:
        return self.name


def mlp(widths: Sequence[int], activations: Sequence[str]) -> nn.Sequential:
    """``Linear(n0, n1), Activation(a1), ..., Linear(n_{L-1}, n_L)``: state-dict keys
    ``0.weight, 0.bias, 2.weight, ...``, one activation per hidden layer."""
    if len(activations) != len(widths) - 2:
        raise ValueError(
            f"{len(widths)} widths need {len(widths) - 2} activations, got {len(activations)}"
        )
    layers: list[nn.Module] = []
    for index, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(n_in, n_out))
        if index < len(activations):
            layers.append(Activation(activations[index]))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Conv layers (stride 2, padding 1), each followed by the activation, then global average
    pooling and a linear head; optional dropout before the head (the Small CNN Zoo's shape)."""

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 16, 16),
        num_classes: int = 10,
        activation: str = "relu",
        kernel_size: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers.append(nn.Conv2d(previous, width, kernel_size, stride=2, padding=1))
            layers.append(activation_module(activation))
            previous = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(previous, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x)).flatten(1)
        logits: Tensor = self.head(self.dropout(x))
        return logits


class FlattenCNN(nn.Module):
    """Two conv layers, then ``flatten`` of the feature map into a linear head (no pooling):
    the head's columns index (channel, position) pairs."""

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (4, 4),
        image_size: int = 8,
        num_classes: int = 10,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        first, second = channels
        self.conv1 = nn.Conv2d(in_channels, first, 3, padding=1)
        self.act1 = activation_module(activation)
        self.conv2 = nn.Conv2d(first, second, 3, stride=2, padding=1)
        self.act2 = activation_module(activation)
        side = (image_size + 1) // 2
        self.head = nn.Linear(second * side * side, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        logits: Tensor = self.head(torch.flatten(x, 1))
        return logits


class Siren(nn.Module):
    """A SIREN: linear layers with ``sin(omega * x)`` activations and a linear output layer."""

    def __init__(
        self,
        in_features: int = 2,
        hidden: Sequence[int] = (32, 32),
        out_features: int = 1,
        omega: float = 30.0,
    ) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.out = nn.Linear(widths[-1], out_features)
        self.omega = omega

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.hidden:
            x = torch.sin(self.omega * layer(x))
        out: Tensor = self.out(x)
        return out


class ResidualMLP(nn.Module):
    """``h = fc_in(x)``; per block ``h = h + fc2(act(fc1(h)))``; ``out = fc_out(act(h))``.

    Every block's ``fc2`` writes into the residual stream, so all of them share one neuron
    space with ``fc_in``'s output (a tied space).
    """

    def __init__(
        self,
        in_features: int = 4,
        width: int = 8,
        hidden: int = 8,
        num_blocks: int = 2,
        out_features: int = 3,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.fc_in = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Linear(width, hidden), activation_module(activation), nn.Linear(hidden, width)
            )
            for _ in range(num_blocks)
        )
        self.act = activation_module(activation)
        self.fc_out = nn.Linear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc_in(x)
        for block in self.blocks:
            h = h + block(h)
        out: Tensor = self.fc_out(self.act(h))
        return out


def small_cnn() -> SmallCNN:
    """The generated example: 1 -> 8 -> 8 -> 8 channels (3x3, stride 2), ReLU, 10 classes."""
    return SmallCNN(in_channels=1, channels=(8, 8, 8), num_classes=10, activation="relu")


def small_cnn_tanh() -> SmallCNN:
    """As :func:`small_cnn` with tanh activations."""
    return SmallCNN(in_channels=1, channels=(8, 8, 8), num_classes=10, activation="tanh")


def flatten_cnn() -> FlattenCNN:
    """Two ReLU conv layers on 8x8 images, flattened into a 10-class linear head."""
    return FlattenCNN()


def siren() -> Siren:
    """The generated example: a SIREN 2 -> 32 -> 32 -> 1 with omega 30."""
    return Siren(2, (32, 32), 1, 30.0)


def residual_mlp() -> ResidualMLP:
    """The generated example: 16 -> 32 (stream) with two ReLU blocks (hidden 32) -> 10."""
    return ResidualMLP(16, 32, 32, 2, 10, "relu")
