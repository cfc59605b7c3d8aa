"""Probe features on the generalization tasks, measured: every model kind that takes them,
with the hidden activations at 0, 2 or 5 training digits per class (``--probe-images``: each
conv channel's mean activation on the CNN zoos; the stream, queries, keys, per-head attention
outputs and MLP hidden units averaged over the tokens on the transformer zoo), on the small
setting's ReLU and tanh CNN zoos and the transformer setting's zoo; then the networks' own
outputs on the 20 digits of ``probe_images=2`` (softmax, invariant under the whole group) read
by an MLP, alone and added to a model's prediction: how much of the test accuracy the function
on training digits already tells. Kendall's tau on the test networks, mean and sample std over
seeds 0-2.

    python benchmarks/probes_tried.py    # writes benchmarks/results/probes_tried.txt
"""

from __future__ import annotations

import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import vmap

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.tried import SeededRuns, seeded_runs, write_result
from nfn_runtime import WeightSpace
from nfn_tasks.experiment import SETTINGS, load_task
from nfn_tasks.models import PROBELESS_KINDS, Standardize
from nfn_tasks.probes import state_dict_batch
from nfn_tasks.train import TaskData, probe_digits, task_data
from nfn_tasks.zoo import Zoo
from nfn_tasks.zoo_cnn import cnn_forward
from nfn_tasks.zoo_transformer import transformer_forward

SEEDS = (0, 1, 2)
PER_CLASS = (0, 2, 5)
#: task -> the kinds that take probes there (the nfn package cannot read the transformer, and
#: its complete degree-2 polynomial family is over the term limit)
KINDS = {
    "generalization-relu": ("monomial", "polynomial", "hnp", "statnn", "mlp", "nfn-hnp"),
    "generalization-tanh": ("monomial", "polynomial", "hnp", "statnn", "mlp", "nfn-hnp"),
    "generalization-transformer": ("monomial", "hnp", "statnn", "mlp"),
}
OUTPUT_KINDS = ("monomial", "hnp", "statnn")


def _logits(zoo: Zoo, params: dict[str, Tensor], images: Tensor) -> Tensor:
    """``(B, P, 10)`` logits of the stacked networks of ``zoo`` at ``images``."""
    if zoo.kind == "transformer":
        norm, attention = zoo.settings["norm"], zoo.settings["attention"]
        return transformer_forward(params, images, norm=norm, attention=attention)
    logits: Tensor = vmap(lambda p: cnn_forward(p, images, None, zoo.activation))(params)
    return logits


class OutputReadout(nn.Module):
    """An MLP on the networks' softmax outputs at fixed digits (the same for every element of
    the group, which leaves the function unchanged), added to ``base``'s prediction (alone when
    ``base`` is None)."""

    def __init__(self, data: TaskData, images: Tensor, base: nn.Module | None) -> None:
        super().__init__()
        self.layout, self.scales, self.zoo = data.layout, data.scales, data.zoo
        self.register_buffer("images", images)
        self.base = base
        features = images.shape[0] * 10
        self.mlp = nn.Sequential(
            Standardize(features), nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 1)
        )

    def forward(self, ws: WeightSpace) -> Tensor:
        params = state_dict_batch(ws, self.layout, self.scales)
        logits = _logits(self.zoo, params, self.images.to(ws.dtype))
        out: Tensor = self.mlp(torch.softmax(logits, -1).flatten(1))
        return out if self.base is None else out + self.base(ws)


def _outputs_only(data: TaskData, images: Tensor, _: nn.Module) -> OutputReadout:
    """The readout alone (the model built for the run is dropped)."""
    return OutputReadout(data, images, None)


def _row(activation: str, kind: str, features: str, runs: SeededRuns) -> str:
    line = f"{activation:11s} {kind:10s} {features:26s} {runs.test:>15s} {runs.val:12.3f}"
    print(line, flush=True)
    return line


def main() -> None:
    header = f"{'zoo':11s} {'model':10s} {'features':26s} {'test tau':>15s} {'val (seed 0)':>12s}"
    rows = [header]
    print(header, flush=True)
    sizes: dict[str, tuple[int, int, int]] = {}
    for name, kinds in KINDS.items():
        activation = name.removeprefix("generalization-")
        settings = SETTINGS["transformer" if activation == "transformer" else "small"]
        zoo, task, train = load_task(name, settings, None, False)
        data = task_data(zoo, task, train)
        sizes[activation] = (len(data.train), len(data.val), len(data.test))

        for kind in kinds:
            for per_class in PER_CLASS:
                sizes_config = replace(settings.model, probe_images=per_class)
                runs = seeded_runs(kind, data, train, sizes_config, SEEDS)
                label = "weights only" if per_class == 0 else f"+ hidden, {per_class}/class"
                rows.append(_row(activation, kind, label, runs))
        images = probe_digits(zoo, 2)
        weights_only = replace(settings.model, probe_images=0)
        alone = partial(_outputs_only, data, images)
        runs = seeded_runs("statnn", data, train, weights_only, SEEDS, wrap=alone)
        rows.append(_row(activation, "-", "outputs only, 2/class", runs))
        for kind in OUTPUT_KINDS:
            added = partial(OutputReadout, data, images)
            runs = seeded_runs(kind, data, train, weights_only, SEEDS, wrap=added)
            rows.append(_row(activation, kind, "+ outputs, 2/class", runs))
    split = "; ".join(f"{a} train/val/test {'/'.join(map(str, s))}" for a, s in sizes.items())
    write_result(
        "probes_tried.txt",
        f"CNN zoos (small setting) and transformer zoo (transformer setting) ({split}), seeds "
        f"{', '.join(map(str, SEEDS))}; {', '.join(PROBELESS_KINDS)} take no probes (their group "
        "moves the input neurons)",
        "python benchmarks/probes_tried.py",
        rows,
    )


if __name__ == "__main__":
    main()
