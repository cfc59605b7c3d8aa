"""Index maps for generated layers whose coefficients are tied across attention heads.

A layer equivariant to whole-head permutations has one coefficient block per orbit of basis
maps (docs/math.md 8.6). The generated module holds the distinct blocks in one flat parameter
and gathers each channel-mixing weight from it with a long index built once here, at the
module's channel counts: a weight of ``rows * c_out`` by ``cols * c_in`` entries is a grid of
cells ``(row_start, row_factor, col_start, col_factor, offset)`` (rows and columns in units of
``c_out`` and ``c_in``, ``offset`` in units of ``c_out * c_in``), each a contiguous block of the
flat parameter.

A cell of a polynomial term may carry a sixth entry, its column map: per column unit ``f`` of
the cell, the column ``columns[f]`` of its stored block, which is ``row_factor * c_out`` by
``(max(columns) + 1) * c_in``. A relabelling of heads that reorders a product's factors
permutes its columns; one that maps a term to itself ties some of them (several columns read
one stored column).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["TiedCell", "tied_cell_index", "tied_index", "tied_rows"]

#: ``(row_start, row_factor, col_start, col_factor, offset)``, optionally with a column map
TiedCell = tuple[int, int, int, int, int] | tuple[int, int, int, int, int, tuple[int, ...]]


def tied_cell_index(cell: TiedCell, c_out: int, c_in: int) -> Tensor:
    """The index into the flat parameter of every entry of one cell's
    ``(row_factor * c_out, col_factor * c_in)`` block (a column ``c * col_factor + f``: input
    channel ``c``, column unit ``f``)."""
    row_factor, col_factor, offset = cell[1], cell[3], cell[4]
    columns = torch.tensor(cell[5] if len(cell) == 6 else range(col_factor), dtype=torch.long)
    stored = int(columns.max()) + 1 if columns.numel() else 0
    channel = torch.arange(c_in).unsqueeze(1) * stored
    column = (channel + columns).reshape(-1)
    row = torch.arange(row_factor * c_out).unsqueeze(1) * (stored * c_in)
    return offset * c_out * c_in + row + column


def tied_index(cells: Sequence[TiedCell], rows: int, cols: int, c_out: int, c_in: int) -> Tensor:
    """The index into the flat parameter of every entry of a ``(rows * c_out, cols * c_in)``
    weight; every entry must lie in exactly one cell."""
    index = torch.full((rows * c_out, cols * c_in), -1, dtype=torch.long)
    for cell in cells:
        height, width = cell[1] * c_out, cell[3] * c_in
        r, c = cell[0] * c_out, cell[2] * c_in
        index[r : r + height, c : c + width] = tied_cell_index(cell, c_out, c_in)
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
