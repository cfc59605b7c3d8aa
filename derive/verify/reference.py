"""The slow, obviously correct layers: one einsum per basis map.

Tests compare every generated module against these, after loading the same coefficients into
both (:func:`load_into_generated`). Also used by :mod:`derive.verify.numeric` to build the matrix of
each basis map.
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Mapping
from math import prod
from typing import Any

import torch
from torch import Tensor, nn

from derive.basis.head_orbits import head_orbits
from derive.basis.linear import BasisMap, LinearBasis, enumerate_block, pattern_of
from derive.plan.invariant import canonicalization, permutation_only
from derive.plan.linear import LinearPlan
from derive.plan.tying import BIAS, WEIGHT, plan_tying
from derive.verify.reference_magep import magep_term_value
from derive.weightspace.model import WeightSpaceSpec
from nfn_runtime.tying import tied_cell_index
from nfn_runtime.weight_space import WeightSpace

__all__ = [
    "BATCH",
    "C_IN",
    "C_OUT",
    "einsum_letters",
    "helper_tensor",
    "einsum_for_map",
    "apply_map",
    "ReferenceLinear",
    "ReferenceInvariant",
    "load_into_generated",
]

BATCH, C_IN, C_OUT = "Z", "Y", "X"


def einsum_letters() -> Iterator[str]:
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
    letters = einsum_letters()
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
    coeff = C_OUT + "".join(fixed_out) + (C_IN + "".join(fixed_in) if in_tensor else "")
    operands = [coeff]
    if in_tensor is not None:
        operands.append(BATCH + C_IN + "".join(in_sub))
    operands += helper_subs
    output = (BATCH if in_tensor else "") + C_OUT + "".join(out_sub)
    return f"{','.join(operands)}->{output}", helpers, scale


def helper_tensor(kind: str, size: int, like: Tensor) -> Tensor:
    if kind == "ones":
        return torch.ones(size, dtype=like.dtype, device=like.device)
    return torch.eye(size, dtype=like.dtype, device=like.device)


def apply_map(
    space: WeightSpaceSpec, basis_map: BasisMap, coefficient: Tensor, source: Tensor | None
) -> Tensor:
    """The contribution of one map (with ``source`` of shape ``(B, C_in, *axes)``)."""
    equation, helpers, scale = einsum_for_map(space, basis_map)
    operands = [coefficient] + ([source] if source is not None else [])
    operands += [helper_tensor(kind, size, coefficient) for kind, size in helpers]
    value = torch.einsum(equation, *operands)
    return value * scale if scale != 1.0 else value  # no second copy where nothing is averaged


class ReferenceLinear(nn.Module):
    """The equivariant linear layer as a plain sum over basis maps (slow; for tests)."""

    def __init__(
        self, basis: LinearBasis, in_channels: int, out_channels: int, with_constants: bool = True
    ) -> None:
        super().__init__()
        self.basis = basis
        self.with_constants = with_constants
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

    def with_channels(self, in_channels: int, out_channels: int) -> ReferenceLinear:
        """The same reference at other channel counts, with fresh coefficients."""
        return ReferenceLinear(self.basis, in_channels, out_channels, self.with_constants)

    def tie_heads(self) -> None:
        """Give every map its orbit's coefficients under whole-head permutations (those of
        the orbit's first map): the layer is then equivariant to them too."""
        orbits = head_orbits(self.space)
        if orbits.trivial:
            return
        with torch.no_grad():
            for maps, values in (
                (self.maps, self.coefficients),
                (self.constant_maps, self.constants),
            ):
                first: dict[object, Tensor] = {}
                for basis_map, value in zip(maps, values):
                    key = (
                        orbits.canonical((basis_map.output, basis_map.input)),
                        pattern_of(basis_map),
                    )
                    value.copy_(first.setdefault(key, value))

    def output(self, named: Mapping[str, Tensor], name: str) -> Tensor:
        """The output tensor ``name`` alone: the maps writing it, one einsum each, accumulated
        in place (so that a large weight space is checked one output tensor at a time)."""
        like = next(iter(named.values()))
        shape = self.space.shape(self.space.tensor(name))
        value = like.new_zeros(like.shape[0], self.out_channels, *shape)
        for basis_map, coefficient in zip(self.maps, self.coefficients):
            if basis_map.output == name:
                assert basis_map.input is not None
                value.add_(apply_map(self.space, basis_map, coefficient, named[basis_map.input]))
        for basis_map, constant in zip(self.constant_maps, self.constants):
            if basis_map.output == name:
                value.add_(apply_map(self.space, basis_map, constant, None))
        return value

    def forward(self, ws: WeightSpace) -> WeightSpace:
        named = ws.named(self.layout)
        outputs = {t.name: self.output(named, t.name) for t in self.space.tensors}
        return WeightSpace.from_named(self.layout, outputs)


