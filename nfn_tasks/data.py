"""The digits images scikit-learn ships (1797 grayscale 8x8 images, ten classes): the only data
the zoos use, so nothing is downloaded."""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor

__all__ = ["IMAGE_SIDE", "digits", "stratified_split", "pixel_grid"]

IMAGE_SIDE = 8


@cache
def _digits() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float64).reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    return images / 16.0, labels


def digits(dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """``(images (1797, 1, 8, 8) in [0, 1], labels (1797,))``."""
    images, labels = _digits()
    return images.to(dtype), labels.clone()


def stratified_split(labels: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(train, test)`` indices with each class split in the same proportion (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    train: list[Tensor] = []
    test: list[Tensor] = []
    for label in torch.unique(labels, sorted=True):
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        cut = round(test_fraction * len(members))
        test.append(members[:cut])
        train.append(members[cut:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def pixel_grid(side: int = IMAGE_SIDE) -> Tensor:
    """``(side * side, 2)`` pixel-centre coordinates in ``[-1, 1]``, row-major (row, column),
    in the order of ``image.flatten()``."""
    axis = torch.linspace(-1.0, 1.0, side, dtype=torch.float64)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()], dim=1).float()
