"""The slow, obviously correct layers: one einsum per basis map.

Tests compare every generated module against these, after loading the same coefficients into
both (:func:`load_into_generated`). Also used by :mod:`derive.numeric` to build the matrix of
each basis map.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from math import prod
from typing import Any

import torch
from torch import Tensor, nn

from derive.basis import BasisMap, LinearBasis
from derive.model import WeightSpaceSpec
from derive.plan import LinearPlan
from nfn_runtime.weight_space import WeightSpace

__all__ = [
    "einsum_for_map",
    "apply_map",
    "ReferenceLinear",
    "ReferenceInvariant",
    "load_into_generated",
]

_BATCH, _C_IN, _C_OUT = "Z", "Y", "X"


def _letters() -> Iterator[str]:
    yield from string.ascii_lowercase + "ABCDEFGHIJKLMNOPQRSTUVW"


def einsum_for_map(
    space: WeightSpaceSpec, basis_map: BasisMap
) -> tuple[str, list[tuple[str, int]], float]:
    """The einsum equation of one map, its helper operands and its normalization.

    Operands, in order: the coefficient ``(C_out, *F_out, C_in, *F_in)`` (or ``(C_out, *F_out)``
    for a constant), the input tensor (absent for a constant), then helper operands given as
    ``("ones", n)`` (a broadcast index) or ``("eye", n)`` (a diagonal write).
    Invariant functionals (no output) are not handled here.
    """
    assert basis_map.output is not None
    out_tensor = space.tensor(basis_map.output)
    in_tensor = space.tensor(basis_map.input) if basis_map.input else None
    letters = _letters()
    out_sub = [""] * len(out_tensor.axes)
    in_sub = [""] * (len(in_tensor.axes) if in_tensor else 0)
    helpers: list[tuple[str, int]] = []
    helper_subs: list[str] = []
    scale = 1.0
    for block in basis_map.blocks:
        letter = next(letters)
        size = space.space(block.space).size
        for p in block.inputs:
            in_sub[p] = letter
        if not block.inputs:
            helpers.append(("ones", size))
            helper_subs.append(letter)
        if not block.outputs:
            scale /= size
        for k, p in enumerate(block.outputs):
            if k == 0:
                out_sub[p] = letter
            else:
                extra = next(letters)
                out_sub[p] = extra
                helpers.append(("eye", size))
                helper_subs.append(letter + extra)
    fixed_out = [next(letters) for _ in basis_map.out_fixed]
    fixed_in = [next(letters) for _ in basis_map.in_fixed]
    for p, letter in zip(basis_map.out_fixed, fixed_out):
        out_sub[p] = letter
    for p, letter in zip(basis_map.in_fixed, fixed_in):
        in_sub[p] = letter
    coeff = _C_OUT + "".join(fixed_out) + (_C_IN + "".join(fixed_in) if in_tensor else "")
    operands = [coeff]
    if in_tensor is not None:
        operands.append(_BATCH + _C_IN + "".join(in_sub))
    operands += helper_subs
    output = (_BATCH if in_tensor else "") + _C_OUT + "".join(out_sub)
    return f"{','.join(operands)}->{output}", helpers, scale


def _helper(kind: str, size: int, like: Tensor) -> Tensor:
    if kind == "ones":
        return torch.ones(size, dtype=like.dtype, device=like.device)
    return torch.eye(size, dtype=like.dtype, device=like.device)


def apply_map(
    space: WeightSpaceSpec, basis_map: BasisMap, coefficient: Tensor, source: Tensor | None
) -> Tensor:
    """The contribution of one map (with ``source`` of shape ``(B, C_in, *axes)``)."""
    equation, helpers, scale = einsum_for_map(space, basis_map)
    operands = [coefficient] + ([source] if source is not None else [])
    operands += [_helper(kind, size, coefficient) for kind, size in helpers]
    return torch.einsum(equation, *operands) * scale


class ReferenceLinear(nn.Module):
    """The equivariant linear layer as a plain sum over basis maps (slow; for tests)."""

    def __init__(
        self, basis: LinearBasis, in_channels: int, out_channels: int, with_constants: bool = True
    ) -> None:
        super().__init__()
        self.space = basis.space
        self.layout = basis.space.to_layout()
        self.maps = [m for block in basis.blocks for m in block.maps]
        self.constant_maps = (
            [m for block in basis.constants for m in block.maps] if with_constants else []
        )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.coefficients = nn.ParameterList(
            nn.Parameter(torch.randn(*self.coefficient_shape(m))) for m in self.maps
        )
        self.constants = nn.ParameterList(
            nn.Parameter(torch.randn(*self.coefficient_shape(m))) for m in self.constant_maps
        )

    def coefficient_shape(self, basis_map: BasisMap) -> tuple[int, ...]:
        out = self.space.tensor(basis_map.output) if basis_map.output else None
        src = self.space.tensor(basis_map.input) if basis_map.input else None
        out_sizes = [self.space.shape(out)[p] for p in basis_map.out_fixed] if out else []
        in_sizes = [self.space.shape(src)[p] for p in basis_map.in_fixed] if src else []
        if src is None:
            return (self.out_channels, *out_sizes)
        return (self.out_channels, *out_sizes, self.in_channels, *in_sizes)

    def forward(self, ws: WeightSpace) -> WeightSpace:
        named = ws.named(self.layout)
        batch = ws.batch_size
        outputs = {
            t.name: named[t.name].new_zeros(batch, self.out_channels, *self.space.shape(t))
            for t in self.space.tensors
        }
        for basis_map, coefficient in zip(self.maps, self.coefficients):
            assert basis_map.output is not None and basis_map.input is not None
            outputs[basis_map.output] = outputs[basis_map.output] + apply_map(
                self.space, basis_map, coefficient, named[basis_map.input]
            )
        for basis_map, constant in zip(self.constant_maps, self.constants):
            assert basis_map.output is not None
            outputs[basis_map.output] = outputs[basis_map.output] + apply_map(
                self.space, basis_map, constant, None
            )
        return WeightSpace.from_named(self.layout, outputs)


def load_into_generated(reference: nn.Module, plan: LinearPlan, module: nn.Module) -> None:
    """Copy a reference's coefficients into a generated module built from ``plan``.

    ``reference`` is a :class:`ReferenceLinear` or a :class:`ReferencePolynomial` (whose
    polynomial coefficients and Psi parameters are copied too).
    """
    linear = reference.linear if isinstance(reference, ReferencePolynomial) else reference
    assert isinstance(linear, ReferenceLinear)
    c_in, c_out = linear.in_channels, linear.out_channels
    pairs = list(zip(linear.maps, linear.coefficients))
    if isinstance(reference, ReferencePolynomial):
        pairs += list(zip(reference.term_maps, reference.term_coefficients))
    with torch.no_grad():
        for param in module.parameters():
            param.zero_()
        for basis_map, coefficient in pairs:
            slot = plan.map_slots[basis_map]
            weight = getattr(module, f"{slot.op}_weight")
            rows = slice(slot.row_start * c_out, (slot.row_start + slot.row_factor) * c_out)
            cols = slice(slot.col_start * c_in, (slot.col_start + slot.col_factor) * c_in)
            weight[rows, cols] = coefficient.reshape(
                c_out * slot.row_factor, c_in * slot.col_factor
            ).to(weight)
        for basis_map, constant in zip(linear.constant_maps, linear.constants):
            slot = plan.constant_slots[basis_map]
            bias = getattr(module, f"{slot.op}_bias")
            rows = slice(slot.row_start * c_out, (slot.row_start + slot.row_factor) * c_out)
            bias[rows] = constant.reshape(-1).to(bias)
        if isinstance(reference, ReferencePolynomial):
            for name, value in reference.psi.items():
                getattr(module, name).copy_(value)


class ReferenceInvariant(nn.Module):
    """The invariant layer written plainly: canonicalize each tensor, one einsum per pooling map.

    Pooled features come in the order of :func:`derive.invariant.invariant_plan` (tensor order,
    then enumeration order), so a generated invariant layer can share its ``mix`` weights.
    """

    def __init__(
        self, space: WeightSpaceSpec, in_channels: int, out_channels: int, magep: Any = None
    ) -> None:
        super().__init__()
        self.magep = magep
        self.psi = nn.ParameterDict(
            {p.name: nn.Parameter(torch.randn(in_channels, *p.shape) * p.std) for p in magep.psis}
            if magep is not None
            else {}
        )
        from derive.basis import enumerate_block
        from derive.invariant import canonicalization, permutation_only

        self.space = space
        self.layout = space.to_layout()
        perm_space = permutation_only(space)
        self.canonical = {t.name: canonicalization(space, t) for t in space.tensors}
        self.pools = [
            (t.name, m) for t in space.tensors for m in enumerate_block(perm_space, None, t)
        ]
        width = sum(m.num_params for _, m in self.pools) * in_channels
        if magep is not None:  # every MAGEP invariant is indexed by fixed axes only: all entries
            for term in magep.terms:
                width += prod(space.space(a.space).size for a in term.axes) * in_channels
        self.mix = nn.Linear(width, out_channels)

    def _canonical(self, name: str, x: Tensor) -> Tensor:
        rule = self.canonical[name]
        if rule.normalize:
            norms = torch.sqrt((x * x).sum(dim=1, keepdim=True))
            x = torch.where(
                norms > 0,
                x / torch.where(norms > 0, norms, torch.ones_like(norms)),
                torch.zeros_like(x),
            )
        if rule.absolute:
            x = torch.abs(x)
        return x

    def forward(self, ws: WeightSpace) -> Tensor:
        named = ws.named(self.layout)
        canonical = {name: self._canonical(name, x) for name, x in named.items()}
        pooled = []
        for name, basis_map in self.pools:
            x = canonical[name]
            letters = _letters()
            sub = [""] * (x.dim() - 2)
            scale = 1.0
            for block in basis_map.blocks:
                letter = next(letters)
                for p in block.inputs:
                    sub[p] = letter
                scale /= self.space.space(block.space).size
            kept = [next(letters) for _ in basis_map.in_fixed]
            for p, letter in zip(basis_map.in_fixed, kept):
                sub[p] = letter
            value = (
                torch.einsum(f"{_BATCH}{_C_IN}{''.join(sub)}->{_BATCH}{_C_IN}{''.join(kept)}", x)
                * scale
            )
            pooled.append(value.reshape(value.shape[0], -1))
        if self.magep is not None:
            psi = dict(self.psi.items())
            for term in self.magep.terms:
                value = magep_term_value(term, self.magep.chain, named, psi)
                pooled.append(value.reshape(value.shape[0], -1))
        result: Tensor = self.mix(torch.cat(pooled, dim=1))
        return result


def _chain_product(weights: list[Tensor], sizes: list[int], s: int, t: int) -> Tensor:
    """``[W](s,t) = W_s ... W_{t+1}`` for one batch of per-channel matrices, normalized like the
    generated code (each contraction over n neurons divided by sqrt(n)), built right to left."""
    product = weights[t]  # W_{t+1}
    for k in range(t + 2, s + 1):
        product = torch.matmul(weights[k - 1], product) / sizes[k - 1] ** 0.5
    return product


def magep_term_value(
    term: Any, chain: Any, named: dict[str, Tensor], psi: dict[str, Tensor]
) -> Tensor:
    """One MAGEP term computed from its definition alone (no shared products)."""
    L = chain.layers
    sizes = list(chain.sizes)
    weights = [named[name] for name in chain.weights]
    biases = [named[name] if name else None for name in chain.biases]
    i, t = term.i, term.t
    if term.kind in ("WW", "WW0"):
        glued: Tensor = (
            _chain_product(weights, sizes, i, 0)
            @ psi[term.psi[0].name]
            @ _chain_product(weights, sizes, L, t)
        )
        return glued
    if term.kind in ("bW", "bW0"):
        row = psi[term.psi[0].name] @ _chain_product(weights, sizes, L, t)  # (B, C, 1, n_t)
        bias = biases[i - 1]
        assert bias is not None
        result: Tensor = bias[..., None] * row
        return result
    if term.kind == "W":
        return _chain_product(weights, sizes, i, 0)
    if term.kind == "Wb":
        paths = []
        for source in range(1, i):
            if biases[source - 1] is None or i - source + 1 not in term.degrees:
                continue
            vector = biases[source - 1]
            assert vector is not None
            for k in range(source + 1, i + 1):
                vector = torch.einsum("bcij,bcj->bci", weights[k - 1], vector) / sizes[k - 1] ** 0.5
            paths.append(vector)
        summed: Tensor = torch.stack(paths).sum(0) / len(paths) ** 0.5
        return summed
    scale = sizes[t] ** 0.5
    if term.kind == "trWW":
        closed = (
            _chain_product(weights, sizes, t, 0)
            @ psi[term.psi[0].name]
            @ _chain_product(weights, sizes, L, t)
        )
        trace: Tensor = torch.diagonal(closed, dim1=-2, dim2=-1).sum(-1) / scale
        return trace
    row = (psi[term.psi[0].name] @ _chain_product(weights, sizes, L, t)).squeeze(-2)
    last = biases[t - 1]
    assert last is not None
    total: Tensor = (row * last).sum(-1) / scale
    return total


class ReferencePolynomial(nn.Module):
    """The polynomial layer as the linear reference plus every polynomial term separately."""

    def __init__(self, pplan: Any, basis: LinearBasis, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.linear = ReferenceLinear(basis, in_channels, out_channels)
        self.pplan = pplan
        self.space = pplan.plan.space
        self.layout = basis.space.to_layout()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.term_maps = list(pplan.magep.maps) if pplan.magep else list(pplan.terms)
        self.term_coefficients = nn.ParameterList(
            nn.Parameter(torch.randn(*self._shape(m))) for m in self.term_maps
        )
        self.psi = nn.ParameterDict(
            {p.name: nn.Parameter(torch.randn(in_channels, *p.shape) * p.std) for p in pplan.psis}
        )

    def _shape(self, basis_map: Any) -> tuple[int, ...]:
        out = self.space.tensor(basis_map.output)
        out_sizes = [self.space.shape(out)[p] for p in basis_map.out_fixed]
        if hasattr(basis_map, "factors"):
            in_sizes = [
                self.space.shape(self.space.tensor(basis_map.factors[f]))[p]
                for f, p in basis_map.in_fixed
            ]
        else:
            src = self.space.tensor(basis_map.input)
            in_sizes = [self.space.shape(src)[p] for p in basis_map.in_fixed]
        return (self.out_channels, *out_sizes, self.in_channels, *in_sizes)

    def forward(self, ws: WeightSpace) -> WeightSpace:
        out = self.linear(ws).named(self.layout)
        named = ws.named(self.layout)
        if self.pplan.magep is not None:
            chain = self.pplan.magep.chain
            psi = dict(self.psi.items())
            for term, basis_map, coefficient in zip(
                self.pplan.magep.terms, self.term_maps, self.term_coefficients
            ):
                value = magep_term_value(term, chain, named, psi)
                out[term.output] = out[term.output] + apply_map(
                    self.space, basis_map, coefficient, value
                )
        else:
            for poly_map, coefficient in zip(self.term_maps, self.term_coefficients):
                out[poly_map.output] = out[poly_map.output] + apply_poly_map(
                    self.space, poly_map, coefficient, [named[f] for f in poly_map.factors]
                )
        return WeightSpace.from_named(self.layout, out)


def apply_poly_map(
    space: WeightSpaceSpec, poly_map: Any, coefficient: Tensor, factors: list[Tensor]
) -> Tensor:
    """One polynomial map by one einsum over its factors (per channel), then channel mixing."""
    from derive.features import product_divisor

    out_tensor = space.tensor(poly_map.output)
    letters = _letters()
    out_sub = [""] * len(out_tensor.axes)
    in_subs = [[""] * len(space.tensor(name).axes) for name in poly_map.factors]
    helpers: list[tuple[str, int]] = []
    helper_subs: list[str] = []
    for block in poly_map.blocks:
        letter = next(letters)
        size = space.space(block.space).size
        for f, p in block.inputs:
            in_subs[f][p] = letter
        if not block.inputs:
            helpers.append(("ones", size))
            helper_subs.append(letter)
        for k, p in enumerate(block.outputs):
            if k == 0:
                out_sub[p] = letter
            else:
                extra = next(letters)
                out_sub[p] = extra
                helpers.append(("eye", size))
                helper_subs.append(letter + extra)
    fixed_out = [next(letters) for _ in poly_map.out_fixed]
    fixed_in = [next(letters) for _ in poly_map.in_fixed]
    for p, letter in zip(poly_map.out_fixed, fixed_out):
        out_sub[p] = letter
    for (f, p), letter in zip(poly_map.in_fixed, fixed_in):
        in_subs[f][p] = letter
    product_sub = (
        _BATCH
        + _C_IN
        + "".join(fixed_in)
        + "".join(sorted({letter for sub in in_subs for letter in sub} - set(fixed_in)))
    )
    operands = [f"{_BATCH}{_C_IN}{''.join(sub)}" for sub in in_subs]
    product = torch.einsum(f"{','.join(operands)}->{product_sub}", *factors)
    coeff = _C_OUT + "".join(fixed_out) + _C_IN + "".join(fixed_in)
    equation = f"{coeff},{product_sub}" + "".join("," + h for h in helper_subs)
    equation += f"->{_BATCH}{_C_OUT}{''.join(out_sub)}"
    operands_t = [coefficient, product] + [
        _helper(kind, size, coefficient) for kind, size in helpers
    ]
    kept = [b for b in poly_map.blocks if b.outputs and b.inputs]
    reduced = [b for b in poly_map.blocks if not b.outputs]
    del kept
    return torch.einsum(equation, *operands_t) / product_divisor(
        space, poly_map.factors, [b.inputs for b in reduced]
    )
