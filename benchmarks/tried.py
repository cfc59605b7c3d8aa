"""One model kind trained over several seeds, summarized for the "what we tried" benchmarks
(``inr_tried.py``, ``cnn_tried.py``, ``probes_tried.py``, ``canonical_tried.py``), and their
output files."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from nfn_tasks.experiment import mean_std
from nfn_tasks.models import ModelConfig
from nfn_tasks.train import TaskData, TrainConfig, train_model


@dataclass(frozen=True)
class SeededRuns:
    """Test metric over the seeds; validation metric, best epoch and first / last training loss
    of the first seed; seconds per run."""

    test: str  # "mean ± std"
    val: float
    best_epoch: int
    first_loss: float
    last_loss: float
    seconds: float


def seeded_runs(
    kind: str,
    data: TaskData,
    train: TrainConfig,
    sizes: ModelConfig,
    seeds: tuple[int, ...],
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> SeededRuns:
    """Train ``kind`` (``wrap``-ped, see :func:`train_model`) once per seed and summarize."""
    start = time.perf_counter()
    runs = [train_model(kind, data, replace(train, seed=s), sizes, wrap=wrap) for s in seeds]
    seconds = (time.perf_counter() - start) / len(seeds)
    metric = mean_std([r.test_metric for r in runs])
    first = runs[0]
    return SeededRuns(
        test=f"{metric['mean']:.3f} ± {metric['std']:.3f}",
        val=first.val_metric,
        best_epoch=first.best_epoch,
        first_loss=first.history[0]["loss"],
        last_loss=first.history[-1]["loss"],
        seconds=seconds,
    )


def write_result(name: str, description: str, command: str, rows: Sequence[str]) -> None:
    """``benchmarks/results/<name>``: the description, the command that reproduces it, the
    table rows."""
    text = f"{description}\ncommand: {command}\n\n" + "\n".join(rows) + "\n"
    out = Path(__file__).resolve().parent / "results" / name
    out.write_text(text, encoding="utf-8")
