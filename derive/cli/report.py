"""What ``nfn-derive inspect`` prints: the group, the weight space and the sharing patterns.

Three renderings of one :class:`Report`: a readable table, LaTeX formulas, and JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from derive.basis.expressions import formula_text, map_formula
from derive.basis.head_orbits import head_orbits, tied_dims
from derive.basis.linear import BlockBasis, LinearBasis
from derive.derivation import Derivation
from derive.layers.linear import budget_choice
from derive.plan.budget import Budget, BudgetChoice
from derive.symmetry.not_derived import not_derived
from derive.weightspace.model import TensorSpec, WeightSpaceSpec

__all__ = ["report_json", "report_table", "report_data"]


def _axes_text(tensor: TensorSpec) -> str:
    parts = []
    for axis in tensor.axes:
        sign = {1: "+1", -1: "-1", 0: "0"}.get(axis.character, str(axis.character))
        parts.append(f"{axis.space}({sign})")
    return " ".join(parts)


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def _blocks_dict(blocks: Sequence[BlockBasis]) -> dict[str, int]:
    return {b.key: b.dim for b in blocks}


def _maps(
    space: WeightSpaceSpec, blocks: Sequence[BlockBasis], latex: bool
) -> list[dict[str, Any]]:
    out = []
    for block in blocks:
        for basis_map in block.maps:
            item: dict[str, Any] = {
                "block": block.key,
                "formula": formula_text(space, basis_map),
                "params": basis_map.num_params,
                "pattern": [
                    {
                        "space": b.space,
                        "outputs": list(b.outputs),
                        "inputs": list(b.inputs),
                        "role": b.role,
                    }
                    for b in basis_map.blocks
                ],
            }
            if latex:
                item["latex"] = map_formula(space, basis_map).latex
            out.append(item)
    return out


def _entry_text(tensor: TensorSpec) -> str:
    """``key`` or, for one part of an entry, ``key[:, 0:4]`` (its slice of every dim)."""
    if tensor.source_slice is None:
        return tensor.source_key
    index = [":"] * len(tensor.source_shape)
    for dim, start, stop, step in tensor.source_slice:
        index[dim] = f"{start}:{stop}" if step == 1 else f"{start}:{stop}:{step}"
    while index and index[-1] == ":":
        index.pop()
    return f"{tensor.source_key}[{', '.join(index)}]"


def _tensor_entry(space: WeightSpaceSpec, tensor: TensorSpec) -> dict[str, Any]:
    return {
        "name": tensor.name,
        "shape": list(space.shape(tensor)),
        "axes": [a.space for a in tensor.axes],
        "characters": [a.character for a in tensor.axes],
        "source_key": tensor.source_key,
        "source_slice": (
            [list(piece) for piece in tensor.source_slice]
            if tensor.source_slice is not None
            else None
        ),
    }


def _budget_data(choice: BudgetChoice) -> dict[str, Any]:
    return {
        "budget": choice.budget,
        "max_dim": choice.max_dim,
        "dense_dim": choice.dense_dim,
        "kept_dim": choice.kept_dim,
        "factored": [
            {
                "matmul": op.name,
                "out_factor": op.out_factor,
                "in_factor": op.in_factor,
                "dense_dim": op.dense_dim,
                "rank_per_channel": op.rank,
                "kept_dim": op.kept_dim,
                "writes": list(op.writes),
                "reads": list(op.reads),
            }
            for op in choice.factored
        ],
    }


#: which generated layers include whole-head permutations (docs/math.md 8.6)
HEAD_LAYERS = (
    "linear, invariant and polynomial layers: tied across heads (one coefficient per orbit of "
    "maps and of polynomial terms); polynomial invariant layer: equivariant to the per-space "
    "group only"
)


def _heads_data(space: WeightSpaceSpec) -> list[dict[str, Any]]:
    return [
        {
            "where": block.where,
            "heads": [
                {"query_key": list(h.query_key), "value": list(h.value)} for h in block.heads
            ],
            "permuted": block.permuted,
            "decided_by": block.decided_by,
            "tensors": [list(names) for names in block.tensors],
            "layers": HEAD_LAYERS if block.permuted else "",
        }
        for block in space.head_blocks
    ]


def _heads_lines(space: WeightSpaceSpec) -> list[str]:
    """The heads of every attention, and whether the group permutes them as wholes."""
    if not space.head_blocks:
        return []
    lines = ["", "Attention heads (a head: its query/key and value spaces)"]
    for block in space.head_blocks:
        heads = ", ".join("(" + ", ".join(h.spaces) + ")" for h in block.heads)
        lines.append(f"  {block.where}: {heads}")
        lines.append(f"    {block.decided_by}")
    if space.permuted_heads:
        lines.append(f"  Generated layers: {HEAD_LAYERS}")
    return lines


def report_data(
    derivation: Derivation, latex: bool = False, budget: Budget = "default"
) -> dict[str, Any]:
    """The machine-readable report (see README for the fields)."""
    space = derivation.space
    basis: LinearBasis = derivation.basis
    spec = derivation.spec
    tied, tied_constants, tied_invariants = tied_dims(basis, head_orbits(space))
    return {
        "name": spec.name,
        "architecture": spec.architecture_data(),
        "spaces": [
            {
                "name": s.name,
                "size": s.size,
                "role": s.role,
                "permuted": s.permuted,
                "scaling": s.scaling.value,
                "decided_by": s.decided_by,
            }
            for s in space.spaces
        ],
        "heads": _heads_data(space),
        "not_derived": not_derived(space),
        "tensors": [_tensor_entry(space, t) for t in space.tensors],
        "buffers": [_tensor_entry(space, t) for t in space.buffers],
        "linear": {
            "dim": basis.dim,
            "tied_dim": tied,
            "num_maps": basis.num_maps,
            "blocks": _blocks_dict(basis.blocks),
            "maps": _maps(space, basis.blocks, latex),
        },
        "constants": {
            "dim": basis.constant_dim,
            "tied_dim": tied_constants,
            "blocks": _blocks_dict(basis.constants),
            "maps": _maps(space, basis.constants, latex),
        },
        "invariants": {
            "dim": basis.invariant_dim,
            "tied_dim": tied_invariants,
            "blocks": _blocks_dict(basis.invariants),
            "maps": _maps(space, basis.invariants, latex),
        },
        "budget": _budget_data(budget_choice(derivation, budget)),
    }


def report_json(derivation: Derivation, latex: bool = False, budget: Budget = "default") -> str:
    return json.dumps(report_data(derivation, latex, budget), indent=2)


def report_table(derivation: Derivation, latex: bool = False, budget: Budget = "default") -> str:
    """The readable report: spaces, tensors, every block with each map's formula, and what
    the size budget keeps of the linear layer."""
    space = derivation.space
    basis = derivation.basis
    spec = derivation.spec
    summary = spec.summary()
    lines = [
        f"Weight space {spec.name}: {summary}; permute {spec.permute}; scaling {spec.scaling}",
        "",
        "Group (per neuron space)",
    ]
    rows = [["space", "size", "permuted", "scaling", "decided by"]]
    for s in space.spaces:
        rows.append(
            [s.name, str(s.size), "yes" if s.permuted else "no", s.scaling.value, s.decided_by]
        )
    lines += _table(rows)
    lines += _heads_lines(space)
    beyond = not_derived(space)
    if beyond:
        lines += [
            "",
            "Symmetries not derived (the group above is exact, and smaller than the network's "
            "in these directions; docs/math.md 8.6)",
            *(f"  {line}" for line in beyond),
        ]
    lines += ["", "Tensors"]
    rows = [["tensor", "shape", "axes (space and scaling character)", "state-dict entry"]]
    for t in space.tensors:
        shape = "x".join(str(n) for n in space.shape(t))
        rows.append([t.name, shape, _axes_text(t), _entry_text(t)])
    lines += _table(rows)
    if space.buffers:
        lines += ["", "Buffers (acted on by the group with the tensors; not features)"]
        rows = [["buffer", "shape", "axes (space and scaling character)"]]
        for t in space.buffers:
            rows.append([t.name, "x".join(str(n) for n in space.shape(t)), _axes_text(t)])
        lines += _table(rows)
    tied = tied_dims(basis, head_orbits(space))
    sections = (
        ("Equivariant linear maps", basis.blocks, basis.dim, tied[0]),
        ("Equivariant constants", basis.constants, basis.constant_dim, tied[1]),
        ("Invariant linear functionals", basis.invariants, basis.invariant_dim, tied[2]),
    )
    for title, blocks, dim, tied_dim in sections:
        nonzero = [b for b in blocks if b.maps]
        orbits = (
            f"; {tied_dim} with one coefficient per orbit under head permutations"
            if space.permuted_heads
            else ""
        )
        lines += [
            "",
            f"{title}: dimension {dim} per channel pair, {sum(len(b.maps) for b in blocks)} "
            f"maps{orbits}",
        ]
        if not nonzero:
            continue
        rows = [["block", "dim", "params", "formula"]]
        for block in nonzero:
            for k, basis_map in enumerate(block.maps):
                text = (
                    map_formula(space, basis_map).latex if latex else formula_text(space, basis_map)
                )
                rows.append(
                    [
                        block.key if k == 0 else "",
                        str(block.dim) if k == 0 else "",
                        str(basis_map.num_params),
                        text,
                    ]
                )
        lines += _table(rows)
    lines += ["", "Size budget of the generated linear layer (generate --budget)"]
    lines += ["  " + line for line in budget_choice(derivation, budget).lines()]
    lines += [
        "",
        "Indices: i,j,k output neurons; p,q averaged neurons (mean over the whole space); "
        "x,y output and u,v input fixed axes; theta is each map's own parameter.",
    ]
    return "\n".join(lines) + "\n"
