"""What the derived group leaves out of attention's symmetry, as ``inspect`` says it: every
listed symmetry is checked to be one on the network itself (float64), so the report never
claims a symmetry that is not there."""

from __future__ import annotations

import json

import torch
from torch import nn

from derive.cli.report import report_json, report_table
from derive.frontend.spec import mlp_spec
from derive.pipeline import derive
from derive.symmetry.not_derived import not_derived
from tests.derive.test_handwritten_attention import DIM, HEADS, TOKENS, Heads, SharedQueryKey

WIDTH = DIM // HEADS


class Attention(nn.Module):
    """One nn.MultiheadAttention (2 heads of 4 dimensions), batch first."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def _network() -> Attention:
    torch.manual_seed(0)
    return Attention().double().eval()


def _rows(role: int, head: int) -> slice:
    """Rows of ``in_proj_weight`` of q (0), k (1) or v (2) of ``head``."""
    start = role * DIM + head * WIDTH
    return slice(start, start + WIDTH)


def _change(model: Attention, edit) -> float:
    """Relative output change after ``edit(in_proj_weight, in_proj_bias, out_weight)``."""
    x = torch.randn(3, TOKENS, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
        attn = model.attn
        assert attn.in_proj_weight is not None and attn.in_proj_bias is not None
        edit(attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight)
        after = model(x)
    return float((after - before).norm() / before.norm())


def _invertible(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(WIDTH, WIDTH, dtype=torch.float64, generator=generator) + 2 * torch.eye(
        WIDTH, dtype=torch.float64
    )


def test_the_report_names_every_missing_direction_of_multihead_attention():
    lines = not_derived(derive(_network(), (TOKENS, DIM), name="a").space)
    assert len(lines) == 3, lines
    qk, v, bias = lines
    assert "invertible matrices on each head's query/key dimensions" in qk
    assert "invertible matrices on each head's value dimensions" in v
    assert "key bias" in bias
    # whole-head permutations are part of the derived group now (derive.symmetry.heads)
    assert not any("permutations of whole heads" in line for line in lines)


def test_a_query_key_matrix_is_a_symmetry_the_monomial_group_misses():
    """W_Q -> M W_Q, b_Q -> M b_Q, W_K -> M^-T W_K, b_K -> M^-T b_K on head 0."""
    m = _invertible(0)
    inverse_t = torch.linalg.inv(m).T

    def edit(w: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
        q, k = _rows(0, 0), _rows(1, 0)
        w[q], b[q] = m @ w[q], m @ b[q]
        w[k], b[k] = inverse_t @ w[k], inverse_t @ b[k]

    assert _change(_network(), edit) < 1e-12
    # not monomial, so outside the derived group: the report is right to list it
    assert (m != 0).sum() > WIDTH


def test_a_value_matrix_is_a_symmetry():
    """W_V -> N W_V, b_V -> N b_V, out-projection columns of head 1 -> W_O N^-1."""
    n = _invertible(1)

    def edit(w: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
        rows, columns = _rows(2, 1), slice(WIDTH, 2 * WIDTH)
        w[rows], b[rows] = n @ w[rows], n @ b[rows]
        out[:, columns] = out[:, columns] @ torch.linalg.inv(n)

    assert _change(_network(), edit) < 1e-12


def test_swapping_whole_heads_is_a_symmetry_and_half_a_head_is_not():
    def swap(roles: tuple[int, ...], columns: bool):
        def edit(w: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
            for role in roles:
                zero, one = _rows(role, 0), _rows(role, 1)
                w[zero], w[one] = w[one].clone(), w[zero].clone()
                b[zero], b[one] = b[one].clone(), b[zero].clone()
            if columns:
                zero, one = slice(0, WIDTH), slice(WIDTH, 2 * WIDTH)
                out[:, zero], out[:, one] = out[:, one].clone(), out[:, zero].clone()

        return edit

    assert _change(_network(), swap((0, 1, 2), columns=True)) < 1e-12
    assert _change(_network(), swap((0, 1), columns=False)) > 1e-3  # q/k alone: not one


def test_translating_a_key_bias_is_a_symmetry():
    def edit(w: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
        b[_rows(1, 0)] += torch.linspace(-3.0, 5.0, WIDTH, dtype=torch.float64)

    assert _change(_network(), edit) < 1e-12


def test_handwritten_attention_gets_the_same_report():
    torch.manual_seed(0)
    lines = not_derived(derive(Heads("view").eval(), (TOKENS, DIM), name="h").space)
    assert [line.split(": ", 1)[1].split(":")[0] for line in lines] == [
        line.split(": ", 1)[1].split(":")[0]
        for line in not_derived(derive(_network(), (TOKENS, DIM), name="a").space)
    ]


def test_queries_used_as_keys_leave_orthogonal_matrices_out():
    torch.manual_seed(0)
    lines = not_derived(derive(SharedQueryKey().eval(), (TOKENS, DIM), name="s").space)
    assert any("orthogonal matrices on each head's query/key dimensions" in x for x in lines)
    assert not any("invertible matrices on each head's query/key" in x for x in lines)


def test_inspect_shows_the_section_only_where_something_applies():
    attention = derive(_network(), (TOKENS, DIM), name="a")
    assert "Symmetries not derived" in report_table(attention)
    assert len(json.loads(report_json(attention))["not_derived"]) == 3
    mlp = derive(mlp_spec((2, 3, 2), "relu"))
    assert "Symmetries not derived" not in report_table(mlp)
    assert json.loads(report_json(mlp))["not_derived"] == []
