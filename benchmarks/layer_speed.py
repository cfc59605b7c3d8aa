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
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from derive.frontend.spec import mlp_spec
from derive.pipeline import derive, generate
from derive.verify.checklist import load_generated
from nfn_runtime import WeightSpace, random_weight_space, to_nfn

LAYERS = (
    "floor",
    "floor_fixed",
    "gen_hnp",
    "gen_np",
    "gen_positive",
    "gen_sign",
    "nfn_hnp",
    "nfn_np",
)


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


class FixedAxesFloor(nn.Module):
    """The pointwise floor with each tensor's fixed axes folded into its channels.

    Under HNP (with or without scaling) the complete basis is dense over the fixed input axis
    of ``W1`` and the fixed output axis of ``W_L`` and ``b_L``; this layer does only that mixing,
    so it is the least that any complete layer must compute. Hidden tensors: as the floor.
    """

    def __init__(self, widths: tuple[int, ...], in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.widths = widths
        self.c_in, self.c_out = in_channels, out_channels
        num_layers = len(widths) - 1
        shapes = []
        for layer in range(1, num_layers + 1):
            fixed_w = (widths[0] if layer == 1 else 1) * (widths[-1] if layer == num_layers else 1)
            fixed_b = widths[-1] if layer == num_layers else 1
            shapes += [fixed_w, fixed_b]
        self.factors = shapes
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(out_channels * f, in_channels * f) / (in_channels * f) ** 0.5)
            for f in shapes
        )

    def forward(self, ws: WeightSpace) -> WeightSpace:
        tensors = ws.tensors()
        batch = tensors[0].shape[0]
        n = len(ws.weights)
        out = []
        for k, (w, t) in enumerate(zip(self.weights, tensors)):
            layer, is_bias = k // 2 + 1, k % 2 == 1
            if self.factors[k] == 1:
                out.append(
                    torch.bmm(w.expand(batch, -1, -1), t.flatten(2)).view(batch, -1, *t.shape[2:])
                )
            elif is_bias:  # b_L: (B, C, n_L), all fixed
                out.append(F.linear(t.reshape(batch, -1), w).view(batch, self.c_out, -1))
            elif layer == 1 and n > 1:  # W1: (B, C, n1, n0), fixed columns
                x = t.permute(0, 2, 1, 3).reshape(batch, t.shape[2], -1)
                y = F.linear(x, w).unflatten(-1, (self.c_out, t.shape[3])).permute(0, 2, 1, 3)
                out.append(y)
            elif layer == n and n > 1:  # W_L: (B, C, n_L, h), fixed rows
                x = t.permute(0, 3, 1, 2).reshape(batch, t.shape[3], -1)
                y = F.linear(x, w).unflatten(-1, (self.c_out, t.shape[2])).permute(0, 2, 3, 1)
                out.append(y)
            else:  # a single layer: both axes fixed
                out.append(F.linear(t.reshape(batch, -1), w).view(batch, self.c_out, *t.shape[2:]))
        return WeightSpace(tuple(out[0::2]), tuple(out[1::2]))


def _backward(outputs: tuple[Tensor, ...], gradients: tuple[Tensor, ...]) -> None:
    """Backpropagate fixed dense output gradients (as a downstream network would send)."""
    torch.autograd.backward(outputs, gradients)


def _generated(
    widths: tuple[int, ...], permute: str, scaling: str, channels: int, layer: str = "linear"
) -> nn.Module:
    spec = mlp_spec(widths, "relu", permute=permute, scaling=scaling, name="bench")
    module = load_generated(generate(derive(spec), layer), f"bench_{permute}_{scaling}")
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
    # fixed dense output gradients, as a downstream network sends (the gradient of a plain
    # ``sum()`` loss is a stride-0 expanded tensor, which would make every view copy)
    gradient = x.map(lambda t: torch.randn(t.shape, generator=torch.Generator().manual_seed(5)))
    layer: nn.Module
    if name == "floor":
        layer = PointwiseFloor(2 * (len(widths) - 1), channels, channels)
    elif name == "floor_fixed":
        layer = FixedAxesFloor(widths, channels, channels)
    elif name.startswith("gen_"):
        permute, scaling = {
            "gen_hnp": ("hidden", "none"),
            "gen_np": ("all", "none"),
            "gen_positive": ("hidden", "positive"),
            "gen_sign": ("hidden", "sign"),
        }[name]
        layer = _generated(widths, permute, scaling, channels)
    elif name.startswith("poly_"):
        scaling = {"poly_positive": "positive", "poly_sign": "sign"}[name]
        layer = _generated(widths, "hidden", scaling, channels, "polynomial")
    else:
        from nfn.common import network_spec_from_wsfeat
        from nfn.layers import HNPLinear, NPLinear

        x_nfn = to_nfn(x)
        spec = network_spec_from_wsfeat(x_nfn)
        layer = (HNPLinear if name == "nfn_hnp" else NPLinear)(spec, channels, channels)

        def step_nfn() -> None:
            out = layer(x_nfn)
            _backward((*out.weights, *out.biases), (*gradient.weights, *gradient.biases))

        return (lambda: None), step_nfn

    def step() -> None:
        out = layer(x)
        _backward(out.tensors(), gradient.tensors())

    return (lambda: None), step


def round_robin(steps: dict[str, Callable[[], None]], reps: int) -> dict[str, list[float]]:
    """Seconds per call of every step, the steps interleaved (two warm-up calls each)."""
    for step in steps.values():
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def time_layers(
    names: list[str], widths: tuple[int, ...], channels: int, batch: int, reps: int
) -> dict[str, list[float]]:
    return round_robin({name: build(name, widths, channels, batch)[1] for name in names}, reps)


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
    best = {name: min(ts) for name, ts in times.items()}
    memory = (
        {}
        if args.no_memory
        else {name: peak_memory(name, widths, args.channels, args.batch) for name in names}
    )
    print(
        f"widths {widths}, channels {args.channels}, batch {args.batch}, threads {args.threads}, "
        f"median of {args.reps} forward+backward steps (round-robin)"
    )
    print("ratios from medians, and in brackets from best-of-N (steadier on a noisy host)")
    print(
        f"{'layer':14s} {'median ms':>10s} {'best ms':>8s} {'IQR ms':>8s} {'/floor':>14s} "
        f"{'/floor_fixed':>14s} {'/nfn_hnp':>14s} {'peak MiB':>9s}"
    )

    def ratio(name: str, ref: str) -> str:
        if ref not in medians:
            return f"{'-':>14s}"
        return f"{medians[name] / medians[ref]:6.2f} ({best[name] / best[ref]:5.2f})"

    for name in names:
        ts = sorted(times[name])
        iqr = (ts[3 * len(ts) // 4] - ts[len(ts) // 4]) * 1e3
        mem = f"{memory[name]:9.0f}" if name in memory else f"{'-':>9s}"
        print(
            f"{name:14s} {medians[name] * 1e3:10.1f} {best[name] * 1e3:8.1f} {iqr:8.1f} "
            f"{ratio(name, 'floor')} {ratio(name, 'floor_fixed')} {ratio(name, 'nfn_hnp')} {mem}"
        )
    if args.json:
        payload = {
            "widths": widths,
            "channels": args.channels,
            "batch": args.batch,
            "threads": args.threads,
            "reps": args.reps,
            "median_seconds": medians,
            "best_seconds": best,
            "peak_rss_mib": memory,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
