"""Whole-head permutations of attention (docs/math.md 8.6): the heads recorded as a structured
head block, relabellings sampled and applied by the runtime, the network unchanged by them,
the linear and invariant layers tied across heads (one coefficient per orbit), exactly
equivariant, complete by the null space of the constraints of every generator (head
relabellings included) and sensitive to every orbit's coefficient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from derive.basis.head_orbits import head_orbits, tied_dims
from derive.derivation import proxy_derivation
from derive.layers.kind import generated_class
from derive.pipeline import derive, verify
from derive.plan.invariant import invariant_plan
from derive.verify.numeric import completeness_report
from derive.verify.numeric_heads import head_completeness, tied_null_total
from derive.verify.reference import ReferenceLinear
from nfn_runtime import (
    GroupElement,
    apply_group_element,
    equivariance_error,
    head_relabelling,
    invariance_error,
    network_symmetry_error,
    random_weight_space,
    sample_group_element,
)
from tests.derive.test_handwritten_attention import TOKENS, Heads, Packed

EMBED, HEADS = 4, 2


class Attention(nn.Module):
    """One nn.MultiheadAttention: embedding 4, 2 heads of 2 dimensions."""

    def __init__(self, heads: int = HEADS) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(EMBED * heads // 2, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def _derivation(heads: int = HEADS):
    torch.manual_seed(0)
    return derive(Attention(heads).double().eval(), (3, EMBED * heads // 2), name="attention")


def _swap(layout, block: int = 0, order: tuple[int, ...] = (1, 0)) -> GroupElement:
    """The element relabelling the heads of one attention by ``order`` and nothing else."""
    return head_relabelling(layout, block, order)


def test_the_heads_are_a_structured_block_permuted_as_wholes():
    space = _derivation().space
    (block,) = space.head_blocks
    assert block.permuted and len(block.heads) == HEADS
    assert [len(h.query_key) for h in block.heads] == [1, 1]
    origins = [space.space(s).origin for h in block.heads for s in h.spaces]
    assert origins == [
        "query/key dimensions of head 0 of attn",
        "value dimensions of head 0 of attn",
        "query/key dimensions of head 1 of attn",
        "value dimensions of head 1 of attn",
    ]
    assert "moved as a whole with head 1 by permutations of the 2 heads" in (
        space.space(block.heads[1].value[0]).decided_by
    )
    (heads,) = space.to_layout().heads
    # per head: W_Q, b_Q, W_K, b_K, W_V, b_V rows and the W_O columns, in corresponding order
    assert [len(t) for t in heads.tensors] == [7, 7]
    for zero, one in zip(*heads.tensors):
        assert space.tensor(zero).source_key == space.tensor(one).source_key


@pytest.mark.parametrize("network", [Heads("view"), Packed("unbind"), Packed("split", sdpa=True)])
def test_handwritten_attention_records_the_same_heads(network):
    torch.manual_seed(0)
    space = derive(network.eval(), (TOKENS, 8), name="h").space
    (block,) = space.head_blocks
    assert block.permuted and len(block.heads) == 2


def test_a_whole_head_swap_leaves_the_network_unchanged_and_half_a_swap_is_refused():
    torch.manual_seed(0)
    model = Attention().double().eval()
    layout = derive(model, (3, EMBED), name="a").space.to_layout()
    x = torch.randn(4, 3, EMBED, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert network_symmetry_error(model, layout, x, _swap(layout)) < 1e-12
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        g = sample_group_element(layout, generator, move_heads=True)
        assert g.relabel  # the heads moved (and their spaces were permuted and scaled too)
        assert network_symmetry_error(model, layout, x, g) < 1e-10
    swap = _swap(layout)
    half = {s: t for s, t in swap.relabel.items() if s in layout.heads[0].spaces[0][:1]}
    half.update({t: s for s, t in half.items()})
    with pytest.raises(ValueError, match="does not move head"):
        apply_group_element(
            random_weight_space(layout, 1, 1),
            layout,
            GroupElement(swap.permutations, swap.scales, half),
        )


def test_relabellings_compose_and_invert_as_a_semidirect_product():
    layout = _derivation(heads=3).space.to_layout()
    generator = torch.Generator().manual_seed(0)
    x = random_weight_space(layout, 2, 2, torch.float64, generator)
    g = sample_group_element(layout, generator, move_heads=True)
    h = sample_group_element(layout, generator, move_heads=True)
    both = apply_group_element(apply_group_element(x, layout, h), layout, g)
    composed = apply_group_element(x, layout, g.compose(h))
    back = apply_group_element(apply_group_element(x, layout, g), layout, g.inverse())
    for a, b in zip(both.tensors(), composed.tensors()):
        assert torch.allclose(a, b, rtol=1e-12, atol=0)
    for a, c in zip(x.tensors(), back.tensors()):
        assert torch.allclose(a, c, rtol=1e-10, atol=1e-12)


def test_the_tied_basis_is_smaller_and_the_generated_layer_has_one_block_per_orbit():
    derivation = _derivation()
    dim, constants, _ = tied_dims(derivation.basis, head_orbits(derivation.space))
    assert dim < derivation.basis.dim and (dim, derivation.basis.dim) == (107, 198)
    module = generated_class(derivation, "linear", None)(2, 3)
    assert sum(p.numel() for p in module.parameters()) == 2 * 3 * dim + 3 * constants
    plan = invariant_plan(derivation.space)
    untied = sum(f.factor for f in plan.features)
    assert plan.orbits and plan.in_factor < untied
    invariant = generated_class(derivation, "invariant", None)(2, 3)
    assert invariant.mix.in_features == 2 * plan.in_factor


@pytest.mark.parametrize("layer", ["linear", "invariant"])
def test_the_layers_are_equivariant_under_head_swaps(layer):
    derivation = _derivation(heads=3)
    layout = derivation.space.to_layout()
    torch.manual_seed(0)
    module = generated_class(derivation, layer, None)(2, 3).double()
    generator = torch.Generator().manual_seed(0)
    if layer == "linear":
        assert equivariance_error(module, layout, 4, generator=generator) < 1e-10
    else:
        assert invariance_error(module, layout, 4, generator=generator) < 1e-10
    x = random_weight_space(layout, 2, 2, torch.float64, generator)
    swap = _swap(layout, order=(2, 0, 1))
    with torch.no_grad():
        moved = module(apply_group_element(x, layout, swap))
        want = apply_group_element(module(x), layout, swap) if layer == "linear" else module(x)
    for a, b in zip(
        moved.tensors() if layer == "linear" else [moved],
        want.tensors() if layer == "linear" else [want],
    ):
        assert float((a - b).norm() / b.norm()) < 1e-12


def test_an_untied_layer_fails_under_head_swaps():
    """The per-space basis alone is not enough: a layer with independent coefficients per
    head (the slow reference, untied) changes under a head swap, tied it does not."""
    derivation = _derivation()
    layout = derivation.space.to_layout()
    torch.manual_seed(0)
    reference = ReferenceLinear(derivation.basis, 1, 1).double()
    swap = _swap(layout)

    def error() -> float:
        x = random_weight_space(layout, 2, 1, torch.float64, torch.Generator().manual_seed(2))
        with torch.no_grad():
            moved = reference(apply_group_element(x, layout, swap))
            want = apply_group_element(reference(x), layout, swap)
        return max(
            float((a - b).norm() / b.norm()) for a, b in zip(moved.tensors(), want.tensors())
        )

    assert error() > 1e-2
    reference.tie_heads()
    assert error() < 1e-12


def test_completeness_with_head_swap_generators_every_orbit():
    """The null space of the constraints of every generator (per-space ones and head
    relabellings, every orbit of blocks, products included) equals the tied basis, and the
    generated layer's Jacobians span it with coefficients equal across each orbit."""
    from derive.verify.numeric import layer_jacobians

    derivation = proxy_derivation(_derivation(heads=3))
    space = derivation.space
    counts = {b.key: b.dim for b in derivation.basis.blocks}
    module = generated_class(derivation, "linear", None)(1, 1).double()

    def randomize() -> None:
        with torch.no_grad():
            for name, param in module.named_parameters():
                param.normal_() if name.endswith("_weight") else param.zero_()

    jacobians = layer_jacobians(space, module, max(counts.values()) + 3, randomize)
    blocks = completeness_report(space, counts, jacobians)
    assert all(c.ok for c in blocks)
    orbits = head_completeness(space, counts, jacobians, products=True)
    assert orbits and all(o.ok for o in orbits), [o for o in orbits if not o.ok][:2]
    assert any(len(o.blocks) == 6 for o in orbits)  # W_Q of head i <- W_K of head j, i != j
    total = tied_null_total(space, {c.key: c.null_space for c in blocks}, orbits)
    tied, _, _ = tied_dims(derivation.basis, head_orbits(space))
    assert total == tied < derivation.basis.dim


