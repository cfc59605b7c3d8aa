"""Tracing a PyTorch module and deriving its complete linear basis, for deep CNNs and residual
networks (target: a 20-layer network in under 2 seconds), split into the pipeline's steps.

    python benchmarks/trace_time.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from derive.basis import linear as basis_module
from derive.basis import partitions
from derive.frontend.torch_spec import torch_spec
from derive.frontend.trace import trace_network
from derive.pipeline import Derivation, generate
from derive.symmetry.group import derive_group
from nfn_runtime.architectures import activation_module


class DeepCNN(nn.Module):
    """``depth`` 3x3 convolutions (32 channels, padding 1), global average pooling, linear."""

    def __init__(self, depth: int, activation: str, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        previous = 3
        for _ in range(depth):
            layers += [nn.Conv2d(previous, width, 3, padding=1), activation_module(activation)]
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class Block(nn.Module):
    def __init__(self, width: int, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.act = activation_module(activation)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(self.act(self.conv1(x)))


class ResNet(nn.Module):
    """A stem, ``depth // 2`` residual blocks of two 3x3 convs (one tied stream space), head."""

    def __init__(self, depth: int, activation: str, width: int = 32):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.Sequential(*(Block(width, activation) for _ in range(depth // 2)))
        self.act = activation_module(activation)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        h = self.act(self.blocks(self.stem(x)))
        return self.head(h.mean((2, 3)))


class ResMLP(nn.Module):
    """``depth`` linear layers: an input layer, residual blocks of two, an output layer."""

    def __init__(self, depth: int, activation: str, width: int = 128):
        super().__init__()
        self.fc_in = nn.Linear(64, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Linear(width, width), activation_module(activation), nn.Linear(width, width)
            )
            for _ in range((depth - 2) // 2)
        )
        self.act = activation_module(activation)
        self.fc_out = nn.Linear(width, 10)

    def forward(self, x):
        h = self.fc_in(x)
        for block in self.blocks:
            h = h + block(h)
        return self.fc_out(self.act(h))


NETWORKS = {
    "CNN": (DeepCNN, (3, 16, 16)),
    "ResNet (conv)": (ResNet, (3, 16, 16)),
    "ResMLP": (ResMLP, (64,)),
}


def _clear() -> None:
    partitions.set_partitions.cache_clear()
    partitions.partition_count.cache_clear()
    basis_module._space_patterns.cache_clear()
    basis_module._pair_patterns.cache_clear()


def run(kind: str, depth: int, activation: str) -> dict[str, float]:
    factory, shape = NETWORKS[kind]
    model = factory(depth, activation)
    spec = torch_spec(model, shape, name="bench")
    _clear()
    times: dict[str, float] = {}
    start = time.perf_counter()
    traced = trace_network(model, shape, "bench", "bench")
    times["trace"] = time.perf_counter() - start
    mark = time.perf_counter()
    space = derive_group(traced)
    times["group"] = time.perf_counter() - mark
    mark = time.perf_counter()
    derivation = Derivation(spec=spec, space=space)
    basis = derivation.basis
    times["basis"] = time.perf_counter() - mark
    times["total"] = time.perf_counter() - start
    mark = time.perf_counter()
    generate(derivation, "linear")
    times["generate"] = time.perf_counter() - mark
    times["dim"] = basis.dim
    times["tensors"] = len(space.tensors)
    return times


def main() -> None:
    torch.manual_seed(0)
    run("CNN", 2, "relu")  # warm up torch.fx and the imports
    print("Trace + group + complete linear basis (what `inspect --torch` computes), median of 3")
    header = (
        f"{'network':>14s} {'act':>5s} {'L':>3s} {'tensors':>7s} {'dim':>7s} {'trace':>9s} "
        f"{'group':>8s} {'basis':>9s} {'total':>9s} {'+generate':>10s}"
    )
    print(header)
    for kind in NETWORKS:
        for activation in ("relu", "tanh", "gelu"):
            for depth in (10, 20, 40):
                runs = [run(kind, depth, activation) for _ in range(3)]
                med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                print(
                    f"{kind:>14s} {activation:>5s} {depth:3d} {int(med['tensors']):7d} "
                    f"{int(med['dim']):7d} {med['trace'] * 1e3:6.0f} ms {med['group'] * 1e3:5.0f} ms "
                    f"{med['basis'] * 1e3:6.0f} ms {med['total'] * 1e3:6.0f} ms "
                    f"{med['generate'] * 1e3:7.0f} ms"
                )


if __name__ == "__main__":
    main()
