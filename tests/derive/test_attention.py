"""nn.MultiheadAttention: per-head query/key and value spaces, their opposite characters, the
group checked on the network itself, and the generated layers on attention weight spaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from derive.errors import SpecError
from derive.pipeline import derive, verify
from derive.weightspace.model import Scaling


class SelfAttention(nn.Module):
    """One MultiheadAttention on (batch, tokens, embedding) inputs."""

    def __init__(self, dim: int = 8, heads: int = 2, **options: object) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True, **options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class GPTBlock(nn.Module):
    """A pre-norm GPT block with a causal mask buffer, then a linear head on the tokens."""

    def __init__(self, dim: int = 8, heads: int = 2, tokens: int = 5) -> None:
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 4)
        mask = torch.triu(torch.ones(tokens, tokens, dtype=torch.bool), 1)
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
        x = x + self.proj(F.gelu(self.fc(self.ln2(x))))
        return self.head(x)


class CrossAttention(nn.Module):
    """Queries from one projection, keys and values from another (kdim != embed_dim: separate
    q/k/v weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(3, 8)
        self.kv = nn.Linear(3, 6)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, kdim=6, vdim=6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        memory = torch.relu(self.kv(x))
        out, _ = self.attn(self.q(x), memory, memory)
        return out


def _hidden(derivation, origin: str):
    return [s for s in derivation.space.spaces if origin in s.origin]


def test_heads_get_query_key_and_value_spaces_with_opposite_characters():
    derivation = derive(SelfAttention(), (5, 8), name="attention")
    space = derivation.space
    heads = _hidden(derivation, "query/key dimensions")
    values = _hidden(derivation, "value dimensions")
    assert len(heads) == len(values) == 2
    assert all(s.size == 4 and s.permuted and s.scaling is Scaling.NONZERO for s in heads + values)
    by_entry = {}
    for tensor in space.tensors:
        by_entry.setdefault(tensor.source_key, []).append(tensor)
    rows = by_entry["attn.in_proj_weight"]
    assert len(rows) == 6  # q, k, v of two heads, each its own rows of the packed entry
    characters = {
        (t.axes[0].space, t.source_slice[0][1]): t.axes[0].character for t in rows
    }  # (space, first row) -> character of the row axis
    for head, q_row, k_row in ((heads[0].name, 0, 8), (heads[1].name, 4, 12)):
        assert characters[(head, q_row)] == 1 and characters[(head, k_row)] == -1
    columns = by_entry["attn.out_proj.weight"]
    assert {t.axes[1].space for t in columns} == {v.name for v in values}
    assert all(t.axes[1].character == -1 for t in columns)


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (lambda: SelfAttention(), (5, 8)),
        (lambda: SelfAttention(bias=False), (5, 8)),
        (lambda: GPTBlock(), (5, 3)),
        (lambda: CrossAttention(), (5, 3)),
    ],
    ids=["self", "no-bias", "gpt-block", "cross"],
)
def test_the_group_holds_on_the_network_and_the_layers_are_exact(model, shape):
    torch.manual_seed(0)
    report = verify(derive(model().eval(), shape, name="attention"), samples=2)
    assert report.ok, report.text()
    names = {c.name for c in report.checks}
    assert {"network group check", "completeness", "linear equivariance (float64)"} <= names


class TinyAttention(nn.Module):
    """Two heads of 2 dimensions and a linear head: small enough for degree-2 completeness."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x, need_weights=False)[0])


def test_the_complete_polynomial_family_is_exact_and_complete_on_attention():
    """MAGEP terms need an MLP chain; the complete degree-2 family applies to attention: it
    matches its reference, is equivariant under per-head nonzero factors and permutations, and
    its numeric dimension of Sym^2(U) -> U equals the enumeration (on the proxy)."""
    torch.manual_seed(0)
    derivation = derive(TinyAttention().eval(), (3, 4), name="tiny")
    report = verify(
        derivation,
        samples=2,
        family="complete",
        degree=2,
        only=["polynomial", "polynomial-invariant"],
    )
    assert report.ok, report.text()
    names = {c.name for c in report.checks}
    assert "polynomial degree-2 completeness" in names
    assert any(n.startswith("polynomial complete") and n.endswith("(float64)") for n in names)
    invariant = next(c for c in report.checks if c.name == "polynomial invariant layer")
    assert invariant.detail.startswith("not applicable: the complete family")


def test_the_residual_stream_keeps_permutations_and_the_mlp_its_activation():
    derivation = derive(GPTBlock().eval(), (5, 3), name="gpt")
    stream = _hidden(derivation, "output of embed")[0]
    assert stream.permuted and stream.scaling is Scaling.NONE  # LayerNorm
    kv = derive(CrossAttention().eval(), (5, 3), name="cross")
    memory = _hidden(kv, "output of kv")[0]
    assert memory.scaling is Scaling.POSITIVE  # ReLU before the keys and values


class SequenceFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


class ReadsWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, weights = self.attn(x, x, x)
        return out + weights.sum()


class MaskFromInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = x.mean(-1)  # an additive float mask
        return self.attn(x, x, x, key_padding_mask=mask)[0]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (SequenceFirst, "batch_first=False"),
        (ReadsWeights, "reads the attention weights"),
        (lambda: SelfAttention(add_bias_kv=True), "add_bias_kv"),
    ],
    ids=["sequence-first", "weights", "bias-kv"],
)
def test_unsupported_attention_is_one_clear_error(model, message):
    with pytest.raises(SpecError, match=message) as error:
        derive(model().eval(), (5, 8), name="bad")
    assert "\n" not in str(error.value)


def test_a_mask_computed_from_the_activations_is_refused():
    with pytest.raises(SpecError, match="mask computed from the activations") as error:
        derive(MaskFromInput().eval(), (5, 8), name="bad")
    assert "\n" not in str(error.value)