def test_every_orbit_coefficient_changes_the_output():
    derivation = _derivation()
    layout = derivation.space.to_layout()
    module = generated_class(derivation, "linear", None)(1, 1).double()
    x = random_weight_space(layout, 2, 1, torch.float64, torch.Generator().manual_seed(3))
    flat = module.theta_weight
    with torch.no_grad():
        flat.zero_()
        module.theta_bias.zero_()
        silent = []
        for k in range(flat.numel()):
            flat[k] = 1.0
            if max(float(t.abs().max()) for t in module(x).tensors()) == 0:
                silent.append(k)
            flat[k] = 0.0
    assert not silent


def test_verify_confirms_the_group_and_the_tied_layers():
    torch.manual_seed(0)
    report = verify(
        derive(Attention().double().eval(), (3, EMBED), name="a"), only=["network", "linear"]
    )
    checks = {c.name: c for c in report.checks}
    assert all(c.ok for c in report.checks), [c for c in report.checks if not c.ok]
    assert "relabelling the heads of 1 attention" in checks["network group check"].detail
    assert "null space 107 = tied basis 107" in checks["completeness"].detail


def test_polynomial_layers_keep_the_per_space_group():
    """The polynomial layers are not tied: their layout lists no heads, and inspect says so."""
    from derive.cli.report import report_data
    from derive.layers.kind import generate

    derivation = _derivation()
    source = generate(derivation, "polynomial", family="complete")
    assert "HeadsLayout" not in source and "not permuted as wholes by this layer" in source
    assert "HeadsLayout(" in generate(derivation, "linear")
    (heads,) = report_data(derivation)["heads"]
    assert "polynomial layers: equivariant to the per-space group only" in heads["layers"]


def test_a_heads_layout_must_name_corresponding_heads_of_the_layout():
    from dataclasses import replace

    from nfn_runtime import HeadsLayout

    layout = _derivation().space.to_layout()
    (heads,) = layout.heads
    with pytest.raises(ValueError, match="at least two heads"):
        HeadsLayout(heads.spaces[:1], heads.tensors[:1])
    with pytest.raises(ValueError, match="as many tensors"):
        HeadsLayout(heads.spaces, (heads.tensors[0], heads.tensors[1][:-1]))
    with pytest.raises(ValueError, match="unknown space"):
        replace(layout, heads=(HeadsLayout((("nowhere",), ("h3",)), heads.tensors),))
    assert layout.without_heads().heads == ()
