"""``nfn-derive zoo``, ``train`` and ``experiment``: the task commands of the command line.

The command line finds them through the ``nfn_derive.commands`` entry point ``tasks``, which
names :func:`register`; ``derive`` itself never imports ``nfn_tasks``.

``train`` runs unchanged under ``torchrun --nproc_per_node=N -m derive.cli train ...``: with
more than one process it joins a gloo process group and trains with DistributedDataParallel;
rank 0 alone prints, writes the results and the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from derive.errors import SpecError
from nfn_tasks.kinds import MODEL_KINDS, TASK_NAMES

if TYPE_CHECKING:
    from nfn_tasks.experiment import ExperimentSettings

__all__ = ["register", "add_task_commands", "TASK_COMMANDS"]

SETTING_CHOICES = ("tiny", "small", "transformer", "full")


def register(commands: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """The ``nfn_derive.commands`` entry point: add the subcommands to ``commands`` (argparse
    subparsers) and return their handlers."""
    add_task_commands(commands)
    return dict(TASK_COMMANDS)


def add_task_commands(commands: Any) -> None:
    """Add the ``zoo``, ``train`` and ``experiment`` subcommands."""
    zoo = commands.add_parser("zoo", help="build (or load from the cache) a model zoo")
    zoo.add_argument("task", choices=TASK_NAMES)
    _common(zoo)

    train = commands.add_parser("train", help="train an NFN or a baseline on a model zoo")
    train.add_argument("--task", choices=("generalization", "inr"), required=True)
    train.add_argument(
        "--activation",
        choices=("relu", "tanh", "transformer"),
        default="relu",
        help="generalization: the relu or tanh CNN zoo, or the transformer zoo (default relu)",
    )
    train.add_argument("--model", choices=MODEL_KINDS, required=True)
    train.add_argument("--seeds", default="0,1,2", help="comma list of training seeds")
    train.add_argument("--epochs", type=int, help="override the setting's epochs")
    train.add_argument("--batch-size", type=int, help="override the setting's global batch size")
    train.add_argument("--lr", type=float, help="override the setting's learning rate")
    _probe_option(train)
    train.add_argument("--out", help="write the results as JSON here")
    train.add_argument("--checkpoint-dir", help="save each seed's best model here (rank 0)")
    _common(train)

    experiment = commands.add_parser(
        "experiment", help="every model on every task, the robustness experiment, table and plot"
    )
    experiment.add_argument("--out", default="results", help="folder for results.json/.md/.png")
    experiment.add_argument("--seeds", help="comma list of seeds (default: the setting's)")
    experiment.add_argument("--models", help="comma list of model kinds (default: all)")
    experiment.add_argument("--tasks", help="comma list of tasks (default: all)")
    _probe_option(experiment)
    _common(experiment)


def _probe_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--probe-grid",
        type=int,
        help="side of the grid of probe inputs whose hidden activations feed the models on the "
        "INR task (0: weights only; default: the setting's)",
    )
    parser.add_argument(
        "--probe-images",
        type=int,
        help="digits per class whose mean hidden activations feed the models on the CNN and "
        "transformer zoos (0: weights only; default: the setting's)",
    )


def _with_probes(settings: ExperimentSettings, args: argparse.Namespace) -> ExperimentSettings:
    model = settings.model
    for option, field in (("--probe-grid", "probe_grid"), ("--probe-images", "probe_images")):
        value = getattr(args, field)
        if value is None:
            continue
        if value < 0:
            raise SpecError(f"must be 0 or a positive integer, got {value}", option)
        model = replace(model, **{field: value})
    return replace(settings, model=model)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--setting", choices=SETTING_CHOICES, default="small")
    parser.add_argument(
        "--cache-dir", help="zoo cache (default $NFN_ZOO_CACHE or ~/.cache/nfn-derive/zoos)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise SpecError(f"expected a comma list of integers, got {text!r}", option) from None
    if not values:
        raise SpecError("give at least one value", option)
    return values


def _names(text: str, valid: tuple[str, ...], option: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    for name in names:
        if name not in valid:
            raise SpecError(f"unknown value {name!r} (valid: {', '.join(valid)})", option)
    if not names:
        raise SpecError("give at least one value", option)
    return names


def _cache(args: argparse.Namespace) -> Path | None:
    return Path(args.cache_dir) if args.cache_dir else None


def _settings(name: str) -> Any:
    from nfn_tasks.experiment import SETTINGS

    return SETTINGS[name]


def _zoo(args: argparse.Namespace) -> int:
    from nfn_tasks.experiment import load_task

    zoo, _, _ = load_task(args.task, _settings(args.setting), _cache(args), not args.no_progress)
    print(f"{args.task}: {len(zoo)} networks of {zoo.architecture} ({zoo.kind} zoo)")
    if zoo.kind == "inr":
        psnr = sorted(float(p) for p in zoo.info["psnr"])
        print(f"fit PSNR: min {psnr[0]:.1f} dB, median {statistics.median(psnr):.1f} dB")
    if zoo.kind in ("cnn", "transformer"):
        accuracies = sorted(float(a) for a in zoo.targets)
        quartiles = statistics.quantiles(accuracies, n=4)
        print(
            f"test accuracy: min {accuracies[0]:.3f}, quartiles "
            + ", ".join(f"{q:.3f}" for q in quartiles)
            + f", max {accuracies[-1]:.3f}"
        )
    return 0


def _init_distributed() -> tuple[int, int]:
    """Join the process group ``torchrun`` describes (gloo, CPU); (rank, world size)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def _train(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from nfn_tasks.experiment import load_task, mean_std
    from nfn_tasks.train import metric_name, task_data, train_model

    settings = _with_probes(_settings(args.setting), args)
    seeds = _ints(args.seeds, "--seeds")
    for option, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise SpecError(f"must be a positive integer, got {value}", option)
    rank, size = _init_distributed()
    task_name = "inr" if args.task == "inr" else f"generalization-{args.activation}"
    if size > 1 and rank != 0:  # rank 0 builds (or loads) the zoo, the others then load it
        dist.barrier()
    zoo, task, config = load_task(
        task_name, settings, _cache(args), rank == 0 and not args.no_progress
    )
    if size > 1 and rank == 0:
        dist.barrier()
    overrides = {
        key: value
        for key, value in (
            ("epochs", args.epochs),
            ("batch_size", args.batch_size),
            ("lr", args.lr),
        )
        if value is not None
    }
    config = replace(config, **overrides)
    if config.batch_size % size:
        raise SpecError(
            f"global batch size {config.batch_size} is not divisible by {size} processes",
            "--batch-size",
        )
    data = task_data(zoo, task, config)
    runs = []
    for seed in seeds:
        checkpoint = (
            Path(args.checkpoint_dir) / f"{task_name}_{args.model}_seed{seed}.pt"
            if args.checkpoint_dir
            else None
        )
        result = train_model(
            args.model,
            data,
            replace(config, seed=seed),
            settings.model,
            progress=rank == 0 and not args.no_progress,
            checkpoint=checkpoint,
        )
        runs.append(result.summary())
        if rank == 0:
            print(
                f"{task_name} {args.model} seed {seed}: test {metric_name(task)} "
                f"{result.test_metric:.4f} (best epoch {result.best_epoch}, "
                f"{result.parameters} parameters, {result.train_seconds:.1f} s, {size} process"
                f"{'es' if size > 1 else ''})"
            )
    metrics = [r["test_metric"] for r in runs]
    summary = {
        "task": task_name,
        "model": args.model,
        "setting": args.setting,
        "processes": size,
        "metric": metric_name(task),
        **mean_std(metrics),
        "parameters": runs[0]["parameters"],
        "runs": runs,
    }
    if rank == 0:
        print(
            f"{task_name} {args.model}: {summary['metric']} {summary['mean']:.4f} ± "
            f"{summary['std']:.4f} over {len(seeds)} seed(s)"
        )
        if args.out:
            Path(args.out).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if size > 1:
        dist.destroy_process_group()
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from nfn_tasks.experiment import results_table, run_experiment

    settings = _with_probes(_settings(args.setting), args)
    if args.seeds:
        settings = replace(settings, seeds=_ints(args.seeds, "--seeds"))
    if args.models:
        settings = replace(settings, models=_names(args.models, MODEL_KINDS, "--models"))
    if args.tasks:
        settings = replace(settings, tasks=_names(args.tasks, TASK_NAMES, "--tasks"))
    out = Path(args.out)
    results = run_experiment(settings, out, _cache(args), progress=not args.no_progress)
    sys.stdout.write("\n" + results_table(results))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'robustness.png'}")
    return 0


TASK_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "zoo": _zoo,
    "train": _train,
    "experiment": _experiment,
}
