"""Training NFNs on a model zoo: splits, losses, metrics, and one training loop that runs in a
single process or under ``torchrun`` with DistributedDataParallel (gloo, CPU).

Tasks: ``generalization`` (predict a CNN's or a transformer's test accuracy from its weights;
metric Kendall's tau on held-out networks) and ``inr`` (classify the digit an INR encodes; metric accuracy on
held-out images). Under DDP every rank draws the same global batch (one seeded permutation per
epoch) and takes its contiguous share, so the averaged gradients equal those of one process
on the whole batch; evaluation is sharded and gathered, so every rank sees the same metrics.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from nfn_runtime import WeightSpace, WeightSpaceLayout
from nfn_tasks.data import digits, pixel_grid, stratified_split
from nfn_tasks.models import (
    ModelConfig,
    build_model,
    calibrate,
    count_parameters,
    weight_space_layout,
)
from nfn_tasks.probes import ProbeFeatures, chain_biases
from nfn_tasks.zoo import Zoo
from nfn_tasks.zoo_cnn import cnn_hidden
from nfn_tasks.zoo_inr import siren_hidden
from nfn_tasks.zoo_transformer import transformer_hidden, transformer_probe_keys

__all__ = [
    "TASKS",
    "TrainConfig",
    "TaskData",
    "TrainResult",
    "task_data",
    "task_probes",
    "probe_digits",
    "zoo_weight_space",
    "kendall_tau",
    "metric_name",
    "task_metric",
    "task_loss",
    "predict",
    "train_model",
]

TASKS = ("generalization", "inr")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    test_fraction: float = 0.25  # held-out networks (generalization) or images (inr)
    val_fraction: float = 0.15  # of the rest, for choosing the best epoch
    split_seed: int = 0  # the split is shared by every model and seed


@dataclass
class TaskData:
    """A zoo as tensors: the whole weight space (one channel), targets and the three splits.

    ``weights`` are the zoo's weights divided tensor by tensor by ``scales`` (the root mean
    square of that tensor over the training networks; corresponding tensors of the heads of an
    attention share one). A scalar per tensor commutes with every permutation, scaling and
    sign flip, and a scalar shared across heads with relabelling them, so the normalized
    weights carry the same symmetries."""

    task: str
    zoo: Zoo
    layout: WeightSpaceLayout
    weights: WeightSpace
    targets: Tensor
    train: Tensor
    val: Tensor
    test: Tensor
    scales: dict[str, float] = field(default_factory=dict)

    @property
    def outputs(self) -> int:
        return 1 if self.task == "generalization" else 10


@dataclass
class TrainResult:
    kind: str
    task: str
    seed: int
    model: nn.Module
    test_metric: float
    val_metric: float
    best_epoch: int
    parameters: int
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "task": self.task,
            "seed": self.seed,
            "test_metric": self.test_metric,
            "val_metric": self.val_metric,
            "best_epoch": self.best_epoch,
            "parameters": self.parameters,
            "train_seconds": self.train_seconds,
        }


def zoo_weight_space(
    zoo: Zoo, layout: WeightSpaceLayout, dtype: torch.dtype = torch.float32
) -> WeightSpace:
    """All networks of ``zoo`` as one :class:`WeightSpace` ``(N, 1, ...)`` in ``layout`` (a
    tensor that is part of a state-dict entry, such as one head's rows of a packed attention
    projection, reads its slice)."""
    tensors = {}
    for spec in layout.tensors:
        value = zoo.params[spec.source_key]
        if spec.source_slice is not None:
            rows = (slice(None), *spec.source_index())  # every network, then the part's slice
            value = value[rows]
        tensors[spec.name] = value.reshape(len(zoo), 1, *layout.shape(spec)).to(dtype)
    return WeightSpace.from_named(layout, tensors)


def task_data(zoo: Zoo, task: str, config: TrainConfig) -> TaskData:
    """Split ``zoo`` (by its groups) into train / validation / test for ``task``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (valid: {', '.join(TASKS)})")
    expected = ("cnn", "transformer") if task == "generalization" else ("inr",)
    if zoo.kind not in expected:
        raise ValueError(f"task {task!r} needs a {' or '.join(expected)} zoo, got a {zoo.kind} zoo")
    layout = weight_space_layout(zoo.architecture, tuple(zoo.input_shape))
    rest, test = zoo.split(config.test_fraction, config.split_seed)
    inner_train, inner_val = zoo.subset(rest).split(config.val_fraction, config.split_seed + 1)
    targets = zoo.targets.float() if task == "generalization" else zoo.targets.long()
    train = rest[inner_train]
    raw = zoo_weight_space(zoo, layout)
    scales = _tie_head_scales(
        {
            name: float(value.index_select(0, train).double().pow(2).mean().sqrt()) or 1.0
            for name, value in raw.named(layout).items()
        },
        layout,
    )
    weights = WeightSpace.from_named(
        layout, {name: value / scales[name] for name, value in raw.named(layout).items()}
    )
    return TaskData(
        task=task,
        zoo=zoo,
        layout=layout,
        weights=weights,
        targets=targets,
        train=train,
        val=rest[inner_val],
        test=test,
        scales=scales,
    )


