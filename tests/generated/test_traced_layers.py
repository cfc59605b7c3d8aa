"""Generated layers for traced architectures (conv kernels, flatten, tied residual spaces,
normalizations) pass every check of ``verify``: reference agreement, float64/float32
equivariance, sensitivity, null-space completeness and, where they apply, polynomial layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from derive.pipeline import derive, verify
from nfn_runtime import architectures as arch


class TiedResidual(nn.Module):
    def __init__(self, activation: str = "relu", width: int = 3):
        super().__init__()
        self.inp = nn.Linear(2, width)
        self.block = nn.Linear(width, width)
        self.act = arch.activation_module(activation)
        self.out = nn.Linear(width, 2)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.act(self.block(h))
        return self.out(h)


class ConvTied(nn.Module):
    """A conv residual block: the kernel carries the stream space on both axes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv1d(1, 2, 1)
        self.conv = nn.Conv1d(2, 2, 3, padding=1)
        self.head = nn.Linear(2, 2)

    def forward(self, x):
        h = self.stem(x)
        h = h + torch.tanh(self.conv(h))
        return self.head(h.amax(-1))


def _norms():
    return nn.Sequential(
        nn.Conv1d(1, 2, 2),
        nn.BatchNorm1d(2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4, 3),
        nn.LayerNorm(3),
        nn.ReLU(),
        nn.Linear(3, 2),
    )


CASES = {
    "cnn-relu": (lambda: arch.SmallCNN(1, (2, 2), 2, "relu"), (1, 4, 4), {}),
    "cnn-relu-complete": (  # slow: the complete family over two conv spaces
        lambda: arch.SmallCNN(1, (2, 2), 2, "relu"),
        (1, 4, 4),
        {"family": "complete", "degree": 2},
    ),
    "cnn1-relu-complete": (  # its fast-tier stand-in: the complete family over one conv space
        lambda: arch.SmallCNN(1, (2,), 2, "relu"),
        (1, 4, 4),
        {"family": "complete", "degree": 2},
    ),
    "cnn-tanh-np": (lambda: arch.SmallCNN(1, (2, 2), 2, "tanh"), (1, 4, 4), {"permute": "all"}),
    "flatten-cnn": (lambda: arch.FlattenCNN(1, (2, 2), 4, 2), (1, 4, 4), {}),
    "siren-magep": (lambda: arch.Siren(2, (3, 3), 1), (2,), {}),
    "tied-residual-complete": (TiedResidual, (2,), {"family": "complete", "degree": 2}),
    "tied-residual-gelu": (lambda: TiedResidual("gelu", 2), (2,), {}),
    "conv-tied-maxpool": (ConvTied, (1, 3), {}),
    "norms": (_norms, (1, 3), {}),
}


SLOW = {"cnn-relu-complete"}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES]
)
def test_verify_passes(case):
    factory, shape, options = CASES[case]
    permute = options.get("permute", "hidden")
    torch.manual_seed(0)
    derivation = derive(factory(), shape, permute=permute)
    report = verify(
        derivation,
        samples=2,
        degree=options.get("degree"),
        family=options.get("family", "magep"),
    )
    assert report.ok, report.text()
    names = {c.name for c in report.checks}
    expected = {
        "network group check",
        "network outside group",
        "linear matches reference",
        "linear equivariance (float64)",
        "linear sensitivity",
        "completeness",
    }
    assert expected <= names
    polynomial = [c for c in report.checks if c.name.startswith("polynomial")]
    applicable = case == "siren-magep" or options.get("family") == "complete"
    assert any("matches reference" in c.name for c in polynomial) == applicable
