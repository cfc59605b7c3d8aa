"""Fit a SIREN to every digit image, all fits at once.

Every INR is ``nfn_runtime.architectures.siren()`` (2 -> 32 -> 32 -> 1, ``sin(30 * x)``)
mapping a pixel's coordinates in ``[-1, 1]^2`` to its intensity in ``[0, 1]``. The weights of
all fits are stacked and trained with batched matmuls and one Adam optimizer on the sum of the
per-fit mean squared errors (Adam is elementwise, so this is exactly independent Adam per fit).
Initialization follows Sitzmann et al. (first layer ``U(-1/in, 1/in)``, later layers
``U(-sqrt(6/in)/omega, sqrt(6/in)/omega)``; biases PyTorch's default).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import asdict

import torch
from torch import Tensor

from nfn_tasks.data import digits, pixel_grid
from nfn_tasks.zoo import INRZooSettings, Zoo

__all__ = ["SIREN_WIDTHS", "OMEGA", "fit_inr_zoo", "sine", "siren_forward", "siren_hidden"]

SIREN_WIDTHS = (2, 32, 32, 1)
OMEGA = 30.0
KEYS = ("hidden.0", "hidden.1", "out")


def sine(z: Tensor) -> Tensor:
    """The SIREN's hidden nonlinearity, ``sin(OMEGA * z)``."""
    return torch.sin(OMEGA * z)


def _dense(params: dict[str, Tensor], key: str, h: Tensor) -> Tensor:
    return torch.baddbmm(
        params[f"{key}.bias"].unsqueeze(1), h, params[f"{key}.weight"].transpose(1, 2)
    )


def siren_hidden(params: dict[str, Tensor], coordinates: Tensor) -> list[Tensor]:
    """Each hidden layer's activations ``(N, P, n)`` of stacked SIRENs at ``coordinates
    (P, 2)``."""
    h = coordinates.expand(params["hidden.0.weight"].shape[0], -1, -1)
    hidden = []
    for key in KEYS[:-1]:
        h = sine(_dense(params, key, h))
        hidden.append(h)
    return hidden


def siren_forward(params: dict[str, Tensor], coordinates: Tensor) -> Tensor:
    """Outputs ``(N, P, 1)`` of stacked SIRENs at ``coordinates (P, 2)``."""
    return _dense(params, KEYS[-1], siren_hidden(params, coordinates)[-1])


def _init(count: int, generator: torch.Generator) -> dict[str, Tensor]:
    params = {}
    for index, (key, (fan_in, fan_out)) in enumerate(zip(KEYS, itertools.pairwise(SIREN_WIDTHS))):
        bound = 1 / fan_in if index == 0 else math.sqrt(6 / fan_in) / OMEGA
        weight = (torch.rand(count, fan_out, fan_in, generator=generator) * 2 - 1) * bound
        bias_bound = 1 / math.sqrt(fan_in)
        bias = (torch.rand(count, fan_out, generator=generator) * 2 - 1) * bias_bound
        params[f"{key}.weight"] = weight
        params[f"{key}.bias"] = bias
    return params


def fit_inr_zoo(settings: INRZooSettings, progress: bool = False) -> Zoo:
    """Fit the INR zoo described by ``settings`` (deterministic for a given thread count)."""
    generator = torch.Generator().manual_seed(settings.seed)
    images, labels = digits(torch.float32)
    order = torch.randperm(len(images), generator=generator)
    chosen = order if settings.images == 0 else order[: settings.images]
    chosen = chosen.sort().values
    image_index = chosen.repeat_interleave(settings.seeds)
    fit_seed = torch.arange(settings.seeds).repeat(len(chosen))
    targets = images[image_index].flatten(1).unsqueeze(-1)  # (N, 64, 1)
    count = len(image_index)
    if settings.shared_init:  # one initialization per fit seed, shared by every image
        starts = {key: value[fit_seed] for key, value in _init(settings.seeds, generator).items()}
    else:
        starts = _init(count, generator)
    params = {key: value.contiguous().requires_grad_() for key, value in starts.items()}
    grid = pixel_grid()
    optimizer = torch.optim.Adam(params.values(), lr=settings.lr)
    iterator: Iterable[int] = range(settings.steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"INR zoo ({count} SIRENs)", unit="step")
    for _ in iterator:
        errors = (siren_forward(params, grid) - targets).pow(2).mean(dim=(1, 2))
        optimizer.zero_grad(set_to_none=True)
        errors.sum().backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    with torch.no_grad():
        mse = (siren_forward(params, grid) - targets).pow(2).mean(dim=(1, 2)).double()
    psnr = -10 * torch.log10(mse.clamp(min=1e-12))
    return Zoo(
        kind="inr",
        architecture=settings.architecture,
        input_shape=settings.input_shape,
        activation="sin",
        params={key: value.detach().contiguous() for key, value in params.items()},
        targets=labels[image_index],
        groups=image_index,
        info={"image": image_index, "fit_seed": fit_seed, "mse": mse, "psnr": psnr},
        settings={"kind": "inr", **asdict(settings)},
    )