def _tie_head_scales(scales: dict[str, float], layout: WeightSpaceLayout) -> dict[str, float]:
    """One scale for the corresponding tensors of every head (their root mean square), so that
    dividing by the scales commutes with relabelling heads as well."""
    tied = dict(scales)
    for heads in layout.heads:
        for entry in zip(*heads.tensors):  # entry k of every head
            names = [name for name in entry if name in scales]
            if names:
                shared = math.sqrt(sum(scales[name] ** 2 for name in names) / len(names))
                tied.update(dict.fromkeys(names, shared))
    return tied


def task_probes(data: TaskData, config: ModelConfig | None) -> ProbeFeatures | None:
    """The probe features ``config`` asks for: on the INR task the SIRENs' hidden activations
    at the pixel centres of a ``probe_grid x probe_grid`` image (``nfn_tasks.data.pixel_grid``;
    8: the digits' own pixels); on a CNN zoo each channel's mean activation, on the transformer
    zoo the mean activations over the tokens (:func:`transformer_hidden`), at ``probe_images``
    digits per class (:func:`probe_digits`). None when off."""
    if config is None:
        return None
    zoo = data.zoo
    if zoo.kind == "inr" and config.probe_grid > 0:
        keys = chain_biases(data.layout)
        hidden = partial(_keyed, keys, siren_hidden)
        return ProbeFeatures(data.layout, keys, hidden, pixel_grid(config.probe_grid), data.scales)
    if config.probe_images == 0 or zoo.kind not in ("cnn", "transformer"):
        return None
    images = probe_digits(zoo, config.probe_images)
    if zoo.kind == "cnn":
        keys = chain_biases(data.layout)
        hidden = partial(_keyed, keys, partial(_cnn_hidden, zoo.activation))
        return ProbeFeatures(data.layout, keys, hidden, images, data.scales)
    norm, attention = zoo.settings["norm"], zoo.settings["attention"]
    keys = transformer_probe_keys(attention)
    forward = partial(_transformer_hidden, norm, attention)
    return ProbeFeatures(data.layout, keys, forward, images, data.scales)


def _keyed(
    keys: list[str], hidden: Callable[[dict[str, Tensor], Tensor], list[Tensor]],
    params: dict[str, Tensor], probes: Tensor,
) -> dict[str, Tensor]:  # fmt: skip
    """A chain's hidden activations (a list in layer order) keyed by its hidden biases."""
    return dict(zip(keys, hidden(params, probes), strict=True))


def _cnn_hidden(activation: str, params: dict[str, Tensor], images: Tensor) -> list[Tensor]:
    return cnn_hidden(params, images, activation)


def _transformer_hidden(
    norm: str, attention: str, params: dict[str, Tensor], images: Tensor
) -> dict[str, Tensor]:
    return transformer_hidden(params, images, norm=norm, attention=attention)


def probe_digits(zoo: Zoo, per_class: int) -> Tensor:
    """The first ``per_class`` digits of each class (in the data set's order) among the images
    the zoo's networks trained on (never its held-out images, on which the targets are measured),
    ``(10 * per_class, 1, 8, 8)`` ordered by class."""
    images, labels = digits(torch.float32)
    pool, _ = stratified_split(labels, zoo.settings["test_images"], zoo.settings["seed"])
    chosen = [pool[labels[pool] == label][:per_class] for label in range(10)]
    return images[torch.cat(chosen)]


def kendall_tau(x: Tensor, y: Tensor) -> float:
    """Kendall's tau-b of two 1-D tensors (ties handled)."""
    from scipy.stats import kendalltau

    tau = kendalltau(x.detach().double().cpu().numpy(), y.detach().double().cpu().numpy())
    value = float(tau.statistic)
    return 0.0 if math.isnan(value) else value


