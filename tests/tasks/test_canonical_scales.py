"""The canonical point of a network's scaling orbit (``nfn_runtime.canonical_scales``) on the
zoos' real architectures: the same for every element of the orbit (the permutations and head
relabellings then only move it), the same function as the network, a fixed point, normalized
as promised; and the ``canon-*`` models built on it exactly invariant under the whole group."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from nfn_runtime import (
    GroupElement,
    WeightSpace,
    apply_group_element,
    sample_group_element,
    state_dicts_from_weight_space,
)
from nfn_runtime.canonical_scales import canonical_order, canonical_scales
from nfn_tasks.data import digits, pixel_grid
from nfn_tasks.models import (
    CANONICAL_KINDS,
    ModelConfig,
    build_model,
    calibrate,
    weight_space_layout,
)
from nfn_tasks.train import TaskData, TrainConfig, task_data, task_probes
from nfn_tasks.zoo import Zoo

NAMES = ("generalization-relu", "generalization-tanh", "inr", "generalization-transformer")
MODEL = ModelConfig(channels=3, layers=2, invariant_dim=6, head_hidden=8)


@pytest.fixture(scope="module")
def tasks(zoos, transformer_zoo) -> dict[str, Zoo]:
    return {**zoos, "generalization-transformer": transformer_zoo}


def _data(tasks: dict[str, Zoo], name: str) -> TaskData:
    return task_data(tasks[name], "inr" if name == "inr" else "generalization", TrainConfig())


def _layout(data: TaskData):
    return weight_space_layout(data.zoo.architecture, tuple(data.zoo.input_shape), "monomial")


def _real(data: TaskData, count: int = 5) -> WeightSpace:
    """The first networks' real weights, float64."""
    named = data.weights.named(data.layout)
    return WeightSpace.from_named(
        data.layout,
        {k: v[:count].double() * data.scales.get(k, 1.0) for k, v in named.items()},
    )


def _element(data: TaskData, seed: int) -> GroupElement:
    layout = _layout(data)
    generator = torch.Generator().manual_seed(seed)
    return sample_group_element(layout, generator, move_heads=bool(layout.heads))


def _close(a: WeightSpace, b: WeightSpace, layout, tolerance: float = 1e-12) -> None:
    for name, value in a.named(layout).items():
        other = b.named(layout)[name]
        scale = other.abs().max().clamp(min=1e-300)
        assert float((value - other).abs().max() / scale) < tolerance, name


@pytest.mark.parametrize("name", NAMES)
def test_every_element_of_an_orbit_has_the_same_canonical_point(tasks, name) -> None:
    data = _data(tasks, name)
    layout = _layout(data)
    networks = _real(data)
    canonical, _ = canonical_scales(networks, layout)
    for seed in range(3):
        g = _element(data, seed)
        assert any(not bool((d == 1).all()) for d in g.scales.values())
        moved, _ = canonical_scales(apply_group_element(networks, layout, g), layout)
        unscaled = replace(g, scales={s: torch.ones_like(d) for s, d in g.scales.items()})
        _close(moved, apply_group_element(canonical, layout, unscaled), layout)


def _outputs(data: TaskData, ws: WeightSpace, index: int) -> torch.Tensor:
    network = data.zoo.network(index).double().eval()
    network.load_state_dict(state_dicts_from_weight_space(ws, data.layout)[index])
    inputs = pixel_grid().double() if data.zoo.kind == "inr" else digits(torch.float64)[0][:64]
    with torch.no_grad():
        out: torch.Tensor = network(inputs)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_the_canonical_network_computes_the_same_function(tasks, name) -> None:
    data = _data(tasks, name)
    networks = _real(data)
    canonical, factors = canonical_scales(networks, _layout(data))
    assert any(not torch.allclose(f, torch.ones_like(f)) for f in factors.values())
    for index in range(3):
        before, after = _outputs(data, networks, index), _outputs(data, canonical, index)
        torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_the_canonical_point_is_a_fixed_point_and_normalized(tasks, name) -> None:
    data = _data(tasks, name)
    layout = _layout(data)
    canonical, _ = canonical_scales(_real(data), layout)
    again, factors = canonical_scales(canonical, layout)
    _close(again, canonical, layout)
    for space in factors:
        kind = layout.space(space).scaling
        incoming = [
            canonical.named(layout)[t.name].movedim(2 + i, 1).flatten(2)
            for t in layout.tensors
            for i, axis in enumerate(t.axes)
            if axis.space == space and axis.character == 1
        ]
        if kind in ("positive", "nonzero"):
            norms = sum(v.pow(2).sum(-1) for v in incoming)
            torch.testing.assert_close(norms, torch.ones_like(norms))
        if kind in ("sign", "nonzero"):
            assert bool((sum(v.sum(-1) for v in incoming) >= 0).all())


