"""Polynomial (MAGEP) layers against the generated linear layers and the pointwise floor, and
how their time grows with depth.

    python benchmarks/poly_speed.py                  # both parts
    python benchmarks/poly_speed.py --part main      # (64,128,128,128,10), C=16, B=32
    python benchmarks/poly_speed.py --part depth     # L = 2..16 at widths (64, 128 x (L-1), 10)

The main part times the layers round-robin in one process (median and best of N) and measures
peak memory per layer in a fresh process (see benchmarks/layer_speed.py). The depth part fits
time = a + b L by least squares for the polynomial and the linear layer and reports the slope b
(ms per layer), the intercept and the worst relative residual of the linear fit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.layer_speed import peak_memory, time_layers

MAIN_LAYERS = ["floor", "gen_positive", "gen_sign", "poly_positive", "poly_sign"]


def main_part(reps: int, memory: bool) -> dict[str, object]:
    widths = (64, 128, 128, 128, 10)
    times = time_layers(MAIN_LAYERS, widths, 16, 32, reps)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    mem = {k: peak_memory(k, widths, 16, 32) for k in MAIN_LAYERS} if memory else {}
    print(f"widths {widths}, channels 16, batch 32: median (best) of {reps} forward+backward steps")
    print(
        f"{'layer':14s} {'median ms':>10s} {'best ms':>8s} {'/floor':>14s} {'/linear':>14s} {'peak MiB':>9s}"
    )
    for name in MAIN_LAYERS:
        linear = "gen_sign" if name.endswith("sign") else "gen_positive"
        ratio_floor = f"{med[name] / med['floor']:6.2f} ({best[name] / best['floor']:5.2f})"
        ratio_linear = f"{med[name] / med[linear]:6.2f} ({best[name] / best[linear]:5.2f})"
        m = f"{mem[name]:9.0f}" if name in mem else f"{'-':>9s}"
        print(
            f"{name:14s} {med[name] * 1e3:10.1f} {best[name] * 1e3:8.1f} {ratio_floor} {ratio_linear} {m}"
        )
    return {"median_seconds": med, "best_seconds": best, "peak_rss_mib": mem}


def _fit(depths: list[int], times: list[float]) -> tuple[float, float, float]:
    n = len(depths)
    mean_x, mean_y = sum(depths) / n, sum(times) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(depths, times)) / sum(
        (x - mean_x) ** 2 for x in depths
    )
    intercept = mean_y - slope * mean_x
    worst = max(abs(y - (intercept + slope * x)) / y for x, y in zip(depths, times))
    return slope, intercept, worst


def depth_part(reps: int) -> dict[str, object]:
    depths = [2, 4, 6, 8, 12, 16]
    rows: dict[int, dict[str, float]] = {}
    print("time per forward+backward step vs depth, widths (64, 128 x (L-1), 10), C=16, B=32")
    print(f"{'L':>3s} {'poly ms':>9s} {'linear ms':>10s} {'ratio':>6s}")
    for depth in depths:
        widths = (64,) + (128,) * (depth - 1) + (10,)
        times = time_layers(["gen_positive", "poly_positive"], widths, 16, 32, reps)
        rows[depth] = {k: statistics.median(v) for k, v in times.items()}
        poly, linear = rows[depth]["poly_positive"], rows[depth]["gen_positive"]
        print(f"{depth:3d} {poly * 1e3:9.1f} {linear * 1e3:10.1f} {poly / linear:6.2f}", flush=True)
    fits = {}
    for name in ("poly_positive", "gen_positive"):
        slope, intercept, worst = _fit(depths, [rows[d][name] * 1e3 for d in depths])
        fits[name] = {
            "slope_ms_per_layer": slope,
            "intercept_ms": intercept,
            "worst_residual": worst,
        }
        print(
            f"{name}: time = {intercept:.1f} ms + {slope:.1f} ms x L "
            f"(worst relative residual of the linear fit {worst:.1%})"
        )
    return {"rows": rows, "fits": fits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("main", "depth", "both"), default="both")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results: dict[str, object] = {}
    if args.part in ("main", "both"):
        results["main"] = main_part(args.reps, not args.no_memory)
    if args.part in ("depth", "both"):
        results["depth"] = depth_part(max(3, args.reps // 2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
