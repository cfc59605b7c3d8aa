"""Numeric dimension of equivariant polynomial maps, independent of the diagram counts.

A degree-d block ``T <- S_1 * ... * S_d`` is a linear map from the symmetrized tensor
product of the factors to T. The group acts on ``S_1 (x) ... (x) S_d`` by the Kronecker
product of the factor actions; a Lie-algebra generator acts by the derivation
``X_1 (x) I (x) ... + I (x) X_2 (x) ... + ...``. The symmetric subspace (fixed by permuting
the slots of identical factors) has the orthonormal basis B of normalized orbit sums of
multi-indices, on which a generator acts as ``B^T rho B``. The dimension is the null space
of ``L rho_in(h) - rho_out(h) L`` stacked over generators (float64), computed generator by
generator: each one's constraint restricted to the null space of those before (generators
acting on no space of the block give no constraint and are left out). For tiny widths only.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from math import prod

import torch
from torch import Tensor

from derive.verify.numeric import Generator, generators, tensor_action
from derive.weightspace.model import TensorSpec, WeightSpaceSpec

__all__ = [
    "symmetric_basis",
    "product_action",
    "sorted_factors",
    "sym_power_null_basis",
    "sym_power_dimension",
]

TensorRef = str | TensorSpec


def symmetric_basis(sizes: Sequence[int], labels: Sequence[int]) -> Tensor:
    """Orthonormal columns spanning the tensors fixed by permuting slots with equal labels.

    ``sizes`` are the factor dimensions (equal for equal labels); rows follow the row-major
    flattening of ``S_1 (x) ... (x) S_d`` used by :func:`torch.kron`.
    """
    runs: dict[int, list[int]] = {}
    for slot, label in enumerate(labels):
        runs.setdefault(label, []).append(slot)
    columns: dict[tuple[int, ...], int] = {}
    rows, cols = [], []
    for flat, index in enumerate(itertools.product(*(range(n) for n in sizes))):
        canonical = list(index)
        for run in runs.values():
            for slot, value in zip(run, sorted(index[s] for s in run)):
                canonical[slot] = value
        rows.append(flat)
        cols.append(columns.setdefault(tuple(canonical), len(columns)))
    basis = torch.zeros(prod(sizes), len(columns), dtype=torch.float64)
    basis[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)] = 1.0
    normalized: Tensor = basis / basis.norm(dim=0, keepdim=True)
    return normalized


def product_action(actions: Sequence[Tensor], lie: bool) -> Tensor:
    """Kronecker product of group actions, or the derivation of Lie-algebra actions."""
    if not actions:
        return torch.full((1, 1), 0.0 if lie else 1.0, dtype=torch.float64)
    if not lie:
        result = actions[0]
        for action in actions[1:]:
            result = torch.kron(result, action)
        return result
    eyes = [torch.eye(a.shape[0], dtype=torch.float64) for a in actions]
    total = torch.zeros(
        prod(a.shape[0] for a in actions), prod(a.shape[0] for a in actions), dtype=torch.float64
    )
    for k, action in enumerate(actions):
        term = torch.ones(1, 1, dtype=torch.float64)
        for j, eye in enumerate(eyes):
            term = torch.kron(term, action if j == k else eye)
        total = total + term
    return total


def _trivial(gen: Generator) -> Tensor:
    return torch.full((1, 1), 0.0 if gen.lie is not None else 1.0, dtype=torch.float64)


def sorted_factors(space: WeightSpaceSpec, factors: Sequence[TensorRef]) -> list[TensorSpec]:
    """The factors as tensors, in the order of ``space.tensors``."""
    tensors = [space.tensor(f) if isinstance(f, str) else f for f in factors]
    order = {t.name: k for k, t in enumerate(space.tensors)}
    return sorted(tensors, key=lambda t: order[t.name])


def _null_columns(matrix: Tensor) -> Tensor:
    """Orthonormal columns spanning the null space of ``matrix`` (singular values up to
    1e-9, absolute and relative to the largest, count as zero)."""
    _, values, vh = torch.linalg.svd(matrix, full_matrices=True)
    top = float(values.max()) if values.numel() else 0.0
    rank = int((values > max(1e-9, 1e-9 * top)).sum())
    null: Tensor = vh[rank:].T
    return null


def sym_power_null_basis(
    space: WeightSpaceSpec, output: TensorRef | None, factors: Sequence[TensorRef]
) -> Tensor:
    """Orthonormal columns spanning the equivariant linear maps ``L: Sym(S_1 ... S_d) -> T``
    (T None: invariants), each the column-major ``vec`` of an ``n_out x n_sym`` matrix acting
    on the coordinates in :func:`symmetric_basis` of the factors in tensor order."""
    out = space.tensor(output) if isinstance(output, str) else output
    tensors = sorted_factors(space, factors)
    names = [t.name for t in tensors]
    basis = symmetric_basis(
        [prod(space.shape(t)) for t in tensors], [names.index(n) for n in names]
    )
    n_out = prod(space.shape(out)) if out is not None else 1
    n_in = basis.shape[1]
    touched = {a.space for t in (*tensors, *([out] if out is not None else [])) for a in t.axes}
    eye_out = torch.eye(n_out, dtype=torch.float64)
    eye_in = torch.eye(n_in, dtype=torch.float64)
    null = torch.eye(n_out * n_in, dtype=torch.float64)
    for gen in generators(space):
        if gen.space not in touched:
            continue
        acts = [tensor_action(space, t, gen) for t in tensors]
        rho_in = basis.T @ product_action(acts, gen.lie is not None) @ basis
        rho_out = tensor_action(space, out, gen) if out is not None else _trivial(gen)
        rows = torch.kron(rho_in.T.contiguous(), eye_out) - torch.kron(eye_in, rho_out)
        null = null @ _null_columns(rows @ null)
        if not null.shape[1]:
            break
    return null


def sym_power_dimension(
    space: WeightSpaceSpec, output: TensorRef | None, factors: Sequence[TensorRef]
) -> int:
    """Dimension of equivariant linear maps ``Sym(S_1 ... S_d) -> T`` (T None: invariants)."""
    return int(sym_power_null_basis(space, output, factors).shape[1])
