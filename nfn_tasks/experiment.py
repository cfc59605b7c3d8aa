"""The whole experiment in one call: zoos, every model on every task over several seeds, the
robustness experiment, and the results as JSON, a Markdown table and a PNG plot.

Tasks: ``generalization-relu`` and ``generalization-tanh`` (CNN zoos, Kendall's tau),
``inr`` (SIRENs of the digits, accuracy) and ``generalization-transformer`` (a zoo of one-block
transformers, Kendall's tau). ``small`` is the quick default (a few minutes on two cores; the
CNN and INR tasks only); ``transformer`` runs the transformer task alone at the size of
``small`` (about ten minutes on two cores, so it has its own setting); ``full`` trains the same
models on the full zoos (1000 CNNs, four fits of each of the 1797 digits, 500 transformers);
``tiny`` (for tests) has every task. A model kind that cannot be built for a task's architecture (the
``nfn`` package's layers on a transformer, say) is left out of that task with the reason, which
the table states.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nfn_tasks.kinds import EXPERIMENT_KINDS, TASK_NAMES
from nfn_tasks.models import ModelConfig, unavailable_reason
from nfn_tasks.robustness import (
    evaluate_transformed,
    function_change,
    transform_test_networks,
    transformations,
)
from nfn_tasks.train import TaskData, TrainConfig, metric_name, task_data, train_model
from nfn_tasks.zoo import CNNZooSettings, INRZooSettings, TransformerZooSettings, Zoo
from nfn_tasks.zoo_build import build_zoo

__all__ = [
    "TASK_NAMES",
    "ExperimentSettings",
    "SETTINGS",
    "load_task",
    "mean_std",
    "run_experiment",
    "results_table",
    "plot_results",
]

#: a transformed network must compute its original function to this relative precision
FUNCTION_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ExperimentSettings:
    name: str
    cnn: dict[str, CNNZooSettings]  # activation -> zoo settings
    inr: INRZooSettings
    train: TrainConfig
    inr_train: TrainConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    models: tuple[str, ...] = EXPERIMENT_KINDS
    seeds: tuple[int, ...] = (0, 1, 2)
    tasks: tuple[str, ...] = TASK_NAMES
    transformer: TransformerZooSettings = field(default_factory=TransformerZooSettings.small)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cnn": {k: asdict(v) for k, v in self.cnn.items()},
            "inr": asdict(self.inr),
            "transformer": asdict(self.transformer),
            "train": asdict(self.train),
            "inr_train": asdict(self.inr_train),
            "model": asdict(self.model),
            "models": list(self.models),
            "seeds": list(self.seeds),
            "tasks": list(self.tasks),
        }


SETTINGS: dict[str, ExperimentSettings] = {
    "small": ExperimentSettings(
        name="small",
        cnn={a: CNNZooSettings.small(a) for a in ("relu", "tanh")},
        inr=INRZooSettings.small(),
        train=TrainConfig(epochs=20, batch_size=32, lr=2e-3),
        inr_train=TrainConfig(epochs=20, batch_size=32, lr=2e-3),
        model=ModelConfig(channels=8, layers=2, invariant_dim=32, head_hidden=64, probe_grid=8),
        tasks=("generalization-relu", "generalization-tanh", "inr"),
    ),
    "transformer": ExperimentSettings(
        name="transformer",
        cnn={a: CNNZooSettings.small(a) for a in ("relu", "tanh")},
        inr=INRZooSettings.small(),
        train=TrainConfig(epochs=20, batch_size=32, lr=2e-3),
        inr_train=TrainConfig(epochs=20, batch_size=32, lr=2e-3),
        model=ModelConfig(channels=8, layers=2, invariant_dim=32, head_hidden=64),
        tasks=("generalization-transformer",),
        transformer=TransformerZooSettings.small(),
    ),
    "tiny": ExperimentSettings(
        name="tiny",
        cnn={a: CNNZooSettings.tiny(a) for a in ("relu", "tanh")},
        inr=INRZooSettings.tiny(),
        train=TrainConfig(epochs=2, batch_size=8, lr=2e-3),
        inr_train=TrainConfig(epochs=2, batch_size=8, lr=2e-3),
        model=ModelConfig(channels=4, layers=2, invariant_dim=8, head_hidden=16, probe_grid=8),
        seeds=(0,),
        transformer=TransformerZooSettings.tiny(),
    ),
    "full": ExperimentSettings(
        name="full",
        cnn={a: CNNZooSettings(activation=a) for a in ("relu", "tanh")},
        inr=INRZooSettings(),
        train=TrainConfig(epochs=20, batch_size=32, lr=2e-3),
        inr_train=TrainConfig(epochs=20, batch_size=32, lr=2e-3),
        model=ModelConfig(channels=8, layers=2, invariant_dim=32, head_hidden=64, probe_grid=8),
        transformer=TransformerZooSettings(),
    ),
}


def load_task(
    task_name: str, settings: ExperimentSettings, cache_dir: Path | None, progress: bool
) -> tuple[Zoo, str, TrainConfig]:
    """The zoo of a task, the training task it feeds, and its training settings."""
    if task_name == "inr":
        return build_zoo(settings.inr, cache_dir, progress), "inr", settings.inr_train
    if task_name == "generalization-transformer":
        zoo = build_zoo(settings.transformer, cache_dir, progress)
        return zoo, "generalization", settings.train
    activation = task_name.removeprefix("generalization-")
    if activation not in settings.cnn:
        raise ValueError(f"unknown task {task_name!r} (valid: {', '.join(TASK_NAMES)})")
    zoo = build_zoo(settings.cnn[activation], cache_dir, progress)
    return zoo, "generalization", settings.train


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std}


@dataclass
class _TaskRecord:
    name: str
    metric: str
    zoo_size: int
    splits: dict[str, int]
    transformations: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)  # model kind -> why it cannot run


def _run_task(
    task_name: str,
    settings: ExperimentSettings,
    cache_dir: Path | None,
    progress: bool,
    log: Callable[[str], None],
) -> _TaskRecord:
    zoo, task, train = load_task(task_name, settings, cache_dir, progress)
    data: TaskData = task_data(zoo, task, train)
    record = _TaskRecord(
        name=task_name,
        metric=metric_name(task),
        zoo_size=len(zoo),
        splits={"train": len(data.train), "val": len(data.val), "test": len(data.test)},
    )
    moved = {}
    for index, transformation in enumerate(transformations(zoo.activation, zoo.kind)):
        networks = transform_test_networks(data, transformation, seed=10_000 + index)
        change = function_change(data, networks)
        if change > FUNCTION_TOLERANCE:
            raise RuntimeError(
                f"{task_name}: transformation {transformation.label} changed a test network's "
                f"outputs by {change:.2e} (bound {FUNCTION_TOLERANCE:g}); the group is wrong"
            )
        moved[transformation.label] = networks
        record.transformations.append(
            {
                "label": transformation.label,
                "description": transformation.describe(),
                "max_function_change": change,
            }
        )
        log(f"{task_name}: {transformation.describe()}: outputs unchanged ({change:.1e})")
    for kind in settings.models:
        reason = unavailable_reason(kind, zoo.architecture, tuple(zoo.input_shape), settings.model)
        if reason is not None:
            record.excluded[kind] = reason
            log(f"{task_name} {kind:>10s}: not applicable: {reason}")
            continue
        for seed in settings.seeds:
            result = train_model(
                kind, data, replace(train, seed=seed), settings.model, progress=progress
            )
            run = result.summary()
            run["clean_float64"], run["transformed"] = evaluate_transformed(
                result.model, data, moved
            )
            record.runs.append(run)
            log(
                f"{task_name} {kind:>10s} seed {seed}: {record.metric} {result.test_metric:.3f} "
                f"({result.parameters} parameters, {result.train_seconds:.1f} s)"
            )
    return record


def _aggregate(record: _TaskRecord) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for kind in dict.fromkeys(run["kind"] for run in record.runs):
        runs = [r for r in record.runs if r["kind"] == kind]
        labels = list(runs[0]["transformed"])
        models[kind] = {
            "test_metric": mean_std([r["test_metric"] for r in runs]),
            "clean_float64": mean_std([r["clean_float64"] for r in runs]),
            "parameters": runs[0]["parameters"],
            "train_seconds": mean_std([r["train_seconds"] for r in runs]),
            "transformed": {
                label: mean_std([r["transformed"][label] for r in runs]) for label in labels
            },
        }
    return {
        "metric": record.metric,
        "zoo_size": record.zoo_size,
        "splits": record.splits,
        "transformations": record.transformations,
        "models": models,
        "excluded": record.excluded,
        "runs": record.runs,
    }


def run_experiment(
    settings: ExperimentSettings,
    out_dir: Path,
    cache_dir: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every task, write ``results.json``, ``results.md`` and ``robustness.png``."""
    start = time.perf_counter()
    results: dict[str, Any] = {"settings": settings.as_dict(), "tasks": {}}
    for task_name in settings.tasks:
        record = _run_task(task_name, settings, cache_dir, progress, log)
        results["tasks"][task_name] = _aggregate(record)
    results["seconds"] = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out_dir / "results.md").write_text(results_table(results), encoding="utf-8")
    plot_results(results, out_dir / "robustness.png")
    return results


