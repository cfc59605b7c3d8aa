"""The robustness experiment: test networks transformed by random group elements (so they
compute the same function), and every trained model evaluated on them.

ReLU zoos are rescaled neuron by neuron with factors drawn log-uniformly from ``[1, 10^k]``
(k = 1..4) and their hidden neurons permuted; tanh zoos and SIRENs get random sign flips and
permutations. Transformer zoos get the same ranges with a random sign on the spaces whose
scaling is non-zero (per head: the query/key dimensions, W_Q rows times s and W_K rows times
1/s, and the value dimensions, W_V rows times t and out-projection columns times 1/t), positive
factors on the ReLU MLP's hidden neurons, and permutations of every permuted space (within
each head, the MLP's hidden neurons, the residual stream). Before any model sees them, each transformed network is run against its original
on real inputs (digits images, or the INR's pixel grid) in float64 to confirm the function is
unchanged. Models are evaluated in float64, so an exactly invariant model gives the same
predictions up to float64 rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nfn_runtime import (
    WeightSpace,
    WeightSpaceLayout,
    apply_group_element,
    sample_group_element,
    state_dicts_from_weight_space,
)
from nfn_tasks.data import digits, pixel_grid
from nfn_tasks.models import weight_space_layout
from nfn_tasks.train import TaskData, predict, task_metric

__all__ = [
    "Transformation",
    "transformations",
    "held_out_networks",
    "transform_test_networks",
    "function_change",
    "evaluate_transformed",
]

#: exponents k of the rescaling ranges [1, 10^k] for ReLU zoos
SCALE_EXPONENTS = (1, 2, 3, 4)


@dataclass(frozen=True)
class Transformation:
    """A kind of group element applied to every test network (a fresh one per network)."""

    label: str
    scale_range: tuple[float, float]  # positive scaling: factors log-uniform in this range
    level: int  # k for rescaling; 0 for sign flips
    signed: bool = False  # non-zero scaling (attention heads): random signs on those spaces too

    def describe(self) -> str:
        if self.level and self.signed:
            return (
                f"per-head scales ±[1, 1e{self.level}], MLP scales [1, 1e{self.level}] "
                "+ permutations"
            )
        if self.level:
            return f"scales in [1, 1e{self.level}] + permutations"
        return "sign flips + permutations"


def transformations(zoo_activation: str, zoo_kind: str = "cnn") -> tuple[Transformation, ...]:
    """The transformations of the experiment for a zoo with this activation (and kind)."""
    if zoo_activation == "relu":
        signed = zoo_kind == "transformer"
        return tuple(Transformation(f"k={k}", (1.0, 10.0**k), k, signed) for k in SCALE_EXPONENTS)
    return (Transformation("sign", (1.0, 1.0), 0),)


def group_layout(data: TaskData) -> WeightSpaceLayout:
    """The zoo's full group: hidden permutations and the scaling its activation allows."""
    zoo = data.zoo
    return weight_space_layout(zoo.architecture, tuple(zoo.input_shape), "monomial")


def held_out_networks(data: TaskData) -> WeightSpace:
    """The (normalized) test networks in float64."""
    return data.weights.map(lambda t: t.index_select(0, data.test).double())


def transform_test_networks(
    data: TaskData, transformation: Transformation, seed: int
) -> WeightSpace:
    """The test networks (float64), each moved by its own random group element."""
    layout = group_layout(data)
    generator = torch.Generator().manual_seed(seed)
    original = held_out_networks(data)
    moved: list[dict[str, Tensor]] = []
    for index in range(len(data.test)):
        one = original.map(lambda t: t.narrow(0, index, 1))  # noqa: B023
        g = sample_group_element(layout, generator, transformation.scale_range)
        moved.append(apply_group_element(one, layout, g).named(layout))
    return WeightSpace.from_named(
        layout, {name: torch.cat([m[name] for m in moved]) for name in moved[0]}
    )


def _inputs(data: TaskData) -> Tensor:
    if data.task == "generalization":
        images, _ = digits(torch.float64)
        return images[:128]
    return pixel_grid().double()


def _unnormalized(data: TaskData, ws: WeightSpace) -> WeightSpace:
    """The zoo's own weights back from the normalized ones in ``data``."""
    named = ws.named(data.layout)
    return WeightSpace.from_named(
        data.layout, {name: value * data.scales[name] for name, value in named.items()}
    )


def function_change(data: TaskData, moved: WeightSpace) -> float:
    """Largest relative change of a test network's outputs under its transformation."""
    layout = data.layout
    before = state_dicts_from_weight_space(_unnormalized(data, held_out_networks(data)), layout)
    after = state_dicts_from_weight_space(_unnormalized(data, moved), layout)
    inputs = _inputs(data)
    network = data.zoo.network(0).double().eval()
    worst = 0.0
    with torch.no_grad():
        for state_a, state_b in zip(before, after):
            out_a = torch.func.functional_call(network, state_a, (inputs,))
            out_b = torch.func.functional_call(network, state_b, (inputs,))
            scale = float(out_a.norm()) or 1.0
            worst = max(worst, float((out_b - out_a).norm()) / scale)
    return worst


def evaluate_transformed(
    model: nn.Module, data: TaskData, moved: Mapping[str, WeightSpace]
) -> tuple[float, dict[str, float]]:
    """In float64: the metric on the original test networks, and on each transformed set."""
    model64 = copy.deepcopy(model).double().eval()
    targets = data.targets[data.test]
    index = torch.arange(len(data.test))

    def metric(networks: WeightSpace) -> float:
        return task_metric(data.task, predict(model64, networks, index), targets)

    return metric(held_out_networks(data)), {label: metric(ws) for label, ws in moved.items()}
