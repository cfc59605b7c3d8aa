"""Train a zoo of small CNNs on the digits, all networks at once.

Every network is ``nfn_runtime.architectures.SmallCNN(1, (8, 8, 8), 10, activation)``. Each
draws its own hyperparameters: Adam learning rate, decoupled weight decay, initialization scale
(a factor on PyTorch's default bounds), the fraction of the training images it sees, its number
of epochs and its dropout rate before the head. One training step evaluates the per-network
gradients of all still-training networks with ``torch.func.vmap(torch.func.grad(...))``, each
on its own batch of its own images, and applies a per-network AdamW update. The target is the
network's accuracy on held-out digits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad_and_value, vmap

from nfn_tasks.data import digits, stratified_split
from nfn_tasks.zoo import CNNZooSettings, Zoo
from nfn_tasks.zoo_training import Hyperparameters, Schedule, adamw_step, uniform

__all__ = ["CNN_CHANNELS", "train_cnn_zoo", "cnn_forward", "cnn_hidden", "cnn_accuracy"]

CNN_CHANNELS = (1, 8, 8, 8)
CLASSES = 10
CONV_KEYS = ("features.0", "features.2", "features.4")

Params = dict[str, Tensor]


def _activation(name: str) -> Callable[[Tensor], Tensor]:
    return torch.relu if name == "relu" else torch.tanh


def _conv_stack(params: Params, images: Tensor, activation: str) -> list[Tensor]:
    """One network's activation maps, per convolution."""
    act = _activation(activation)
    h, maps = images, []
    for key in CONV_KEYS:
        h = act(F.conv2d(h, params[f"{key}.weight"], params[f"{key}.bias"], stride=2, padding=1))
        maps.append(h)
    return maps


def cnn_forward(params: Params, images: Tensor, keep: Tensor | None, activation: str) -> Tensor:
    """One network's logits (``SmallCNN.forward``); ``keep``: the scaled dropout mask."""
    h = _conv_stack(params, images, activation)[-1].mean(dim=(-2, -1))
    if keep is not None:
        h = h * keep
    return F.linear(h, params["head.weight"], params["head.bias"])


def _init_params(count: int, scales: Tensor, generator: torch.Generator) -> Params:
    """PyTorch's default Conv2d / Linear initialization, bounds multiplied per network."""
    shapes: dict[str, tuple[int, ...]] = {}
    for key, (c_in, c_out) in zip(CONV_KEYS, itertools.pairwise(CNN_CHANNELS)):
        shapes[f"{key}.weight"] = (c_out, c_in, 3, 3)
        shapes[f"{key}.bias"] = (c_out,)
    shapes["head.weight"] = (CLASSES, CNN_CHANNELS[-1])
    shapes["head.bias"] = (CLASSES,)
    params: Params = {}
    for key, shape in shapes.items():
        weight_shape = shapes[key.replace(".bias", ".weight")]
        fan_in = math.prod(weight_shape[1:])
        bound = scales.reshape(-1, *([1] * len(shape))) / math.sqrt(fan_in)
        uniform = torch.rand((count, *shape), generator=generator) * 2 - 1
        params[key] = (uniform * bound).float()
    return params


def cnn_hidden(params: Params, images: Tensor, activation: str) -> list[Tensor]:
    """Stacked networks' hidden activations at ``images (P, 1, 8, 8)``: per convolution, each
    channel's activation averaged over the image, ``(N, P, channels)``."""

    def one(p: Params) -> list[Tensor]:
        return [h.mean(dim=(-2, -1)) for h in _conv_stack(p, images, activation)]

    hidden: list[Tensor] = vmap(one)(params)
    return hidden


def cnn_accuracy(params: Params, images: Tensor, labels: Tensor, activation: str) -> Tensor:
    """``(N,)`` accuracies of stacked networks on ``images`` (no dropout)."""
    forward = vmap(lambda p: cnn_forward(p, images, None, activation))
    correct = []
    count = next(iter(params.values())).shape[0]
    with torch.no_grad():
        for start in range(0, count, 256):
            chunk = {key: value[start : start + 256] for key, value in params.items()}
            logits = forward(chunk)
            correct.append((logits.argmax(-1) == labels).double().mean(-1))
    return torch.cat(correct)


def train_cnn_zoo(settings: CNNZooSettings, progress: bool = False) -> Zoo:
    """Train the zoo described by ``settings`` (deterministic for a given thread count)."""
    generator = torch.Generator().manual_seed(settings.seed)
    images, labels = digits(torch.float32)
    pool, test = stratified_split(labels, settings.test_images, settings.seed)
    n = settings.networks
    hyper = Hyperparameters.draw(settings, n, generator)
    lr, weight_decay = hyper.lr, hyper.weight_decay
    dropout = uniform(settings.dropout, n, generator)
    batch = settings.batch_size
    schedule = Schedule.plan(pool, hyper, batch, generator)
    steps = schedule.steps
    params = _init_params(n, hyper.init_scale, generator)
    moments = {key: torch.zeros_like(value) for key, value in params.items()}
    squares = {key: torch.zeros_like(value) for key, value in params.items()}

    def loss(p: Params, x: Tensor, y: Tensor, keep: Tensor) -> Tensor:
        return F.cross_entropy(cnn_forward(p, x, keep, settings.activation), y)

    step_fn = vmap(grad_and_value(loss))
    total = int(steps.max())
    iterator: Iterable[int] = range(1, total + 1)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(
            iterator, desc=f"CNN zoo ({settings.activation}, {n} networks)", unit="step"
        )
    for step in iterator:
        active = (steps >= step).nonzero().flatten()
        index = schedule.batch(active, batch, generator)
        x, y = images[index], labels[index]
        rate = dropout[active].float()[:, None]
        keep_rand = torch.rand(len(active), batch, CNN_CHANNELS[-1], generator=generator)
        keep = (keep_rand >= rate[:, :, None]).float() / (1 - rate[:, :, None])
        current = {key: value[active] for key, value in params.items()}
        grads, _ = step_fn(current, x, y, keep)
        adamw_step(params, moments, squares, current, grads, active, lr, weight_decay, step)
    test_accuracy = cnn_accuracy(params, images[test], labels[test], settings.activation)
    train_accuracy = cnn_accuracy(params, images[pool], labels[pool], settings.activation)
    return Zoo(
        kind="cnn",
        architecture=settings.architecture,
        input_shape=settings.input_shape,
        activation=settings.activation,
        params={key: value.contiguous() for key, value in params.items()},
        targets=test_accuracy.float(),
        groups=torch.arange(n),
        info={
            **schedule.info(hyper, pool),
            "dropout": dropout,
            "steps": steps,
            "train_accuracy": train_accuracy.float(),
        },
        settings={"kind": "cnn", **asdict(settings)},
    )
