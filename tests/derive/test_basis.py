"""The enumerated basis: the dimensions docs/math.md section 3 states, the partition formula, narrow widths."""

from __future__ import annotations

import math

import pytest

from derive.basis.linear import linear_basis
from derive.basis.partitions import partition_count, set_partitions
from derive.frontend.spec import mlp_spec
from derive.pipeline import derive


def _dim(widths, activation="relu", permute="hidden", scaling="auto"):
    return derive(mlp_spec(widths, activation, permute=permute, scaling=scaling)).basis.dim


@pytest.mark.parametrize("widths", [(2, 3, 3, 2), (2, 4, 4, 2)], ids=str)
@pytest.mark.parametrize(
    ("scaling", "expected"),
    [("none", 114), ("positive", 19), ("sign", 23)],
    ids=["perm", "positive", "sign"],
)
def test_dimensions_measured_in_math_md(widths, scaling, expected):
    assert _dim(widths, scaling=scaling) == expected


@pytest.mark.parametrize("num_layers", [1, 2, 3, 4, 5, 6])
def test_np_dimension_formula(num_layers):
    widths = (6,) * (num_layers + 1)
    assert _dim(widths, permute="all", scaling="none") == 4 * num_layers**2 + 10 * num_layers - 4


def test_activations_pick_the_scaling():
    assert _dim((2, 3, 3, 2), "relu") == 19
    assert _dim((2, 3, 3, 2), "tanh") == 23
    assert _dim((2, 3, 3, 2), "sin") == 23
    assert _dim((2, 3, 3, 2), "identity") == 19  # nonzero scaling: linear maps as for positive
    assert _dim((2, 3, 3, 2), "gelu") == 114


def test_bias_to_last_weight_maps_exist():
    """docs/math.md section 3: nfn's HNPLinear lacks the matched map W3'[x,i] += theta[x] b2[i] (2 of 114
    dimensions at (2,4,4,2)); the derived basis has it beside the pooled one."""
    basis = derive(mlp_spec((2, 4, 4, 2), scaling="none")).basis
    roles = sorted(tuple(b.role for b in m.blocks) for m in basis.by_key["W3<-b2"].maps)
    assert roles == [("broadcast", "reduced"), ("matched",)]
    assert basis.by_key["W3<-b2"].dim == 4


def test_positive_scaling_forbids_sums_over_scaled_indices():
    basis = derive(mlp_spec((2, 3, 3, 2), "relu")).basis
    for block in basis.blocks:
        for basis_map in block.maps:
            assert all(b.role != "reduced" for b in basis_map.blocks), block.key
    assert [m.num_params for m in basis.by_key["W2<-W2"].maps] == [1]  # only W2' = a W2
    assert basis.by_key["W1<-W1"].dim == 4  # dense over the fixed input axis (2 x 2)


@pytest.mark.parametrize("count", range(0, 7))
def test_set_partitions_are_bell_numbers(count):
    partitions = set_partitions(count)
    assert len(partitions) == partition_count(count)
    assert len(set(partitions)) == len(partitions)
    for partition in partitions:
        assert sorted(p for block in partition for p in block) == list(range(count))


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5])
def test_narrow_space_keeps_partitions_with_at_most_width_blocks(width):
    """Block W2 <- W2 has 2 positions in h1 and 2 in h2 (Bell(2) = 2 each at generic widths);
    a space of width 1 keeps only the 1-block partition."""
    space = derive(mlp_spec((2, width, width, 2), scaling="none")).space
    basis = linear_basis(space)
    per_space = partition_count(2, width)
    assert basis.by_key["W2<-W2"].dim == per_space**2
    # W2 <- W3 carries h2 twice (2 positions) and h1 once in W2 (1 position)
    expected = 2 * partition_count(2, width) * partition_count(1, width)
    assert basis.by_key["W2<-W3"].dim == expected


@pytest.mark.parametrize(
    "widths",
    [(2, 3, 3, 2), (3, 1, 2, 2), (2, 2, 1, 3, 2), (4, 5, 3)],
    ids=lambda w: "-".join(map(str, w)),
)
def test_permutation_counts_match_partition_formula(widths):
    """prod(fixed sizes) * prod_s sum_{t <= n_s} S2(k_s + l_s, t), block by block."""
    basis = derive(mlp_spec(widths, scaling="none")).basis
    space = basis.space
    for block in basis.blocks:
        positions: dict[str, int] = {}
        fixed = 1
        for name in (block.output, block.input):
            for axis in space.tensor(name).axes:
                s = space.space(axis.space)
                if s.is_fixed:
                    fixed *= s.size
                else:
                    positions[s.name] = positions.get(s.name, 0) + 1
        expected = fixed * math.prod(
            partition_count(k, space.space(n).size) for n, k in positions.items()
        )
        assert block.dim == expected, block.key


def test_enumeration_is_deterministic():
    first = derive(mlp_spec((2, 3, 3, 2), scaling="none")).basis
    second = derive(mlp_spec((2, 3, 3, 2), scaling="none")).basis
    assert [m for b in first.blocks for m in b.maps] == [m for b in second.blocks for m in b.maps]


def test_constants_and_invariants():
    relu = derive(mlp_spec((2, 3, 3, 2), "relu")).basis
    assert relu.constant_dim == 2  # only the unscaled output bias b3 gets a constant
    assert relu.invariant_dim == 2  # and only b3 has invariant linear functionals
    perm = derive(mlp_spec((2, 3, 3, 2), scaling="none")).basis
    # W1: 2 (fixed in) ; b1: 1 ; W2: 1 ; b2: 1 ; W3: 2 (fixed out) ; b3: 2
    assert perm.constant_dim == 9
    assert perm.invariant_dim == 9


def test_deep_derivation_is_fast():
    import time

    start = time.perf_counter()
    basis = derive(mlp_spec((64,) + (128,) * 31 + (10,), scaling="none")).basis
    assert basis.num_maps > 0
    assert time.perf_counter() - start < 5.0  # the benchmark target is 1 s; generous for CI noise
