"""What the zoo trainers share: per-network hyperparameter draws, each network's training images
and number of steps, and one AdamW step applied to stacked networks, each with its own learning
rate and weight decay."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "ADAM_BETAS",
    "ADAM_EPS",
    "log_uniform",
    "uniform",
    "Hyperparameters",
    "Schedule",
    "adamw_step",
]

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


class _Ranges(Protocol):
    """The hyperparameter ranges of a zoo's settings."""

    @property
    def lr(self) -> tuple[float, float]: ...
    @property
    def weight_decay(self) -> tuple[float, float]: ...
    @property
    def init_scale(self) -> tuple[float, float]: ...
    @property
    def train_fraction(self) -> tuple[float, float]: ...
    @property
    def epochs(self) -> tuple[int, int]: ...


@dataclass(frozen=True)
class Hyperparameters:
    """One draw per network: learning rate, weight decay and initialization scale
    (log-uniform), training fraction (uniform) and epochs (uniform integers)."""

    lr: Tensor
    weight_decay: Tensor
    init_scale: Tensor
    fraction: Tensor
    epochs: Tensor

    @classmethod
    def draw(cls, ranges: _Ranges, count: int, generator: torch.Generator) -> Hyperparameters:
        lr = log_uniform(ranges.lr, count, generator)
        weight_decay = log_uniform(ranges.weight_decay, count, generator)
        init_scale = log_uniform(ranges.init_scale, count, generator)
        fraction = uniform(ranges.train_fraction, count, generator)
        low, high = ranges.epochs
        epochs = torch.randint(low, high + 1, (count,), generator=generator)
        return cls(lr, weight_decay, init_scale, fraction, epochs)


@dataclass(frozen=True)
class Schedule:
    """Per network: how many training images it sees (``sizes``, at least 10), its own order
    of the training pool (``subsets``; it draws from the first ``sizes`` of them) and its
    number of steps of ``batch`` images."""

    sizes: Tensor
    subsets: Tensor
    steps: Tensor

    @classmethod
    def plan(
        cls, pool: Tensor, draws: Hyperparameters, batch: int, generator: torch.Generator
    ) -> Schedule:
        sizes = (draws.fraction * len(pool)).round().long().clamp(min=10, max=len(pool))
        count = len(sizes)
        orders = [pool[torch.randperm(len(pool), generator=generator)] for _ in range(count)]
        steps = torch.ceil(draws.epochs.double() * sizes.double() / batch).long()
        return cls(sizes, torch.stack(orders), steps)

    def batch(self, active: Tensor, batch: int, generator: torch.Generator) -> Tensor:
        """``(len(active), batch)`` image indices: each active network's batch, drawn with
        replacement from its own training images."""
        draws = torch.rand(len(active), batch, generator=generator) * self.sizes[active, None]
        return self.subsets[active].gather(1, draws.long())

    def info(self, draws: Hyperparameters, pool: Tensor) -> dict[str, Tensor]:
        """The zoo's record of what each network drew (``Zoo.info``, without ``steps``)."""
        return {
            "lr": draws.lr,
            "weight_decay": draws.weight_decay,
            "init_scale": draws.init_scale,
            "train_fraction": self.sizes.double() / len(pool),
            "epochs": draws.epochs,
        }


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
