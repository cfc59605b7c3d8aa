"""Exact canonicalization of scalings, used by generated invariant layers."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["unit_channels"]


def unit_channels(x: Tensor) -> Tensor:
    """Divide every entry's channel vector (axis 1) by its Euclidean norm; zero vectors stay zero.

    For any positive ``d``, ``unit_channels(d * x) == unit_channels(x)`` exactly where the norm
    is nonzero (up to rounding), which removes a positive scaling shared by all channels.
    """
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    return x / safe
