"""The basis keeps block patterns and builds maps when read; the plan of a basis reads only the
patterns. Both must agree exactly with the direct per-block enumeration and the plan of the
listed maps (what they replaced), and a weight space with many tensors (every part of a
concatenation is one) must never build its millions of product maps to be planned."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from derive.basis.linear import BlockBasis, BlockPatterns, enumerate_block, linear_basis
from derive.frontend.spec import mlp_spec
from derive.pipeline import derive
from derive.plan.linear import assemble_plan, linear_plan


class DenseNet(nn.Module):
    """DenseNet-style: every layer reads the concatenation of all earlier outputs."""

    def __init__(self, layers: int = 3, growth: int = 2):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        widths = [4 + growth * i for i in range(layers + 1)]
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(w), nn.ReLU(), nn.Conv2d(w, growth, 3, padding=1))
            for w in widths[:-1]
        )
        self.head = nn.Linear(widths[-1], 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return self.head(torch.cat(features, 1).mean((2, 3)))


def _derivations():
    torch.manual_seed(0)
    dense = DenseNet().eval()
    return {
        "mlp-perm": derive(mlp_spec((2, 3, 3, 2), scaling="none")),
        "mlp-np": derive(mlp_spec((2, 3, 2), permute="all", scaling="none")),
        "mlp-sign-narrow": derive(mlp_spec((2, 1, 2, 2), "tanh")),
        # a space of one neuron drops partitions of two blocks even where the tensors share it,
        # so a constant's placement there reads fewer features than the products give
        "mlp-perm-width-1": derive(mlp_spec((2, 1, 2, 2), scaling="none")),
        "mlp-np-width-1": derive(mlp_spec((2, 1, 1, 2), permute="all", scaling="none")),
        "dense": derive(dense, (3, 6, 6), name="dense"),
        "dense-np": derive(dense, (3, 6, 6), permute="all", scaling="none", name="dense"),
    }


DERIVATIONS = _derivations()


@pytest.mark.parametrize("name", list(DERIVATIONS))
def test_blocks_are_the_direct_enumeration(name):
    derivation = DERIVATIONS[name]
    space, basis = derivation.space, derivation.basis
    direct = [
        BlockBasis(t.name, s.name, enumerate_block(space, t, s))
        for t in space.tensors
        for s in space.tensors
    ]
    assert list(basis.blocks) == direct
    assert len(basis.blocks) == len(direct)
    assert basis.blocks[-1] == direct[-1]
    assert basis.blocks[1:4] == tuple(direct[1:4])
    assert basis.dim == sum(b.dim for b in direct)
    assert basis.num_maps == sum(len(b.maps) for b in direct)
    for block in direct[:: max(1, len(direct) // 50)]:
        assert basis.by_key[block.key] == block
    for tensor, constant, invariant in zip(space.tensors, basis.constants, basis.invariants):
        assert constant.maps == enumerate_block(space, tensor, None)
        assert invariant.maps == enumerate_block(space, None, tensor)
        assert basis.by_key[constant.key] == constant
        assert basis.by_key[invariant.key] == invariant
    assert "nothing<-here" not in basis.by_key
    assert len(list(basis.by_key)) == len(basis.by_key)


@pytest.mark.parametrize("name", list(DERIVATIONS))
def test_plan_of_a_basis_is_the_plan_of_its_maps(name):
    basis = DERIVATIONS[name].basis
    maps = [m for block in basis.blocks for m in block.maps]
    constants = [m for block in basis.constants for m in block.maps]
    listed = assemble_plan(basis.space, maps, constants)
    planned = linear_plan(basis)
    assert planned.features == listed.features
    assert planned.ops == listed.ops
    assert planned.outputs == listed.outputs
    assert planned.fan_in == listed.fan_in
    assert planned.constant_slots == listed.constant_slots
    assert list(planned.map_slots.items()) == list(listed.map_slots.items())
    assert len(planned.map_slots) == len(maps) == basis.num_maps
    for basis_map in maps:
        assert planned.map_slots[basis_map] == listed.map_slots[basis_map]
    for constant in constants:  # constants live in constant_slots, not map_slots
        assert constant not in planned.map_slots


def test_many_tensors_are_planned_without_building_product_maps(monkeypatch):
    """12 dense layers: ~300 tensors, ~10^5 blocks, nearly all products of a constant and an
    invariant functional. Neither the basis counts nor the plan may build a block's maps."""
    torch.manual_seed(0)
    derivation = derive(DenseNet(layers=12).eval(), (3, 6, 6), name="dense12")
    tensors = len(derivation.space.tensors)
    assert tensors > 250

    def refuse(*args: object) -> None:
        raise AssertionError("a block's maps were built")

    monkeypatch.setattr(BlockPatterns, "maps", refuse)
    monkeypatch.setattr(BlockPatterns, "pattern_map", refuse)
    basis = linear_basis(derivation.space)
    assert len(basis.blocks) == tensors**2
    assert basis.patterns.shared_count < tensors**2 / 4  # the rest are products
    assert basis.num_maps > tensors**2 / 2
    assert basis.dim > basis.num_maps
    plan = linear_plan(basis)
    assert len(plan.map_slots) == basis.num_maps
    assert len(plan.ops) < 2 * tensors
    assert str(plan).startswith(f"LinearPlan of dense12: {basis.num_maps} maps")