def test_no_canonical_order_where_scalings_feed_each_other() -> None:
    layout = weight_space_layout(
        "nfn_tasks.zoo_transformer:digit_transformer_nonorm", (1, 8, 8), "monomial"
    )
    with pytest.raises(ValueError, match=r"the scalings of spaces \['h1', .*feed each other"):
        canonical_order(layout)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", CANONICAL_KINDS)
def test_canonical_models_are_invariant_under_the_whole_group(tasks, kind, name) -> None:
    data = _data(tasks, name)
    config = replace(MODEL, probe_grid=8 if name == "inr" else 0,
                     probe_images=2 if name != "inr" else 0)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(kind, data.zoo.architecture, data.zoo.input_shape, data.weights,
                        data.outputs, config, probes=task_probes(data, config))  # fmt: skip
    calibrate(model, data.weights.map(lambda t: t.index_select(0, data.train)))
    model = model.double().eval()
    networks = data.weights.map(lambda t: t[:6].double())
    with torch.no_grad():
        before = model(networks)
        for seed in range(2):
            after = model(apply_group_element(networks, data.layout, _element(data, seed)))
            assert float((after - before).abs().max() / before.abs().max()) < 1e-10
        base = model.base  # the permutation-invariant model alone is not
        moved = apply_group_element(networks, data.layout, _element(data, 0))
        assert float((base(moved) - base(networks)).abs().max() / before.abs().max()) > 1e-4


def test_canonical_kinds_say_why_they_cannot_be_built() -> None:
    from nfn_tasks.models import unavailable_reason

    nonorm = "nfn_tasks.zoo_transformer:digit_transformer_nonorm"
    reason = unavailable_reason("canon-hnp", nonorm, (1, 8, 8))
    assert reason is not None and reason.startswith("no canonical point of the scalings")
    assert (
        unavailable_reason("canon-statnn", "nfn_runtime.architectures:small_cnn", (1, 8, 8)) is None
    )


def test_canonical_order_refuses_what_it_cannot_canonicalize() -> None:
    from nfn_runtime import AxisLayout, SpaceLayout, TensorLayout, WeightSpaceLayout

    spaces = (SpaceLayout("in", 2, False, "none"), SpaceLayout("h", 3, True, "positive"))

    def layout(*tensors: TensorLayout) -> WeightSpaceLayout:
        return WeightSpaceLayout(spaces=spaces, tensors=tensors)

    outgoing = TensorLayout("W1", "weight", 1, (AxisLayout("in", 1), AxisLayout("h", -1)))
    with pytest.raises(ValueError, match="space 'h' has no incoming tensor"):
        canonical_order(layout(outgoing))
    squared = TensorLayout("W1", "weight", 1, (AxisLayout("h", 2), AxisLayout("in", -1)))
    with pytest.raises(ValueError, match="space 'h': character 2 on tensor 'W1'"):
        canonical_order(layout(squared))
    both = TensorLayout("W1", "weight", 1, (AxisLayout("h", 1), AxisLayout("h", -1)))
    with pytest.raises(ValueError, match="space 'h' appears twice on one of its incoming"):
        canonical_order(layout(both))
