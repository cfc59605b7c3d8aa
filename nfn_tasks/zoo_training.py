"""What the zoo trainers share: per-network hyperparameter draws and one AdamW step applied to
stacked networks, each with its own learning rate and weight decay."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ADAM_BETAS", "ADAM_EPS", "log_uniform", "uniform", "adamw_step"]

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def log_uniform(bounds: tuple[float, float], count: int, generator: torch.Generator) -> Tensor:
    """``count`` draws log-uniform in ``bounds`` (float64)."""
    low, high = math.log(bounds[0]), math.log(bounds[1])
    return torch.exp(
        low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)
    )


def uniform(bounds: tuple[float, float], count: int, generator: torch.Generator) -> Tensor:
    """``count`` draws uniform in ``bounds`` (float64)."""
    low, high = bounds
    return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)


def adamw_step(
    params: dict[str, Tensor],
    moments: dict[str, Tensor],
    squares: dict[str, Tensor],
    current: dict[str, Tensor],
    grads: dict[str, Tensor],
    active: Tensor,
    lr: Tensor,
    weight_decay: Tensor,
    step: int,
) -> None:
    """One AdamW step (decoupled weight decay) of the ``active`` networks, in place.

    ``params``, ``moments`` and ``squares`` hold every network stacked on the first axis;
    ``current`` and ``grads`` the active networks' parameters and gradients; ``lr`` and
    ``weight_decay`` one value per network; ``step`` counts from 1 (bias correction)."""
    beta1, beta2 = ADAM_BETAS
    correction1, correction2 = 1 - beta1**step, 1 - beta2**step
    for key, value in current.items():
        value = value.detach()
        shape = (-1, *([1] * (value.dim() - 1)))
        step_size = lr[active].float().reshape(shape)
        decay = weight_decay[active].float().reshape(shape)
        m = moments[key][active].mul_(beta1).add_(grads[key], alpha=1 - beta1)
        v = squares[key][active].mul_(beta2).addcmul_(grads[key], grads[key], value=1 - beta2)
        update = (m / correction1) / ((v / correction2).sqrt() + ADAM_EPS)
        params[key][active] = value * (1 - step_size * decay) - step_size * update
        moments[key][active] = m
        squares[key][active] = v
