"""What was tried on the ReLU CNN zoo, where the polynomial model trails the monomial one:
learning rate, weight decay, epochs and channels, for both, on the small setting's zoo with its
models and training (Kendall's tau on the test networks, mean and sample std over seeds 0-2;
the validation metric, best epoch and first/last training loss of seed 0).

    python benchmarks/cnn_tried.py    # writes benchmarks/results/cnn_tried.txt
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


def main() -> None:
    settings = SETTINGS["small"]
    zoo, task, train = load_task("generalization-relu", settings, None, progress=False)
    data = task_data(zoo, task, train)
    model = settings.model
    variants = {
        "default": (train, model),
        "lr 5e-4": (replace(train, lr=5e-4), model),
        "weight decay 1e-2": (replace(train, weight_decay=1e-2), model),
        "40 epochs": (replace(train, epochs=40), model),
        "16 channels": (train, replace(model, channels=16)),
        "4 channels": (train, replace(model, channels=4)),
    }
    header = (
        f"{'model':10s} {'variant':18s} {'test tau':>15s} {'val (seed 0)':>12s} "
        f"{'best epoch':>10s} {'loss 1st':>8s} {'loss last':>9s}"
    )
    rows = [header]
    print(header, flush=True)
    for kind in ("monomial", "polynomial"):
        for name, (config, sizes) in variants.items():
            r = seeded_runs(kind, data, config, sizes, SEEDS)
            rows.append(f"{kind:10s} {name:18s} {r.test:>15s} {r.val:12.3f} "
                        f"{r.best_epoch:10d} {r.first_loss:8.3f} {r.last_loss:9.3f}")  # fmt: skip
            print(rows[-1], flush=True)
    write_result(
        "cnn_tried.txt",
        f"ReLU CNN zoo, small setting ({len(zoo)} networks; train/val/test {len(data.train)}/"
        f"{len(data.val)}/{len(data.test)}), seeds {', '.join(map(str, SEEDS))}",
        "python benchmarks/cnn_tried.py",
        rows,
    )


if __name__ == "__main__":
    main()
