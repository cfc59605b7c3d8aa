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

from nfn_tasks.experiment import SETTINGS, load_task, mean_std
from nfn_tasks.train import task_data, train_model

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
            runs = [train_model(kind, data, replace(config, seed=s), sizes) for s in SEEDS]
            tau = mean_std([r.test_metric for r in runs])
            first, last = runs[0].history[0]["loss"], runs[0].history[-1]["loss"]
            cell = f"{tau['mean']:.3f} ± {tau['std']:.3f}"
            rows.append(f"{kind:10s} {name:18s} {cell:>15s} {runs[0].val_metric:12.3f} "
                        f"{runs[0].best_epoch:10d} {first:8.3f} {last:9.3f}")  # fmt: skip
            print(rows[-1], flush=True)
    text = (
        f"ReLU CNN zoo, small setting ({len(zoo)} networks; train/val/test {len(data.train)}/"
        f"{len(data.val)}/{len(data.test)}), seeds {', '.join(map(str, SEEDS))}\n"
        "command: python benchmarks/cnn_tried.py\n\n" + "\n".join(rows) + "\n"
    )
    out = Path(__file__).resolve().parent / "results" / "cnn_tried.txt"
    out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
