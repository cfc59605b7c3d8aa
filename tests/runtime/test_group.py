"""The group action: coordinates, group laws, sampling, transforms outside the group."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from nfn_runtime import (
    GroupElement,
    WeightSpace,
    WeightSpaceLayout,
    apply_axis_transform,
    apply_group_element,
    identity_element,
    inverse_permutation,
    outside_group_kinds,
    random_weight_space,
    sample_group_element,
    sample_outside_group,
)


def reference_action(ws: WeightSpace, layout: WeightSpaceLayout, g: GroupElement) -> WeightSpace:
    """Entry by entry: ``new[j_1..j_r] = prod_a d_a[j_a]^chi_a * old[pi_a^-1(j_1)..]``."""
    out: dict[str, torch.Tensor] = {}
    for spec in layout.tensors:
        old = ws.get(spec)
        new = torch.empty_like(old)
        inverses = [inverse_permutation(g.permutations[a.space]) for a in spec.axes]
        for index in itertools.product(*(range(n) for n in layout.shape(spec))):
            source = tuple(int(inverses[a][j]) for a, j in enumerate(index))
            factor = 1.0
            for axis, j in zip(spec.axes, index):
                factor *= float(g.scales[axis.space][j]) ** axis.character
            target: tuple[slice | int, ...] = (slice(None), slice(None), *index)
            origin: tuple[slice | int, ...] = (slice(None), slice(None), *source)
            new[target] = factor * old[origin]
        out[spec.name] = new
    return WeightSpace.from_named(layout, out)


def assert_close(a: WeightSpace, b: WeightSpace, rtol: float = 1e-12) -> None:
    for x, y in zip(a.tensors(), b.tensors()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=1e-12)


def test_action_matches_reference(
    any_layout: WeightSpaceLayout, generator: torch.Generator
) -> None:
    ws = random_weight_space(any_layout, batch=2, channels=2, generator=generator)
    g = sample_group_element(any_layout, generator)
    assert_close(apply_group_element(ws, any_layout, g), reference_action(ws, any_layout, g))


@pytest.mark.parametrize("setting", ["hnp", "np"])
@pytest.mark.parametrize(
    "widths, activations",
    [((3, 2), []), ((3, 4, 2), ["relu"]), ((2, 3, 1, 2), ["tanh", "identity"])],
    ids=["L1", "L2-relu", "L3-tanh-identity"],
)
def test_mlp_action_matches_math_formula(
    zoo: Any, setting: str, widths: tuple[int, ...], activations: list[str]
) -> None:
    """``(g.W)(i)[j,k] = d_i[j] / d_{i-1}[k] W(i)[pi_i^-1 j, pi_{i-1}^-1 k]`` (docs/math.md section 2)."""
    layout = zoo.mlp(widths, activations, setting)
    gen = torch.Generator().manual_seed(1)
    ws = random_weight_space(layout, batch=3, channels=2, generator=gen)
    g = sample_group_element(layout, gen)
    moved = apply_group_element(ws, layout, g)
    names = [s.name for s in layout.spaces]
    for i in range(1, len(widths)):
        row, col = names[i], names[i - 1]
        inv_row = inverse_permutation(g.permutations[row])
        inv_col = inverse_permutation(g.permutations[col])
        d_row, d_col = g.scales[row], g.scales[col]
        weight, bias = ws.weights[i - 1], ws.biases[i - 1]
        assert bias is not None
        expected_w = (d_row[:, None] / d_col[None, :]) * weight[:, :, inv_row][:, :, :, inv_col]
        expected_b = d_row * bias[:, :, inv_row]
        torch.testing.assert_close(moved.weights[i - 1], expected_w, rtol=1e-13, atol=0)
        torch.testing.assert_close(moved.biases[i - 1], expected_b, rtol=1e-13, atol=0)


def test_inverse_and_compose(any_layout: WeightSpaceLayout, generator: torch.Generator) -> None:
    ws = random_weight_space(any_layout, generator=generator)
    g = sample_group_element(any_layout, generator)
    h = sample_group_element(any_layout, generator)
    act = apply_group_element
    assert_close(act(act(ws, any_layout, g), any_layout, g.inverse()), ws, rtol=1e-10)
    assert_close(act(act(ws, any_layout, g.inverse()), any_layout, g), ws, rtol=1e-10)
    assert_close(act(ws, any_layout, g.compose(h)), act(act(ws, any_layout, h), any_layout, g))
    assert_close(act(ws, any_layout, identity_element(any_layout)), ws, rtol=0)
    gg = g.compose(g.inverse())
    for space in any_layout.spaces:
        assert torch.equal(gg.permutations[space.name], torch.arange(space.size))
        torch.testing.assert_close(gg.scales[space.name], torch.ones(space.size).double())


def test_sampled_elements_respect_each_space(zoo: Any) -> None:
    layout = zoo.mlp((2, 50, 50, 50, 50, 2), ["relu", "tanh", "identity", "gelu"])
    g = sample_group_element(layout, torch.Generator().manual_seed(3), scale_range=(0.5, 4.0))
    for name in ("in", "out"):
        assert torch.equal(g.permutations[name], torch.arange(layout.space(name).size))
        assert torch.equal(g.scales[name], torch.ones(2, dtype=torch.float64))
    positive, sign, nonzero, unscaled = (g.scales[f"h{i}"] for i in range(1, 5))
    assert bool(((positive >= 0.5) & (positive <= 4.0)).all())
    assert set(sign.tolist()) == {1.0, -1.0}
    assert bool((nonzero < 0).any() and (nonzero > 0).any())
    assert bool(((nonzero.abs() >= 0.5) & (nonzero.abs() <= 4.0)).all())
    assert torch.equal(unscaled, torch.ones(50, dtype=torch.float64))
    assert not torch.equal(g.permutations["h1"], torch.arange(50))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_action_keeps_dtype_and_any_channel_count(zoo: Any, dtype: torch.dtype) -> None:
    layout = zoo.mlp((3, 4, 2), ["identity"])
    gen = torch.Generator().manual_seed(0)
    for channels in (1, 5):
        ws = random_weight_space(layout, batch=1, channels=channels, dtype=dtype, generator=gen)
        moved = apply_group_element(ws, layout, sample_group_element(layout, gen))
        assert moved.dtype == dtype and moved.channels == channels


def test_action_rejects_mismatched_weight_space(zoo: Any) -> None:
    layout = zoo.mlp((3, 4, 2), ["relu"])
    other = zoo.mlp((3, 5, 2), ["relu"])
    ws = random_weight_space(other)
    with pytest.raises(ValueError, match="tensor 'W1'"):
        apply_group_element(ws, layout, identity_element(layout))


def test_axis_transform_touches_one_axis_only(zoo: Any, generator: torch.Generator) -> None:
    layout = zoo.mlp((3, 4, 2), ["relu"])
    ws = random_weight_space(layout, generator=generator)
    perm = torch.tensor([1, 2, 3, 0])
    scale = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    moved = apply_axis_transform(ws, layout, "W1", 0, permutation=perm, scale=scale)
    expected = ws.weights[0][:, :, inverse_permutation(perm)] * scale[:, None]
    torch.testing.assert_close(moved.weights[0], expected)
    for name in ("b1", "W2", "b2"):
        assert torch.equal(moved.get(layout.tensor(name)), ws.get(layout.tensor(name)))
    with pytest.raises(ValueError, match="shape \\(4,\\)"):
        apply_axis_transform(ws, layout, "W1", 0, scale=torch.ones(3))


@pytest.mark.parametrize(
    "case, kinds",
    [
        ("hnp-L1", ["decoupled_scale", "negative_scale", "permute_fixed"]),
        (
            "hnp-L3-relu-tanh",
            ["decoupled_permutation", "decoupled_scale", "negative_scale", "scale_on_sign_space",
             "permute_fixed"],
        ),
        ("np-L1", ["decoupled_permutation", "decoupled_scale", "negative_scale", "positive_scale"]),
        ("hnp-width1", ["decoupled_scale", "negative_scale", "permute_fixed"]),
    ],
    ids=["hnp-L1", "hnp-L3-relu-tanh", "np-L1", "hnp-width1"],
)  # fmt: skip
def test_outside_group_kinds(zoo: Any, case: str, kinds: list[str]) -> None:
    layout = zoo.case(case)
    assert outside_group_kinds(layout) == kinds


def test_outside_group_rejects_kinds_that_do_not_apply(zoo: Any) -> None:
    layout = zoo.case("hnp-L1")
    with pytest.raises(ValueError, match="'scale_on_sign_space' does not apply"):
        sample_outside_group(layout, "scale_on_sign_space")
    with pytest.raises(ValueError, match="unknown outside-group kind"):
        sample_outside_group(layout, "shear")


@pytest.mark.parametrize(
    "kind",
    ["decoupled_permutation", "decoupled_scale", "negative_scale", "scale_on_sign_space",
     "permute_fixed"],
)  # fmt: skip
def test_outside_group_transforms_are_not_group_elements(kind: str, zoo: Any) -> None:
    """No sampled group element reproduces the transform on a generic input."""
    layout = zoo.case("hnp-L3-relu-tanh")
    gen = torch.Generator().manual_seed(5)
    transform = sample_outside_group(layout, kind, gen)
    ws = random_weight_space(layout, channels=2, generator=gen)
    moved = transform(ws)
    assert moved.channels == 2
    assert not torch.allclose(moved.flatten(), ws.flatten())
    for _ in range(20):
        g = sample_group_element(layout, gen)
        assert not torch.allclose(moved.flatten(), apply_group_element(ws, layout, g).flatten())
