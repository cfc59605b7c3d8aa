"""Hand-built layouts (the convention ``derive`` produces) and matching real networks.

Test modules reach the builders through the ``zoo`` fixture and parametrize over case names,
so nothing imports this file directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import pytest
import torch
from torch import Tensor, nn

from nfn_runtime import AxisLayout, SpaceLayout, TensorLayout, WeightSpaceLayout
from nfn_runtime.layout import ScalingKind

SCALING_OF: dict[str, ScalingKind] = {
    "relu": "positive",
    "tanh": "sign",
    "sin": "sign",
    "identity": "nonzero",
    "gelu": "none",
}


class Sin(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


ACTIVATION_MODULE: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sin": Sin,
    "identity": nn.Identity,
    "gelu": nn.GELU,
}


def _space_names(num_layers: int) -> list[str]:
    return ["in", *(f"h{i}" for i in range(1, num_layers)), "out"]


def mlp_layout(
    widths: Sequence[int],
    activations: Sequence[str] = (),
    setting: str = "hnp",
    bias: bool | Sequence[bool] = True,
) -> WeightSpaceLayout:
    """The layout of ``nn.Sequential(Linear, act, ..., Linear)`` with the given widths."""
    num_layers = len(widths) - 1
    activations = list(activations) or ["relu"] * (num_layers - 1)
    assert len(activations) == num_layers - 1
    biases = [bias] * num_layers if isinstance(bias, bool) else list(bias)
    names = _space_names(num_layers)
    io_permuted = setting == "np"
    spaces = [SpaceLayout("in", widths[0], io_permuted, "none")]
    spaces += [
        SpaceLayout(names[i], widths[i], True, SCALING_OF[activations[i - 1]])
        for i in range(1, num_layers)
    ]
    spaces.append(SpaceLayout("out", widths[-1], io_permuted, "none"))
    tensors: list[TensorLayout] = []
    for i in range(1, num_layers + 1):
        row, col = names[i], names[i - 1]
        key = f"{2 * (i - 1)}"
        tensors.append(
            TensorLayout(
                f"W{i}",
                "weight",
                i,
                (AxisLayout(row, 1), AxisLayout(col, -1)),
                f"{key}.weight",
                (widths[i], widths[i - 1]),
            )
        )
        if biases[i - 1]:
            tensors.append(
                TensorLayout(f"b{i}", "bias", i, (AxisLayout(row, 1),), f"{key}.bias", (widths[i],))
            )
    return WeightSpaceLayout(tuple(spaces), tuple(tensors))


def mlp_network(
    widths: Sequence[int], activations: Sequence[str] = (), bias: bool | Sequence[bool] = True
) -> nn.Sequential:
    num_layers = len(widths) - 1
    activations = list(activations) or ["relu"] * (num_layers - 1)
    biases = [bias] * num_layers if isinstance(bias, bool) else list(bias)
    modules: list[nn.Module] = []
    for i in range(num_layers):
        modules.append(nn.Linear(widths[i], widths[i + 1], bias=biases[i]))
        if i < num_layers - 1:
            modules.append(ACTIVATION_MODULE[activations[i]]())
    return nn.Sequential(*modules).double()


CONV_IMAGE = 4  # input images are CONV_IMAGE x CONV_IMAGE


def conv_layout(flatten: bool = True) -> WeightSpaceLayout:
    """Conv2d(2,3,3) relu Conv2d(3,4,3) tanh [Flatten Linear(4*16, 2)], padding 1, HNP.

    Kernel offsets are fixed spaces ``kh``/``kw`` (character 0); the linear layer after
    ``flatten`` has axes (out, c2, pos) against a state-dict shape (2, 64).
    """
    positions = CONV_IMAGE * CONV_IMAGE
    spaces = [
        SpaceLayout("in", 2, False, "none"),
        SpaceLayout("c1", 3, True, "positive"),
        SpaceLayout("c2", 4, True, "sign"),
        SpaceLayout("kh", 3, False, "none"),
        SpaceLayout("kw", 3, False, "none"),
    ]
    kernel = (AxisLayout("kh", 0), AxisLayout("kw", 0))
    tensors = [
        TensorLayout(
            "W1", "weight", 1, (AxisLayout("c1", 1), AxisLayout("in", -1), *kernel),
            "0.weight", (3, 2, 3, 3),
        ),
        TensorLayout("b1", "bias", 1, (AxisLayout("c1", 1),), "0.bias", (3,)),
        TensorLayout(
            "W2", "weight", 2, (AxisLayout("c2", 1), AxisLayout("c1", -1), *kernel),
            "2.weight", (4, 3, 3, 3),
        ),
        TensorLayout("b2", "bias", 2, (AxisLayout("c2", 1),), "2.bias", (4,)),
    ]  # fmt: skip
    if flatten:
        spaces += [SpaceLayout("pos", positions, False, "none"), SpaceLayout("out", 2, False)]
        tensors += [
            TensorLayout(
                "W3", "weight", 3, (AxisLayout("out", 1), AxisLayout("c2", -1), AxisLayout("pos", 0)),
                "5.weight", (2, 4 * positions),
            ),
            TensorLayout("b3", "bias", 3, (AxisLayout("out", 1),), "5.bias", (2,)),
        ]  # fmt: skip
    return WeightSpaceLayout(tuple(spaces), tuple(tensors))


def conv_network() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * CONV_IMAGE * CONV_IMAGE, 2),
    ).double()


def tied_layout(scaling: ScalingKind = "positive") -> WeightSpaceLayout:
    """A residual MLP in -> s -> s -> out: ``W2`` has axes (s, +1), (s, -1)."""
    spaces = (
        SpaceLayout("in", 3, False, "none"),
        SpaceLayout("s", 4, True, scaling),
        SpaceLayout("out", 2, False, "none"),
    )
    s_row, s_col = AxisLayout("s", 1), AxisLayout("s", -1)
    tensors = (
        TensorLayout("W1", "weight", 1, (s_row, AxisLayout("in", -1)), "l1.weight", (4, 3)),
        TensorLayout("b1", "bias", 1, (s_row,), "l1.bias", (4,)),
        TensorLayout("W2", "weight", 2, (s_row, s_col), "l2.weight", (4, 4)),
        TensorLayout("b2", "bias", 2, (s_row,), "l2.bias", (4,)),
        TensorLayout("W3", "weight", 3, (AxisLayout("out", 1), s_col), "l3.weight", (2, 4)),
        TensorLayout("b3", "bias", 3, (AxisLayout("out", 1),), "l3.bias", (2,)),
    )
    return WeightSpaceLayout(spaces, tensors)


class ResidualMLP(nn.Module):
    """``h = act(l1 x); h = h + act(l2 h); y = l3 h``: the spaces of both ``h`` are tied."""

    def __init__(self, activation: str = "relu") -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.act = ACTIVATION_MODULE[activation]()

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.l1(x))
        h = h + self.act(self.l2(h))
        output: Tensor = self.l3(h)
        return output


class LayoutZoo:
    """Builders for the layouts and networks above, handed to tests by the ``zoo`` fixture."""

    mlp = staticmethod(mlp_layout)
    mlp_network = staticmethod(mlp_network)
    conv = staticmethod(conv_layout)
    conv_network = staticmethod(conv_network)
    tied = staticmethod(tied_layout)
    residual_network = staticmethod(ResidualMLP)

    CASES: ClassVar[dict[str, Callable[[], WeightSpaceLayout]]] = {
        "hnp-L1": lambda: mlp_layout((3, 2)),
        "hnp-L2-relu": lambda: mlp_layout((3, 4, 2), ["relu"]),
        "hnp-L3-relu-tanh": lambda: mlp_layout((2, 3, 4, 2), ["relu", "tanh"]),
        "hnp-L3-identity-gelu": lambda: mlp_layout((2, 3, 2, 3), ["identity", "gelu"]),
        "hnp-width1": lambda: mlp_layout((2, 1, 1, 2), ["identity", "relu"]),
        "hnp-L2-no-b1": lambda: mlp_layout((3, 4, 2), ["sin"], bias=[False, True]),
        "np-L1": lambda: mlp_layout((3, 2), setting="np"),
        "np-L2-tanh": lambda: mlp_layout((3, 4, 2), ["tanh"], setting="np"),
        "np-L3-width1": lambda: mlp_layout((2, 1, 3, 2), ["relu", "identity"], setting="np"),
        "conv-kernel": lambda: conv_layout(flatten=False),
        "conv-flatten": conv_layout,
        "tied-square": tied_layout,
    }

    def case(self, name: str) -> WeightSpaceLayout:
        layout: WeightSpaceLayout = self.CASES[name]()
        return layout


@pytest.fixture(scope="session")
def zoo() -> LayoutZoo:
    return LayoutZoo()


@pytest.fixture(params=sorted(LayoutZoo.CASES))
def any_layout(request: pytest.FixtureRequest) -> WeightSpaceLayout:
    """Every layout case, with the case name as the test id."""
    return LayoutZoo.CASES[request.param]()


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)
