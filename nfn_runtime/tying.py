"""Index maps for generated layers whose coefficients are tied across attention heads.

A layer equivariant to whole-head permutations has one coefficient block per orbit of basis
maps (docs/math.md 8.6). The generated module holds the distinct blocks in one flat parameter
and gathers each channel-mixing weight from it with a long index built once here, at the
module's channel counts: a weight of ``rows * c_out`` by ``cols * c_in`` entries is a grid of
cells ``(row_start, row_factor, col_start, col_factor, offset)`` (rows and columns in units of
``c_out`` and ``c_in``, ``offset`` in units of ``c_out * c_in``), each a contiguous block of the
flat parameter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["tied_index", "tied_rows"]


def tied_index(
    cells: Sequence[tuple[int, int, int, int, int]],
    rows: int,
    cols: int,
    c_out: int,
    c_in: int,
) -> Tensor:
    """The index into the flat parameter of every entry of a ``(rows * c_out, cols * c_in)``
    weight; every entry must lie in exactly one cell."""
    index = torch.full((rows * c_out, cols * c_in), -1, dtype=torch.long)
    unit = c_out * c_in
    for row_start, row_factor, col_start, col_factor, offset in cells:
        height, width = row_factor * c_out, col_factor * c_in
        block = offset * unit + torch.arange(height * width).view(height, width)
        r, c = row_start * c_out, col_start * c_in
        index[r : r + height, c : c + width] = block
    if bool((index < 0).any()):
        raise ValueError("the cells do not cover the weight")
    return index


def tied_rows(cells: Sequence[tuple[int, int, int]], rows: int, channels: int) -> Tensor:
    """The index into a table of every row of a ``rows * channels`` vector or matrix, from
    cells ``(start, factor, offset)`` in units of ``channels``."""
    index = torch.full((rows * channels,), -1, dtype=torch.long)
    for start, factor, offset in cells:
        size = factor * channels
        index[start * channels : start * channels + size] = offset * channels + torch.arange(size)
    if bool((index < 0).any()):
        raise ValueError("the cells do not cover the rows")
    return index
