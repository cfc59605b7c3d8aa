"""Attention written by hand (q, k, v projections viewed as heads, ``q @ k.transpose(-2, -1)``,
softmax, ``@ v``, the heads merged back) and ``F.scaled_dot_product_attention``: the same
per-head query/key and value spaces as nn.MultiheadAttention, checked on the network itself."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from derive.errors import SpecError
from derive.pipeline import derive, verify
from derive.weightspace.model import Scaling

DIM, HEADS, TOKENS = 8, 2, 5


class Heads(nn.Module):
    """Separate q, k, v projections viewed as (B, H, T, head_dim) in one of the usual ways."""

    def __init__(self, split: str = "view", merge: str = "reshape", causal: bool = False):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(DIM, DIM) for _ in range(3))
        self.proj = nn.Linear(DIM, DIM)
        self.split, self.merge, self.causal = split, merge, causal
        mask = torch.tril(torch.ones(TOKENS, TOKENS)).view(1, 1, TOKENS, TOKENS)
        self.register_buffer("bias", mask)

    def heads(self, t: torch.Tensor, B: int, T: int) -> torch.Tensor:
        if self.split == "view":
            return t.view(B, T, HEADS, DIM // HEADS).transpose(1, 2)
        if self.split == "reshape":
            return t.reshape(B, T, HEADS, -1).transpose(1, 2)
        if self.split == "unflatten":
            return t.unflatten(-1, (HEADS, DIM // HEADS)).transpose(1, 2)
        return t.view(B, T, HEADS, DIM // HEADS).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = (self.heads(f(x), B, T) for f in (self.q, self.k, self.v))
        if self.split == "view":
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        else:
            att = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(DIM // HEADS)
        if self.causal:
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1) if self.split == "view" else att.softmax(-1)
        y = att @ v
        if self.merge == "reshape":
            y = y.transpose(1, 2).reshape(B, T, C)
        else:
            y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class Packed(nn.Module):
    """One q, k, v projection: timm's reshape and permute (then indexing or unbind), or
    nanoGPT's split."""

    def __init__(self, style: str = "timm", sdpa: bool = False):
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.style, self.sdpa = style, sdpa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        if self.style == "split":
            q, k, v = self.qkv(x).split(DIM, dim=2)
            q, k, v = (t.view(B, T, HEADS, C // HEADS).transpose(1, 2) for t in (q, k, v))
        else:
            qkv = self.qkv(x).reshape(B, T, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0) if self.style == "unbind" else (qkv[0], qkv[1], qkv[2])
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q * (C // HEADS) ** -0.5) @ k.transpose(-2, -1)
            y = att.softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SingleHead(nn.Module):
    """One head, no reshape: (B, T, d) queries, keys and values, a causal mask (added, or
    SDPA's attn_mask)."""

    def __init__(self, sdpa: bool = False):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(DIM, DIM) for _ in range(3))
        self.proj = nn.Linear(DIM, DIM)
        self.sdpa = sdpa
        self.register_buffer("mask", torch.ones(TOKENS, TOKENS).tril().bool())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.sdpa:
            return self.proj(F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask))
        additive = torch.zeros(TOKENS, TOKENS).masked_fill(~self.mask, float("-inf"))
        att = q @ k.transpose(-2, -1) / math.sqrt(DIM) + additive
        return self.proj(torch.softmax(att, dim=-1) @ v)


class Block(nn.Module):
    """A pre-norm GPT block written by hand (nanoGPT's attention, a causal mask buffer), on
    embedded tokens, with a head."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.embed = nn.Linear(3, DIM)
        self.ln1, self.ln2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.attn = attention
        self.fc, self.out = nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM)
        self.head = nn.Linear(DIM, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = x + self.attn(self.ln1(x))
        x = x + self.out(F.gelu(self.fc(self.ln2(x))))
        return self.head(x)


FORMS = {
    "view-transpose": lambda: Heads("view"),
    "reshape-matmul-div": lambda: Heads("reshape", merge="view"),
    "permute": lambda: Heads("permute"),
    "unflatten": lambda: Heads("unflatten"),
    "causal-buffer": lambda: Heads("view", merge="view", causal=True),
    "packed-timm": lambda: Packed("timm"),
    "packed-unbind": lambda: Packed("unbind"),
    "packed-split": lambda: Packed("split"),
    "packed-sdpa-causal": lambda: Packed("timm", sdpa=True),
    "single-head": lambda: SingleHead(),
    "single-head-sdpa-mask": lambda: SingleHead(sdpa=True),
}


def _hidden(derivation) -> list:
    return [s for s in derivation.space.spaces if s.role == "hidden"]


def _counts(derivation) -> Counter:
    return Counter(s.scaling.value for s in _hidden(derivation))


def _tensor_shapes(derivation) -> Counter:
    """Every tensor as its kind and, per axis, the role of its space and its character (none
    on fixed axes, which the group does not act on)."""
    roles = {s.name: s.role for s in derivation.space.spaces}
    return Counter(
        (
            t.kind,
            tuple(
                sorted((roles[a.space], a.character * (roles[a.space] != "fixed")) for a in t.axes)
            ),
        )
        for t in derivation.space.tensors
    )


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_gets_per_head_query_key_and_value_spaces(form):
    torch.manual_seed(0)
    derivation = derive(FORMS[form]().eval(), (TOKENS, DIM), name="attention")
    heads = 1 if form.startswith("single") else HEADS
    hidden = _hidden(derivation)
    assert len(hidden) == 2 * heads
    assert all(s.permuted and s.scaling is Scaling.NONZERO for s in hidden)
    assert all(s.size == DIM // heads for s in hidden)
    assert len([s for s in hidden if "q . k" in s.decided_by]) == heads
    for space in hidden:  # q rows +1 and k rows -1, or v rows +1 and projection columns -1
        weights = [t for t in derivation.space.tensors if t.kind == "weight"]
        characters = [a.character for t in weights for a in t.axes if a.space == space.name]
        assert sorted(characters) == [-1, 1], (space.name, characters)
    report = verify(derivation, samples=1, only=["network"])
    assert report.ok, report.text()
    outside = next(c for c in report.checks if c.name == "network outside group")
    assert outside.ok and "change the outputs" in outside.detail


@pytest.mark.parametrize(
    "attention",
    [lambda: Heads("view", causal=True), lambda: Packed("split")],
    ids=["nanogpt-separate", "nanogpt-packed"],
)
def test_a_handwritten_gpt_block_keeps_its_group(attention):
    torch.manual_seed(0)
    derivation = derive(Block(attention()).eval(), (TOKENS, 3), name="gpt")
    assert _counts(derivation) == {"none": 2, "nonzero": 4}  # stream and GELU; q/k and v
    report = verify(derivation, samples=1, only=["network"])
    assert report.ok, report.text()


class TokenMixing(nn.Module):
    """Attention on tokens a layer wrote (a token-mixing layer before, one after)."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.mix, self.attn, self.out = nn.Linear(TOKENS, TOKENS), attention, nn.Linear(TOKENS, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.mix(x.transpose(1, 2))).transpose(1, 2)
        return self.out((x + self.attn(x)).transpose(1, 2))


@pytest.mark.parametrize(
    ("attention", "permuted"),
    [
        (lambda: Heads("view"), True),
        (lambda: Heads("view", causal=True), False),
        (lambda: Packed("timm", sdpa=True), False),
    ],
    ids=["no-mask", "causal-buffer", "sdpa-causal"],
)
def test_tokens_a_layer_wrote_stay_permuted_unless_masked(attention, permuted):
    """Softmax over the keys commutes with one permutation of the tokens of queries, keys and
    values; a causal mask fixes them. Scaling tokens never passes."""
    torch.manual_seed(0)
    derivation = derive(TokenMixing(attention()).eval(), (TOKENS, DIM), name="tokens")
    tokens = [s for s in _hidden(derivation) if s.size == TOKENS]
    assert len(tokens) == int(permuted)
    assert all(s.scaling is Scaling.NONE for s in tokens)
    report = verify(derivation, samples=2, only=["network"])
    assert report.ok, report.text()


class SharedQueryKey(Heads):
    """Queries used as keys: q . q is only invariant under sign flips of the head dimensions."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, v = self.heads(self.q(x), B, T), self.heads(self.v(x), B, T)
        y = (q @ q.transpose(-2, -1)).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, C)) + 0 * self.k(x)


def test_queries_used_as_keys_keep_sign_flips_only():
    torch.manual_seed(0)
    derivation = derive(SharedQueryKey().eval(), (TOKENS, DIM), name="shared")
    assert _counts(derivation) == {"sign": HEADS, "nonzero": HEADS}
    report = verify(derivation, samples=2, only=["network"])
    assert report.ok, report.text()


def _load_from_mha(hand: nn.Module, mha: nn.MultiheadAttention) -> None:
    """Copy nn.MultiheadAttention's weights into separate q, k, v projections."""
    with torch.no_grad():
        for index, name in enumerate("qkv"):
            rows = slice(index * DIM, (index + 1) * DIM)
            getattr(hand, name).weight.copy_(mha.in_proj_weight[rows])
            getattr(hand, name).bias.copy_(mha.in_proj_bias[rows])
        hand.proj.weight.copy_(mha.out_proj.weight)
        hand.proj.bias.copy_(mha.out_proj.bias)


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(DIM, HEADS, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def test_the_handwritten_group_is_the_one_of_multihead_attention():
    torch.manual_seed(0)
    reference, hand = MHA().eval(), Heads("view").eval()
    _load_from_mha(hand, reference.attn)
    x = torch.randn(2, TOKENS, DIM)
    torch.testing.assert_close(hand(x), reference(x))  # the same function
    ours, theirs = (derive(m, (TOKENS, DIM), name="a") for m in (hand, reference))
    assert _counts(ours) == _counts(theirs) == {"nonzero": 2 * HEADS}
    assert sorted(s.size for s in _hidden(ours)) == sorted(s.size for s in _hidden(theirs))
    assert _tensor_shapes(ours) == _tensor_shapes(theirs)
    roles = Counter(s.role for s in ours.space.spaces)
    assert roles == Counter(s.role for s in theirs.space.spaces)


def test_the_generated_linear_layer_is_exact_on_handwritten_attention():
    torch.manual_seed(0)
    derivation = derive(Packed("timm").eval(), (TOKENS, DIM), name="attention")
    report = verify(derivation, samples=2, only=["linear"])
    assert report.ok, report.text()
    names = {c.name for c in report.checks}
    assert {"completeness", "linear equivariance (float64)"} <= names


class ReadsWeights(Heads):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.size()
        q, k = self.heads(self.q(x), B, T), self.heads(self.k(x), B, T)
        att = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj(x) + att.mean()


class MaskFromActivations(SingleHead):
    def __init__(self, sdpa: bool = False):
        super().__init__(sdpa)
        self.gate = nn.Linear(DIM, TOKENS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        bias = self.gate(x)
        if self.sdpa:
            return self.proj(F.scaled_dot_product_attention(q, k, v, attn_mask=bias))
        return self.proj((q @ k.transpose(-2, -1) + bias).softmax(-1) @ v)


class LearnedBias(SingleHead):
    def __init__(self):
        super().__init__()
        self.rel = nn.Parameter(torch.zeros(TOKENS, TOKENS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(x), self.k(x), self.v(x)
        return self.proj((q @ k.transpose(-2, -1) + self.rel).softmax(-1) @ v)


class MixesHeadsWithTokens(Heads):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = (self.heads(f(x), B, T) for f in (self.q, self.k, self.v))
        y = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.proj(y.reshape(B, T, C))  # (B, H, T, dh) read as (B, T, C): no transpose


class BatchTimesHeads(Heads):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = (
            self.heads(f(x), B, T).reshape(B * HEADS, T, -1) for f in (self.q, self.k, self.v)
        )
        y = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.proj(y.view(B, HEADS, T, -1).transpose(1, 2).reshape(B, T, C))


class SoftmaxOverQueries(Heads):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = (self.heads(f(x), B, T) for f in (self.q, self.k, self.v))
        y = (q @ k.transpose(-2, -1)).softmax(-2) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class QueryNorm(Heads):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(DIM // HEADS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = (self.heads(f(x), B, T) for f in (self.q, self.k, self.v))
        y = (self.norm(q) @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


BAD = {
    "weights-read": (ReadsWeights, "reads the attention weights"),
    "mask-from-activations": (MaskFromActivations, "mask computed from the activations"),
    "sdpa-mask-from-activations": (
        lambda: MaskFromActivations(sdpa=True),
        "attn_mask is a mask computed from the activations",
    ),
    "learned-bias": (LearnedBias, "adds the parameter 'rel' to the attention weights"),
    "heads-with-tokens": (MixesHeadsWithTokens, "mixing heads or head dimensions with the tokens"),
    "batch-times-heads": (BatchTimesHeads, "mixing heads or head dimensions with the tokens"),
    "softmax-over-queries": (SoftmaxOverQueries, "only the keys"),
    "query-norm": (QueryNorm, "acts on a value viewed as \\(heads, head dimensions\\)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_unsupported_attention_is_one_clear_error(case):
    model, message = BAD[case]
    with pytest.raises(SpecError, match=message) as error:
        derive(model().eval(), (TOKENS, DIM), name="bad")
    assert "\n" not in str(error.value)
    assert "fx node" in str(error.value)  # names the operation and where it is
