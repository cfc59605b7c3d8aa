"""Slow references for polynomial layers: every term evaluated separately, from its definition.

MAGEP terms are computed with fresh path products each (no sharing, no folding); complete-family
terms by one einsum over their factors. Tests and ``verify`` load the same coefficients into a
generated module (:func:`derive.verify.reference.load_into_generated`) and compare.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from derive.basis.linear import LinearBasis
from derive.basis.polynomial import PolyMap
from derive.plan.features import product_divisor
from derive.plan.tying import plan_tying
from derive.verify.reference import (
    BATCH,
    C_IN,
    C_OUT,
    ReferenceLinear,
    apply_map,
    einsum_letters,
    helper_tensor,
)
from derive.verify.reference_magep import magep_term_value
from derive.weightspace.model import WeightSpaceSpec
from nfn_runtime.tying import tied_cell_index
from nfn_runtime.weight_space import WeightSpace

__all__ = ["ReferencePolynomial", "apply_poly_map"]


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

    def with_channels(self, in_channels: int, out_channels: int) -> ReferencePolynomial:
        """The same reference at other channel counts, with fresh coefficients."""
        return ReferencePolynomial(self.pplan, self.linear.basis, in_channels, out_channels)

    def tie_heads(self) -> None:
        """Tie the coefficients across attention heads as the generated layer does: the linear
        maps by :meth:`ReferenceLinear.tie_heads`, and every polynomial term takes the entries
        of its orbit's block of one random flat parameter, read through the generated layer's
        index (a column map included). The reference is then equivariant to whole-head
        permutations too."""
        self.linear.tie_heads()
        plan = self.pplan.plan
        tying = plan_tying(plan) if any(op.tied for op in plan.ops) else None
        if tying is None:
            return
        c_in, c_out = self.in_channels, self.out_channels
        with torch.no_grad():
            flat = torch.randn(tying.weight * c_in * c_out)
            for poly_map, coefficient in zip(self.term_maps, self.term_coefficients):
                index = tied_cell_index(tying.slot_cell(plan.map_slots[poly_map]), c_out, c_in)
                coefficient.copy_(flat[index].reshape(coefficient.shape))

    def _shape(self, basis_map: Any) -> tuple[int, ...]:
        out = self.space.tensor(basis_map.output)
        out_sizes = [self.space.shape(out)[p] for p in basis_map.out_fixed]
        if isinstance(basis_map, PolyMap):
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
    out_tensor = space.tensor(poly_map.output)
    letters = einsum_letters()
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
        BATCH
        + C_IN
        + "".join(fixed_in)
        + "".join(sorted({letter for sub in in_subs for letter in sub} - set(fixed_in)))
    )
    operands = [f"{BATCH}{C_IN}{''.join(sub)}" for sub in in_subs]
    product = torch.einsum(f"{','.join(operands)}->{product_sub}", *factors)
    coeff = C_OUT + "".join(fixed_out) + C_IN + "".join(fixed_in)
    equation = f"{coeff},{product_sub}" + "".join("," + h for h in helper_subs)
    equation += f"->{BATCH}{C_OUT}{''.join(out_sub)}"
    operands_t = [coefficient, product] + [
        helper_tensor(kind, size, coefficient) for kind, size in helpers
    ]
    kept = [b for b in poly_map.blocks if b.outputs and b.inputs]
    reduced = [b for b in poly_map.blocks if not b.outputs]
    del kept
    return torch.einsum(equation, *operands_t) / product_divisor(
        space, poly_map.factors, [b.inputs for b in reduced]
    )
