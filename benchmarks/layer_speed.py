"""Forward+backward time and peak memory of generated layers against nfn and the pointwise floor.

All layers run on the same input, round-robin (so slow drifts of the machine hit every layer
alike); the median over repetitions is reported, with ratios computed in the same run. Peak
memory is measured per layer in a fresh subprocess: the growth of the peak resident set size
(VmHWM, reset just before) during three forward+backward steps, above the size after the
input and the layer were built.

    python benchmarks/layer_speed.py                      # (64,128,128,128,10), C=16, B=32
    python benchmarks/layer_speed.py --widths 64,128,128,128,128,128,128,128,10
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from derive.pipeline import derive, generate
from derive.spec import mlp_spec
from derive.verify import load_generated
from nfn_runtime import WeightSpace, random_weight_space, to_nfn

LAYERS = ("floor", "gen_hnp", "gen_np", "gen_positive", "gen_sign", "nfn_hnp", "nfn_np")


class PointwiseFloor(nn.Module):
    """One channel-mixing matmul per tensor, nothing else: the cheapest possible layer."""

    def __init__(self, num_tensors: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(out_channels, in_channels) / in_channels**0.5)
            for _ in range(num_tensors)
        )

    def forward(self, ws: WeightSpace) -> WeightSpace:
        tensors = ws.tensors()
        batch = tensors[0].shape[0]
        out = [
            torch.bmm(w.expand(batch, -1, -1), t.flatten(2)).view(batch, -1, *t.shape[2:])
            for w, t in zip(self.weights, tensors)
        ]
        n = len(ws.weights)
        return WeightSpace(tuple(out[0::2][:n]), tuple(out[1::2][:n]))


def _generated(widths: tuple[int, ...], permute: str, scaling: str, channels: int) -> nn.Module:
    spec = mlp_spec(widths, "relu", permute=permute, scaling=scaling, name="bench")
    module = load_generated(generate(derive(spec), "linear"), f"bench_{permute}_{scaling}")
    cls = getattr(module, module.__all__[0])
    layer: nn.Module = cls(channels, channels)
    return layer


def build(
    name: str, widths: tuple[int, ...], channels: int, batch: int
) -> tuple[Callable[[], None], Callable[[], None]]:
    """(make input, one forward+backward step) for layer ``name``."""
    layout = derive(mlp_spec(widths, "relu", name="bench")).space.to_layout()
    torch.manual_seed(0)
    x = random_weight_space(layout, batch, channels, torch.float32).map(
        lambda t: t.requires_grad_()
    )
    layer: nn.Module
    if name == "floor":
        layer = PointwiseFloor(2 * (len(widths) - 1), channels, channels)
    elif name.startswith("gen_"):
        permute, scaling = {
            "gen_hnp": ("hidden", "none"),
            "gen_np": ("all", "none"),
            "gen_positive": ("hidden", "positive"),
            "gen_sign": ("hidden", "sign"),
        }[name]
        layer = _generated(widths, permute, scaling, channels)
    else:
        from nfn.common import network_spec_from_wsfeat
        from nfn.layers import HNPLinear, NPLinear

        x_nfn = to_nfn(x)
        spec = network_spec_from_wsfeat(x_nfn)
        layer = (HNPLinear if name == "nfn_hnp" else NPLinear)(spec, channels, channels)

        def step_nfn() -> None:
            out = layer(x_nfn)
            loss: Tensor = sum(t.sum() for t in (*out.weights, *out.biases))  # type: ignore[assignment]
            loss.backward()

        return (lambda: None), step_nfn

    def step() -> None:
        out = layer(x)
        loss: Tensor = sum(t.sum() for t in out.tensors())  # type: ignore[assignment]
        loss.backward()

    return (lambda: None), step


def time_layers(
    names: list[str], widths: tuple[int, ...], channels: int, batch: int, reps: int
) -> dict[str, list[float]]:
    steps = {name: build(name, widths, channels, batch)[1] for name in names}
    for step in steps.values():
        for _ in range(2):
            step()
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_peak(name: str, widths: tuple[int, ...], channels: int, batch: int) -> float:
    """MiB by which the resident set grows at its peak during 3 steps (run in a fresh process)."""
    _, step = build(name, widths, channels, batch)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current size
    before = _status_kib("VmRSS")
    for _ in range(3):
        step()
    return (_status_kib("VmHWM") - before) / 1024


def peak_memory(name: str, widths: tuple[int, ...], channels: int, batch: int) -> float:
    """:func:`measure_peak` in a subprocess, so layers do not share an allocator's history."""
    code = (
        f"import torch; torch.set_num_threads({torch.get_num_threads()});"
        "from benchmarks.layer_speed import measure_peak;"
        f"print(measure_peak({name!r}, {widths!r}, {channels}, {batch}))"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="64,128,128,128,10")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    widths = tuple(int(w) for w in args.widths.split(","))
    names = args.layers.split(",")
    times = time_layers(names, widths, args.channels, args.batch, args.reps)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    memory = (
        {}
        if args.no_memory
        else {name: peak_memory(name, widths, args.channels, args.batch) for name in names}
    )
    print(
        f"widths {widths}, channels {args.channels}, batch {args.batch}, threads {args.threads}, "
        f"median of {args.reps} forward+backward steps (round-robin)"
    )
    print(
        f"{'layer':14s} {'time ms':>9s} {'IQR ms':>8s} {'/floor':>7s} {'/nfn_hnp':>9s} {'peak MiB':>9s}"
    )
    for name in names:
        ts = sorted(times[name])
        iqr = (ts[3 * len(ts) // 4] - ts[len(ts) // 4]) * 1e3
        floor = medians[name] / medians["floor"] if "floor" in medians else float("nan")
        hnp = medians[name] / medians["nfn_hnp"] if "nfn_hnp" in medians else float("nan")
        mem = f"{memory[name]:9.0f}" if name in memory else f"{'-':>9s}"
        print(f"{name:14s} {medians[name] * 1e3:9.1f} {iqr:8.1f} {floor:7.2f} {hnp:9.2f} {mem}")
    if args.json:
        payload = {
            "widths": widths,
            "channels": args.channels,
            "batch": args.batch,
            "threads": args.threads,
            "reps": args.reps,
            "median_seconds": medians,
            "peak_rss_mib": memory,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
