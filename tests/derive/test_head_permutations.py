"""Whole-head permutations of attention (docs/math.md 8.6): the heads recorded as a structured
head block, relabellings sampled and applied by the runtime, the network unchanged by them,
the linear, invariant and polynomial layers tied across heads (one coefficient per orbit of
maps and of polynomial terms), exactly equivariant, complete by the null space of the
constraints of every generator (head relabellings included) and sensitive to every orbit's
coefficient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from derive.basis.head_orbits import head_orbits, tied_dims
from derive.basis.polynomial import enumerate_polynomial
from derive.derivation import proxy_derivation
from derive.layers.kind import LayerOptions, generate, generated_class
from derive.pipeline import derive, verify
from derive.plan.head_cells import poly_orbit_counts
from derive.plan.invariant import invariant_plan
from derive.plan.polynomial import polynomial_plan
from derive.plan.tying import plan_tying
from derive.verify.checklist import VerifyReport
from derive.verify.numeric import completeness_report
from derive.verify.numeric_heads import head_completeness, tied_null_total
from derive.verify.numeric_poly_heads import poly_head_completeness
from derive.verify.polynomial import degree2_completeness, polynomial_proxy
from derive.verify.reference import ReferenceLinear, load_into_generated
from derive.verify.reference_poly import ReferencePolynomial
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


COMPLETE = LayerOptions(family="complete", degree=2, max_terms=5000)


def _polynomial(case: str):
    """The derivations the polynomial tests use: ``heads2`` / ``heads3`` (per-head nonzero
    factors: every term reads one head at most), ``crossed`` (permutations only, on the
    polynomial proxy: terms read two heads, and ``b_O <- W(head 0) * W(head 1)`` is mapped to
    itself by the swap with its fixed-axis columns transposed)."""
    if case == "crossed":
        torch.manual_seed(0)
        model = Attention().double().eval()
        return polynomial_proxy(derive(model, (3, EMBED), name="crossed", scaling="none"))
    return _derivation(heads=int(case[-1]))


def _swap_error(layer: nn.Module, layout, heads: int) -> float:
    """The relative change of a layer under the swap of heads 0 and 1, on a random input."""
    x = random_weight_space(layout, 2, 1, torch.float64, torch.Generator().manual_seed(2))
    swap = _swap(layout, order=(1, 0, *range(2, heads)))
    with torch.no_grad():
        moved = layer(apply_group_element(x, layout, swap))
        want = apply_group_element(layer(x), layout, swap)
    return max(float((a - b).norm() / b.norm()) for a, b in zip(moved.tensors(), want.tensors()))


def test_the_polynomial_layer_is_tied_and_says_so():
    """The polynomial layer lists the heads in its layout and ties its terms per orbit; inspect
    and the generated module say so. Measured counts of degree-2 terms that write an output
    (complete family), per-space -> tied: 39 terms in 20 orbits, dimension 1128 -> 584 per
    channel pair (2 heads); 58 terms in 20 orbits, 5058 -> 1770 (3 heads). The 2-head layer
    has 719 parameters at 1 -> 1 channels (1354 untied)."""
    from derive.cli.report import report_data

    for heads, want in ((2, (39, 20, 1128, 584)), (3, (58, 20, 5058, 1770))):
        derivation = _derivation(heads)
        terms = polynomial_plan(derivation.basis, "complete", 2).terms
        counts = poly_orbit_counts(
            derivation.space, terms, head_orbits(derivation.space).generators()
        )
        assert (counts.terms, counts.orbits, counts.dim, counts.tied_dim) == want
        assert counts.dim == sum(m.num_params for m in terms)
    derivation = _derivation()
    module = generated_class(derivation, "polynomial", COMPLETE)(1, 1)
    assert sum(p.numel() for p in module.parameters()) == 719  # untied: 1354
    source = generate(derivation, "polynomial", family="complete")
    assert "HeadsLayout(" in source and "permuted as wholes:" in source
    assert "theta_weight[self.mix_" in source and "and of polynomial terms" in source
    (heads,) = report_data(derivation)["heads"]
    assert "linear, invariant and polynomial layers: tied across heads" in heads["layers"]


@pytest.mark.parametrize("case", ["heads2", "heads3", "crossed"])
def test_an_untied_polynomial_layer_fails_under_head_swaps_and_the_tied_one_is_exact(case):
    """Coefficients drawn independently per term (the slow reference, its linear part tied)
    change under a head swap; tied per orbit (through the generated layer's index) they do not,
    and the generated layer equals that tied reference and is equivariant in float64 under
    sampled group elements (the first relabels the heads) and under the swap."""
    derivation = _polynomial(case)
    layout = derivation.space.to_layout()
    heads = layout.heads[0].count
    pplan = polynomial_plan(derivation.basis, "complete", 2, max_terms=5000)
    torch.manual_seed(0)
    reference = ReferencePolynomial(pplan, derivation.basis, 1, 1).double()
    reference.linear.tie_heads()
    assert _swap_error(reference, layout, heads) > 1e-2
    reference.tie_heads()
    assert _swap_error(reference, layout, heads) < 1e-12
    module = generated_class(derivation, "polynomial", COMPLETE)(1, 1).double()
    load_into_generated(reference, pplan.plan, module)
    x = random_weight_space(layout, 2, 1, torch.float64, torch.Generator().manual_seed(4))
    with torch.no_grad():
        for a, b in zip(module(x).tensors(), reference(x).tensors()):
            assert float((a - b).norm() / b.norm()) < 1e-12
    assert _swap_error(module, layout, heads) < 1e-10
    generator = torch.Generator().manual_seed(0)
    wide = generated_class(derivation, "polynomial", COMPLETE)(2, 3).double()
    assert equivariance_error(wide, layout, 3, generator=generator) < 1e-10
    if case == "crossed":  # some terms are their own image: their columns tie among themselves
        tying = plan_tying(pplan.plan)
        assert tying is not None
        cells = [c for tied in tying.ops.values() for c in tied.cells if len(c) == 6]
        assert any(len(set(c[5])) < len(c[5]) for c in cells)
        assert any(sorted(c[5]) == list(range(len(c[5]))) for c in cells)


@pytest.mark.parametrize("case", ["heads2", "crossed"])
def test_every_tied_polynomial_coefficient_changes_the_output(case):
    """Every entry of the flat weight (linear maps and polynomial terms) moves the output: the
    Jacobian of the output in it, on one random input, has no zero column."""
    derivation = _polynomial(case)
    layout = derivation.space.to_layout()
    module = generated_class(derivation, "polynomial", COMPLETE)(1, 1).double()
    x = random_weight_space(layout, 2, 1, torch.float64, torch.Generator().manual_seed(3))
    flat = module.theta_weight.detach().clone()

    def output(theta: torch.Tensor) -> torch.Tensor:
        values = torch.func.functional_call(module, {"theta_weight": theta}, (x,))
        return torch.cat([t.reshape(-1) for t in values.tensors()])

    jacobian = torch.autograd.functional.jacobian(output, flat, vectorize=True)
    silent = (jacobian.abs().amax(dim=0) == 0).nonzero().flatten().tolist()
    assert not silent


@pytest.mark.parametrize(
    ("case", "want"),
    [("heads2", (223, 116)), ("heads3", (330, 116)), ("crossed", (12228, 6135))],
)
def test_polynomial_completeness_with_head_swap_generators(case, want):
    """``verify``'s check on the polynomial proxy: block by block the per-space null space of
    Sym^2(U) -> U equals the enumeration, and per orbit of blocks under the head relabellings
    the null space of the constraints of every generator (per-space ones and the couplings
    ``L[sigma b] M = L[b]``) equals the tied count (one coefficient per orbit of terms and
    fixed-axis entries): per-space -> tied dimensions ``want``."""
    per_space, tied = want
    report = VerifyReport()
    degree2_completeness(_polynomial(case), report)
    (check,) = report.checks
    assert check.ok, check.detail
    assert f"enumeration ({per_space});" in check.detail
    assert f"null space {tied} = tied basis {tied}" in check.detail


def test_a_term_mapped_to_itself_ties_its_own_columns():
    """Permutations only: the swap maps the block ``b_O <- W_Q(head 0) * W_Q(head 1)`` onto
    itself with its factors exchanged (the fixed-axis columns of a term transposed), so its
    G-equivariant maps are fewer than the per-space ones; the numeric null space and the tied
    count agree on it and on every other orbit."""
    space = polynomial_proxy(_polynomial("crossed")).space
    maps = [m for block in enumerate_polynomial(space, 2, limit=None).blocks for m in block.maps]
    counts = poly_orbit_counts(space, maps, head_orbits(space).generators())
    checks, _ = poly_head_completeness(space, counts.tied_by_block)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok][:2]
    alone = [c.blocks[0] for c in checks if len(c.blocks) == 1 and c.null_space < c.per_space]
    assert ("b7", ("W1", "W4")) in alone  # b_O <- W_Q(head 0) * W_Q(head 1)
    assert {output for output, _ in alone} == {"b7", None}  # b_O and invariants: in no head
    assert sum(c.null_space for c in checks) == counts.tied_dim


@pytest.mark.parametrize("case", ["heads2", "heads3"])
def test_the_generated_polynomial_layer_spans_the_tied_maps(case):
    """The generated layer's Jacobians in its flat weight, stacked over random inputs (biases
    zero), have the rank of the tied linear maps plus the tied degree-2 terms that write an
    output: it spans exactly the G-equivariant maps of degree 1 and 2 (on the proxy)."""
    proxy = polynomial_proxy(_polynomial(case))
    space = proxy.space
    terms = polynomial_plan(proxy.basis, "complete", 2).terms
    poly_tied = poly_orbit_counts(space, terms, head_orbits(space).generators()).tied_dim
    linear_tied, _, _ = tied_dims(proxy.basis, head_orbits(space))
    assert _jacobian_rank(proxy) == linear_tied + poly_tied


def _jacobian_rank(derivation) -> int:
    """The rank of the generated polynomial layer's Jacobians in its flat weight, stacked over
    enough random inputs that every output tensor gives as many rows as the weight has entries
    (its biases zero): the dimension of the maps it spans."""
    layout = derivation.space.to_layout()
    module = generated_class(derivation, "polynomial", COMPLETE)(1, 1).double()
    with torch.no_grad():
        module.theta_bias.zero_()
    flat = module.theta_weight.detach().clone()
    generator = torch.Generator().manual_seed(5)
    smallest = min(t.numel() for t in random_weight_space(layout, 1, 1).tensors())
    rows = []
    for _ in range(2 + flat.numel() // smallest):
        x = random_weight_space(layout, 1, 1, torch.float64, generator)

        def output(theta: torch.Tensor, x=x) -> torch.Tensor:
            values = torch.func.functional_call(module, {"theta_weight": theta}, (x,))
            return torch.cat([t.reshape(-1) for t in values.tensors()])

        rows.append(torch.autograd.functional.jacobian(output, flat, vectorize=True))
    return int(torch.linalg.matrix_rank(torch.cat(rows), rtol=1e-9).item())


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
