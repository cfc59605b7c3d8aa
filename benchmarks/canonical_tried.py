"""How much of what StatNN reads on clean networks survives the scalings: StatNN and the
permutation-only ``hnp`` model on the raw weights, then on the canonical point of each network's
scaling orbit (``canon-statnn``, ``canon-hnp``: incoming norms set to 1 for ReLU neurons,
incoming sums made non-negative for tanh neurons, both for the attention's query/key and value
dimensions; exactly invariant under the whole derived group), next to the generated
``monomial`` model, on the small setting's ReLU and tanh CNN zoos and the transformer setting's
zoo, weights only and with probe features (2 digits per class). Kendall's tau on the test
networks, mean and sample std over seeds 0-2. ``--full``: the full setting's zoos (500
networks each), StatNN and ``canon-statnn`` only, weights only.

    python benchmarks/canonical_tried.py    # writes benchmarks/results/canonical_tried.txt
    python benchmarks/canonical_tried.py --full    # ... canonical_tried_full.txt
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.tried import seeded_runs, write_result
from nfn_tasks.experiment import SETTINGS, load_task
from nfn_tasks.train import task_data

SEEDS = (0, 1, 2)
TASKS = ("generalization-relu", "generalization-tanh", "generalization-transformer")
KINDS = ("statnn", "canon-statnn", "hnp", "canon-hnp", "monomial")
PER_CLASS = (0, 2)


def main() -> None:
    full = "--full" in sys.argv[1:]
    kinds, per_classes = (("statnn", "canon-statnn"), (0,)) if full else (KINDS, PER_CLASS)
    header = f"{'zoo':11s} {'model':12s} {'features':18s} {'test tau':>15s} {'val (seed 0)':>12s}"
    rows = [header]
    print(header, flush=True)
    sizes: dict[str, tuple[int, int, int]] = {}
    for name in TASKS:
        zoo_name = name.removeprefix("generalization-")
        small = "transformer" if zoo_name == "transformer" else "small"
        settings = SETTINGS["full" if full else small]
        zoo, task, train = load_task(name, settings, None, False)
        data = task_data(zoo, task, train)
        sizes[zoo_name] = (len(data.train), len(data.val), len(data.test))
        for per_class in per_classes:
            features = "weights only" if per_class == 0 else f"+ hidden, {per_class}/class"
            for kind in kinds:
                config = replace(settings.model, probe_images=per_class)
                runs = seeded_runs(kind, data, train, config, SEEDS)
                line = f"{zoo_name:11s} {kind:12s} {features:18s} {runs.test:>15s} {runs.val:12.3f}"
                print(line, flush=True)
                rows.append(line)
    split = "; ".join(f"{z} train/val/test {'/'.join(map(str, s))}" for z, s in sizes.items())
    zoos = (
        "full setting's zoos"
        if full
        else "CNN zoos (small setting) and transformer zoo (transformer setting)"
    )
    write_result(
        "canonical_tried_full.txt" if full else "canonical_tried.txt",
        f"{zoos} ({split}), seeds {', '.join(map(str, SEEDS))}",
        f"python benchmarks/canonical_tried.py{' --full' if full else ''}",
        rows,
    )


if __name__ == "__main__":
    main()
