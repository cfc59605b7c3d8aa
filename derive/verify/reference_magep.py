"""MAGEP terms computed from their definitions alone (chain products built right to left, no
shared prefixes or suffixes), for the slow references of the polynomial layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["magep_term_value"]


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
