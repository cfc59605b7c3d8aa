"""What was tried on the INR task (independent initializations), measured on the small
setting's INR zoo (two fits of each of 600 digits) with its models and training, seeds 0-2:

- ``weights``: the weights alone (no probe features), every model kind;
- ``probes-4``: probe features at a 4 x 4 grid of [-1, 1]^2, points the SIRENs were not fit on
  (only its corners are pixel centres of the 8 x 8 digits);
- ``weights-16ch``: the weights alone with 16 channels instead of 8 (more capacity).

Probe features at the 8 x 8 pixel centres (the settings' choice) on the same zoo, models and
seeds are the small setting's INR table (``make results``), so they are not run again here.

Per model: test accuracy (mean and sample std over the seeds), the epoch with the best
validation accuracy, and the training loss of the first and the last epoch (seed 0; an
under-fitting model stays near ln 10 = 2.30, a memorizing one goes to 0 while its test
accuracy stays at chance).

    python benchmarks/inr_tried.py    # writes benchmarks/results/inr_tried.txt
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.tried import seeded_runs, write_result
from nfn_tasks.experiment import SETTINGS, load_task
from nfn_tasks.kinds import EXPERIMENT_KINDS
from nfn_tasks.train import task_data

GENERATED = ("hnp", "monomial", "polynomial")
VARIANTS = {  # name -> (probe grid, channels, model kinds)
    "weights": (0, 8, EXPERIMENT_KINDS),
    "weights-16ch": (0, 16, ("np", "monomial", "polynomial")),
    "probes-4": (4, 8, (*GENERATED, "statnn", "nfn-hnp")),
}
SEEDS = (0, 1, 2)


def main() -> None:
    settings = SETTINGS["small"]
    zoo, task, train = load_task("inr", settings, None, progress=False)
    data = task_data(zoo, task, train)
    rows = []
    header = (
        f"{'variant':13s} {'model':11s} {'test accuracy':>15s} {'best epoch':>10s} "
        f"{'loss 1st':>8s} {'loss last':>9s} {'s/run':>6s}"
    )
    print(header, flush=True)
    for variant, (grid, channels, kinds) in VARIANTS.items():
        model = replace(settings.model, probe_grid=grid, channels=channels)
        for kind in kinds:
            r = seeded_runs(kind, data, train, model, SEEDS)
            rows.append(f"{variant:13s} {kind:11s} {r.test:>15s} {r.best_epoch:10d} "
                        f"{r.first_loss:8.3f} {r.last_loss:9.3f} {r.seconds:6.1f}")  # fmt: skip
            print(rows[-1], flush=True)
    write_result(
        "inr_tried.txt",
        f"INR task, small setting's zoo ({len(zoo)} SIRENs; train/val/test {len(data.train)}/"
        f"{len(data.val)}/{len(data.test)}), {train.epochs} epochs, seeds "
        f"{', '.join(map(str, SEEDS))}",
        "python benchmarks/inr_tried.py",
        [header, *rows],
    )


if __name__ == "__main__":
    main()