def _pool_orbits(space: WeightSpaceSpec, pools: list[tuple[str, BasisMap]]) -> list[list[int]]:
    """Indices of ``pools`` grouped by orbit under whole-head permutations (empty without)."""
    orbits = head_orbits(space)
    if orbits.trivial:
        return []
    groups: dict[object, list[int]] = {}
    for index, (name, basis_map) in enumerate(pools):
        reduced = tuple(sorted(b.inputs for b in basis_map.blocks))
        groups.setdefault((orbits.canonical((name,)), reduced), []).append(index)
    return list(groups.values())


def load_into_generated(reference: nn.Module, plan: LinearPlan, module: nn.Module) -> None:
    """Copy a reference's coefficients into a generated module built from ``plan``.

    ``reference`` is a :class:`ReferenceLinear` or a
    :class:`derive.verify.reference_poly.ReferencePolynomial` (whose polynomial coefficients and Psi
    parameters are copied too).
    """
    linear = getattr(reference, "linear", reference)  # a polynomial reference wraps a linear one
    assert isinstance(linear, ReferenceLinear)
    c_in, c_out = linear.in_channels, linear.out_channels
    pairs = list(zip(linear.maps, linear.coefficients))
    pairs += list(
        zip(getattr(reference, "term_maps", []), getattr(reference, "term_coefficients", []))
    )
    tying = plan_tying(plan) if any(op.tied for op in plan.ops) else None
    with torch.no_grad():
        for param in module.parameters():
            param.zero_()
        for basis_map, coefficient in pairs:
            slot = plan.map_slots[basis_map]
            values = coefficient.reshape(c_out * slot.row_factor, c_in * slot.col_factor)
            if tying is not None:  # the entries of the orbit's block of the flat parameter
                flat = getattr(module, WEIGHT)
                index = tied_cell_index(tying.slot_cell(slot), c_out, c_in)
                flat[index.reshape(-1)] = values.reshape(-1).to(flat)
                continue
            weight = getattr(module, f"{slot.op}_weight")
            rows = slice(slot.row_start * c_out, (slot.row_start + slot.row_factor) * c_out)
            cols = slice(slot.col_start * c_in, (slot.col_start + slot.col_factor) * c_in)
            weight[rows, cols] = values.to(weight)
        for basis_map, constant in zip(linear.constant_maps, linear.constants):
            slot = plan.constant_slots[basis_map]
            if tying is not None:
                flat = getattr(module, BIAS)
                start = tying.slot_offset(slot) * c_out
                flat[start : start + constant.numel()] = constant.reshape(-1).to(flat)
                continue
            bias = getattr(module, f"{slot.op}_bias")
            rows = slice(slot.row_start * c_out, (slot.row_start + slot.row_factor) * c_out)
            bias[rows] = constant.reshape(-1).to(bias)
        for name, value in getattr(reference, "psi", {}).items():
            getattr(module, name).copy_(value)


class ReferenceInvariant(nn.Module):
    """The invariant layer written plainly: canonicalize each tensor, one einsum per pooling map.

    Pooled features come in the order of :func:`derive.plan.invariant.invariant_plan` (tensor order,
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
        self.space = space
        self.layout = space.to_layout()
        perm_space = permutation_only(space)
        self.canonical = {t.name: canonicalization(space, t) for t in space.tensors}
        self.pools = [
            (t.name, m) for t in space.tensors for m in enumerate_block(perm_space, None, t)
        ]
        self.orbits = _pool_orbits(space, self.pools) if magep is None else []
        width = sum(m.num_params for _, m in self.pools) * in_channels
        if self.orbits:  # one coefficient per orbit under whole-head permutations
            width = sum(self.pools[group[0]][1].num_params for group in self.orbits) * in_channels
        if magep is not None:  # every MAGEP invariant is indexed by fixed axes only: all entries
            for term in magep.terms:
                width += prod(space.space(a.space).size for a in term.axes) * in_channels
        self.mix = nn.Linear(width, out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels

    def with_channels(self, in_channels: int, out_channels: int) -> ReferenceInvariant:
        """The same reference at other channel counts, with fresh parameters."""
        return ReferenceInvariant(self.space, in_channels, out_channels, self.magep)

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
            letters = einsum_letters()
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
                torch.einsum(f"{BATCH}{C_IN}{''.join(sub)}->{BATCH}{C_IN}{''.join(kept)}", x)
                * scale
            )
            pooled.append(value.reshape(value.shape[0], -1))
        if self.orbits:
            pooled = [
                sum((pooled[k] for k in group[1:]), pooled[group[0]]) for group in self.orbits
            ]
        if self.magep is not None:
            psi = dict(self.psi.items())
            for term in self.magep.terms:
                value = magep_term_value(term, self.magep.chain, named, psi)
                pooled.append(value.reshape(value.shape[0], -1))
        result: Tensor = self.mix(torch.cat(pooled, dim=1))
        return result