def task_loss(task: str, outputs: Tensor, targets: Tensor) -> Tensor:
    if task == "generalization":
        return F.binary_cross_entropy_with_logits(outputs[:, 0], targets.to(outputs.dtype))
    return F.cross_entropy(outputs, targets)


def metric_name(task: str) -> str:
    """The name of :func:`task_metric` for ``task``."""
    return "kendall_tau" if task == "generalization" else "accuracy"


def task_metric(task: str, outputs: Tensor, targets: Tensor) -> float:
    """Kendall's tau of predicted and true accuracies, or classification accuracy."""
    if task == "generalization":
        return kendall_tau(outputs[:, 0], targets)
    return float((outputs.argmax(1) == targets).double().mean())


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _select(ws: WeightSpace, index: Tensor) -> WeightSpace:
    return ws.map(lambda t: t.index_select(0, index))


@torch.no_grad()
def predict(model: nn.Module, ws: WeightSpace, index: Tensor, batch_size: int = 256) -> Tensor:
    """Model outputs for the networks ``index`` (sharded over ranks and gathered under DDP)."""
    rank, size = _world()
    shard = index.tensor_split(size)[rank]
    model.eval()
    chunks = [model(_select(ws, part)) for part in torch.split(shard, batch_size)]
    local = torch.cat(chunks) if chunks else torch.empty(0)
    if size == 1:
        return local
    width = int(local.shape[1]) if local.dim() == 2 else 1
    counts = [len(part) for part in index.tensor_split(size)]
    padded = torch.zeros(max(counts), width, dtype=local.dtype)
    padded[: len(local)] = local.reshape(len(local), width)
    gathered = [torch.zeros_like(padded) for _ in range(size)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, counts)])


def train_model(
    kind: str,
    data: TaskData,
    config: TrainConfig,
    model_config: ModelConfig | None = None,
    progress: bool = False,
    checkpoint: Path | None = None,
    log: Callable[[str], None] | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> TrainResult:
    """Train a fresh model of ``kind`` with AdamW; keep the epoch with the best validation
    metric. Works unchanged under ``torchrun`` (DDP over the initialized process group).
    ``wrap`` replaces the built model by ``wrap(model)`` before training (the benchmarks use
    it to add a readout to a model)."""
    rank, size = _world()
    if config.batch_size % size:
        raise ValueError(f"batch size {config.batch_size} is not divisible by {size} processes")
    torch.manual_seed(config.seed)
    example = _select(data.weights, data.train[:2])
    model = build_model(
        kind,
        data.zoo.architecture,
        tuple(data.zoo.input_shape),
        example,
        data.outputs,
        model_config,
        probes=task_probes(data, model_config),
    )
    if wrap is not None:
        model = wrap(model)
    calibrate(model, _select(data.weights, data.train))
    parameters = count_parameters(model)
    net: nn.Module = model
    if size > 1:
        net = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    local_batch = config.batch_size // size
    steps = len(data.train) // config.batch_size
    best_metric, best_epoch, best_state = -math.inf, 0, copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    epochs: Any = range(1, config.epochs + 1)
    if progress and rank == 0:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc=f"{data.task} {kind} seed {config.seed}", leave=False)
    for epoch in epochs:
        net.train()
        order = data.train[torch.randperm(len(data.train), generator=generator)]
        total = 0.0
        for step in range(steps):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            local = batch[rank * local_batch : (rank + 1) * local_batch]
            loss = task_loss(data.task, net(_select(data.weights, local)), data.targets[local])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += float(loss.detach())
        val = task_metric(data.task, predict(model, data.weights, data.val), data.targets[data.val])
        history.append({"epoch": epoch, "loss": total / max(steps, 1), "val_metric": val})
        if val > best_metric:
            best_metric, best_epoch = val, epoch
            best_state = copy.deepcopy(model.state_dict())
        if log is not None and rank == 0:
            log(f"epoch {epoch}: loss {total / max(steps, 1):.4f}, validation {val:.4f}")
    train_seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    test = task_metric(data.task, predict(model, data.weights, data.test), data.targets[data.test])
    if checkpoint is not None and rank == 0:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"kind": kind, "state_dict": model.state_dict(), "epoch": best_epoch}, checkpoint
        )
    return TrainResult(
        kind=kind,
        task=data.task,
        seed=config.seed,
        model=model,
        test_metric=test,
        val_metric=best_metric,
        best_epoch=best_epoch,
        parameters=parameters,
        train_seconds=train_seconds,
        history=history,
    )
