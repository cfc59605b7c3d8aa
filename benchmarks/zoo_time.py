"""Building the full model zoos from scratch: 500 ReLU + 500 tanh CNNs and four SIREN fits of
each of the 1797 digits (target: under 10 minutes on 2 cores), with the spread of the CNNs'
test accuracies and the INR fit quality.

    python benchmarks/zoo_time.py            # writes benchmarks/results/zoo_time.txt
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from nfn_tasks.zoo import CNNZooSettings, INRZooSettings, ZooSettings
from nfn_tasks.zoo_build import generate_zoo


def main() -> None:
    rows = []
    total = 0.0
    zoos: list[ZooSettings] = [CNNZooSettings(activation="relu"), CNNZooSettings(activation="tanh"),
                               INRZooSettings()]  # fmt: skip
    for settings in zoos:  # generated from scratch (no cache)
        start = time.perf_counter()
        zoo = generate_zoo(settings, progress=True)
        seconds = time.perf_counter() - start
        total += seconds
        if zoo.kind == "cnn":
            q = torch.quantile(zoo.targets, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
            detail = "test accuracy min/q1/median/q3/max " + "/".join(f"{v:.2f}" for v in q)
        else:
            psnr = zoo.info["psnr"]
            detail = f"PSNR median {float(psnr.median()):.1f} dB, min {float(psnr.min()):.1f} dB"
        rows.append(f"{settings.name:10s} {len(zoo):5d} networks {seconds:7.1f} s   {detail}")
        print(rows[-1], flush=True)
    lines = [
        "Full zoos built from scratch (python benchmarks/zoo_time.py)",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}",
        *rows,
        f"total {total:.1f} s (target: under 600 s)",
    ]
    out = Path(__file__).parent / "results" / "zoo_time.txt"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(lines[-1])


if __name__ == "__main__":
    main()
