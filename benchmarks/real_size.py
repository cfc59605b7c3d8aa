"""Time and peak memory of generated layers on real weight spaces (torchvision ResNet-18, VGG-11).

For each network, layer and channel count, a fresh subprocess derives the weight space, builds
the layer at ``C -> C`` channels and a batch of 2 random weight spaces with ``C`` channels, and
runs forward+backward steps with fixed dense output gradients. Reported: the layer's
parameters, the median and best step time, the peak resident set (VmHWM of the whole process:
the input, the layer, its gradients and everything the step allocates), and the ratio to the
floor, one channel-mixing matmul per tensor (the cheapest layer that reads every entry once).

    python benchmarks/real_size.py                          # resnet18, vgg11; C = 4, 8; batch 2
                                                            # (batch 1 where 2 would not fit)
    python benchmarks/real_size.py --networks resnet18 --channels 8 --layers linear,floor

Layers: ``floor``; ``linear`` (the default size budget), ``linear-dense`` (the complete basis,
``--budget dense``), ``invariant``; the polynomial kinds where they apply (MAGEP terms need an
MLP-like chain, which neither network is: said in the table). Inputs are 224 x 224 images.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.torchvision_models import torchvision_models  # noqa: E402
from derive.layers.kind import LayerOptions, generated_class, layer_kind  # noqa: E402
from derive.pipeline import Derivation, derive  # noqa: E402
from nfn_runtime import WeightSpace, random_weight_space  # noqa: E402

NETWORKS = ("resnet18", "vgg11")
LAYERS = ("floor", "linear", "linear-dense", "invariant", "polynomial", "polynomial-invariant")
RESULTS = ROOT / "benchmarks" / "results"


class ChannelFloor(nn.Module):
    """One channel-mixing matmul per tensor and nothing else."""

    def __init__(self, num_tensors: int, channels: int) -> None:
        super().__init__()
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(channels, channels) / channels**0.5)
            for _ in range(num_tensors)
        )

    def forward(self, ws: WeightSpace) -> WeightSpace:
        mixed = iter(self.weights)

        def mix(t: Tensor) -> Tensor:
            w = next(mixed)
            batch = t.shape[0]
            return torch.bmm(w.expand(batch, -1, -1), t.flatten(2)).view(t.shape)

        weights = tuple(mix(t) for t in ws.weights)
        biases = tuple(None if b is None else mix(b) for b in ws.biases)
        return WeightSpace(weights, biases)


def network_derivation(name: str) -> Derivation:
    models = torchvision_models()
    if models is None:
        raise SystemExit("torchvision is not installed")
    torch.manual_seed(0)
    return derive(getattr(models, name)().eval(), (3, 224, 224), name=name)


def applies(derivation: Derivation, layer: str) -> str | None:
    """Why ``layer`` does not exist for this weight space, or None."""
    if layer in ("floor", "linear-dense"):
        return None
    return layer_kind(layer).applies(derivation)


def build_layer(derivation: Derivation, layer: str, channels: int) -> nn.Module:
    if layer == "floor":
        return ChannelFloor(len(derivation.space.to_layout().tensors), channels)
    if layer == "linear-dense":
        return generated_class(derivation, "linear", LayerOptions(budget="dense"))(
            channels, channels
        )
    return generated_class(derivation, layer)(channels, channels)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(network: str, layer: str, channels: int, batch: int, reps: int) -> dict[str, float]:
    """Run in a fresh process: parameters, step times, peak RSS (MiB)."""
    derivation = network_derivation(network)
    layout = derivation.space.to_layout()
    torch.manual_seed(0)
    module = build_layer(derivation, layer, channels)
    x = random_weight_space(layout, batch, channels, torch.float32)
    probe = module(x)
    outputs = probe.tensors() if isinstance(probe, WeightSpace) else (probe,)
    gradients = tuple(torch.randn_like(t) for t in outputs)
    del probe, outputs
    times = []
    for _ in range(reps + 1):  # the first step warms up
        start = time.perf_counter()
        out = module(x)
        tensors = out.tensors() if isinstance(out, WeightSpace) else (out,)
        torch.autograd.backward(tensors, gradients)
        times.append(time.perf_counter() - start)
        del out, tensors
    return {
        "parameters": sum(p.numel() for p in module.parameters()),
        "network_parameters": layout.num_params(),
        "median_s": statistics.median(times[1:]),
        "best_s": min(times[1:]),
        "peak_mib": _status_kib("VmHWM") / 1024,
    }


def run(network: str, layer: str, channels: int, batch: int, reps: int) -> dict[str, float]:
    """:func:`measure` in a subprocess (its own peak resident set and allocator)."""
    code = (
        f"import json, torch; torch.set_num_threads({torch.get_num_threads()});"
        "from benchmarks.real_size import measure;"
        f"print(json.dumps(measure({network!r}, {layer!r}, {channels}, {batch}, {reps})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail}  # type: ignore[dict-item]
    data: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--channels", default="4,8")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--max-input-gib",
        type=float,
        default=4.5,
        help="largest input (batch x channels x network parameters, float32) before the batch "
        "shrinks: the input, the output and its gradient must fit in memory beside the layer",
    )
    parser.add_argument("--out", default=str(RESULTS / "real_size"))
    args = parser.parse_args()
    networks = args.networks.split(",")
    layers = args.layers.split(",")
    channels = [int(c) for c in args.channels.split(",")]
    header = (
        f"batch {args.batch} weight spaces, C -> C channels, float32, threads "
        f"{torch.get_num_threads()}, median (best) of {args.reps} forward+backward steps; "
        "peak = the process's peak resident set"
    )
    lines = [header]
    rows = []
    for network in networks:
        derivation = network_derivation(network)
        size = derivation.space.to_layout().num_params()
        lines.append(f"{network} ({size:,} parameters, 224 x 224 inputs)")
        lines.append(
            f"  {'layer':22} {'C':>2} {'parameters':>12} {'median s':>9} {'best s':>8} "
            f"{'/floor':>7} {'peak MiB':>9}"
        )
        for c in channels:
            floor = None
            batch = args.batch
            while batch > 1 and batch * c * size * 4 > args.max_input_gib * 2**30:
                batch -= 1  # the input, output and output gradient must fit beside the layer
            if batch != args.batch:
                gib = args.batch * c * size * 4 / 2**30
                lines.append(
                    f"  C = {c}: batch {batch}: a batch of {args.batch} is {gib:.1f} GiB of "
                    f"input alone (float32), above --max-input-gib {args.max_input_gib:g}"
                )
            for layer in layers:
                reason = applies(derivation, layer)
                if reason is not None:
                    lines.append(f"  {layer:22} {c:>2} not generated: {reason}")
                    rows.append({"network": network, "layer": layer, "channels": c, "skip": reason})
                    continue
                data = run(network, layer, c, batch, args.reps)
                rows.append(
                    {"network": network, "layer": layer, "channels": c, "batch": batch, **data}
                )
                if "error" in data:
                    lines.append(f"  {layer:22} {c:>2} failed: {data['error']}")
                    continue
                if layer == "floor":
                    floor = data["median_s"]
                ratio = f"{data['median_s'] / floor:7.1f}" if floor else f"{'':>7}"
                lines.append(
                    f"  {layer:22} {c:>2} {int(data['parameters']):>12,} "
                    f"{data['median_s']:9.3f} {data['best_s']:8.3f} {ratio} "
                    f"{data['peak_mib']:9.0f}"
                )
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.with_suffix(".txt").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