def _cell(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def results_table(results: dict[str, Any]) -> str:
    """A Markdown table per task: metric on clean and transformed test networks."""
    lines = [f"Setting `{results['settings']['name']}`, {results['seconds']:.0f} s in total.", ""]
    for task_name, task in results["tasks"].items():
        labels = [t["label"] for t in task["transformations"]]
        described = "; ".join(f"{t['label']}: {t['description']}" for t in task["transformations"])
        lines.append(
            f"**{task_name}** ({task['metric']}; {task['zoo_size']} networks, test "
            f"{task['splits']['test']}; {described})"
        )
        lines.append("")
        header = ["model", "parameters", "clean", *labels, "train s"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for kind, model in task["models"].items():
            cells = [
                kind,
                str(model["parameters"]),
                _cell(model["clean_float64"]),
                *(_cell(model["transformed"][label]) for label in labels),
                f"{model['train_seconds']['mean']:.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for kind, reason in task.get("excluded", {}).items():
            lines.append(f"- `{kind}` not applicable: {reason}")
        if task.get("excluded"):
            lines.append("")
    return "\n".join(lines)


def plot_results(results: dict[str, Any], path: Path) -> None:
    """Metric against the transformation per model (mean ± std over seeds), one panel a task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = results["tasks"]
    figure, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for axis, (task_name, task) in zip(axes[0], tasks.items()):
        labels = ["clean", *(t["label"] for t in task["transformations"])]
        for kind, model in task["models"].items():
            stats = [model["clean_float64"], *(model["transformed"][lab] for lab in labels[1:])]
            means = [s["mean"] for s in stats]
            stds = [s["std"] for s in stats]
            axis.errorbar(range(len(labels)), means, yerr=stds, marker="o", capsize=3, label=kind)
        axis.set_xticks(range(len(labels)), labels)
        axis.set_title(task_name)
        axis.set_ylabel(task["metric"])
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
