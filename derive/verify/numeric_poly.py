"""Numeric dimension of equivariant polynomial maps, independent of the diagram counts.

A degree-d block ``T <- S_1 * ... * S_d`` is a linear map from the symmetrized tensor
product of the factors to T. The group acts on ``S_1 (x) ... (x) S_d`` by the Kronecker
product of the factor actions; a Lie-algebra generator acts by the derivation
``X_1 (x) I (x) ... + I (x) X_2 (x) ... + ...``. The symmetric subspace (fixed by permuting
the slots of identical factors) has the orthonormal basis B of normalized orbit sums of
multi-indices, on which a generator acts as ``B^T rho B``. The dimension is the null space
of ``L rho_in(h) - rho_out(h) L`` stacked over generators (float64). For tiny widths only.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from math import prod

import torch
from torch import Tensor

from derive.verify.numeric import Generator, generators, tensor_action
from derive.weightspace.model import TensorSpec, WeightSpaceSpec

__all__ = ["symmetric_basis", "product_action", "sym_power_dimension"]

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


def sym_power_dimension(
    space: WeightSpaceSpec, output: TensorRef | None, factors: Sequence[TensorRef]
) -> int:
    """Dimension of equivariant linear maps ``Sym(S_1 ... S_d) -> T`` (T None: invariants)."""
    out = space.tensor(output) if isinstance(output, str) else output
    tensors = [space.tensor(f) if isinstance(f, str) else f for f in factors]
    order = {t.name: k for k, t in enumerate(space.tensors)}
    tensors.sort(key=lambda t: order[t.name])
    names = [t.name for t in tensors]
    labels = [names.index(n) for n in names]
    sizes = [prod(space.shape(t)) for t in tensors]
    basis = symmetric_basis(sizes, labels)
    n_out = prod(space.shape(out)) if out is not None else 1
    n_in = basis.shape[1]
    rows = []
    for gen in generators(space):
        acts = [tensor_action(space, t, gen) for t in tensors]
        rho_in = basis.T @ product_action(acts, gen.lie is not None) @ basis
        rho_out = tensor_action(space, out, gen) if out is not None else _trivial(gen)
        eye_out = torch.eye(n_out, dtype=torch.float64)
        eye_in = torch.eye(n_in, dtype=torch.float64)
        rows.append(torch.kron(rho_in.T.contiguous(), eye_out) - torch.kron(eye_in, rho_out))
    if not rows:
        return n_out * n_in
    constraint = torch.cat(rows, dim=0)
    # atol too: rounding in B (1/sqrt(k)) leaves ~1e-16 residue where the constraint is zero.
    rank = int(torch.linalg.matrix_rank(constraint, atol=1e-9, rtol=1e-9).item())
    return n_out * n_in - rank
