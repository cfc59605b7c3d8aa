"""Polynomial (MAGEP) layers against the generated linear layers and the pointwise floor, how
their time grows with depth, and the polynomial invariant layer against MAGEP-NFN's.

    python benchmarks/poly_speed.py                    # every part
    python benchmarks/poly_speed.py --part main        # (64,128,128,128,10), C=16, B=32
    python benchmarks/poly_speed.py --part depth       # L = 2..16 at widths (64, 128 x (L-1), 10)
    python benchmarks/poly_speed.py --part invariant   # polynomial invariant vs MAGEP-NFN's
    python benchmarks/poly_speed.py --part floor       # polynomial vs linear + products alone
    python benchmarks/poly_speed.py --part compile     # torch.compile(fullgraph=True) vs eager

The main part times the layers round-robin in one process (median and best of N) and measures
peak memory per layer in a fresh process (see benchmarks/layer_speed.py). The depth part fits
time = a + b L by least squares for the polynomial and the linear layer and reports the slope b
(ms per layer), the intercept and the worst relative residual of the linear fit.

The invariant part times, at the main setting and round-robin, the generated polynomial
invariant layer (ReLU: permutations and positive scalings) against MAGEP-NFN's invariant layer
as re-implemented in benchmarks/magep_invariant.py from the paper's formulas (the authors'
code is not copied; its license forbids it), with both of that file's path schedules.
The floor part times the polynomial layer, the linear layer and the polynomial layer's
products alone (path products, glued terms, traces; none of their mixing), so that the
polynomial layer's time splits into linear layer + computing the terms + mixing them. The
compile part times ``torch.compile(layer, fullgraph=True)`` against the eager layer (compile
time reported apart).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.layer_speed import _generated, peak_memory, round_robin, time_layers
from benchmarks.magep_invariant import MagepInvariant
from derive.codegen.magep_code import magep_code
from derive.frontend.spec import mlp_spec
from derive.pipeline import derive
from derive.plan.features import tensor_var
from derive.plan.polynomial import polynomial_plan
from nfn_runtime import WeightSpace, random_weight_space

MAIN_LAYERS = ["floor", "gen_positive", "gen_sign", "poly_positive", "poly_sign"]
MAIN_WIDTHS = (64, 128, 128, 128, 10)
#: ours (generated), MAGEP-NFN's (re-implemented) with shared path products and with the
#: published code's every-pair schedule, and our invariant layer without polynomial terms
INVARIANT_LAYERS = ["poly_inv", "magep_inv", "magep_inv_pairs", "inv"]


def main_part(reps: int, memory: bool) -> dict[str, object]:
    widths = MAIN_WIDTHS
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


def _invariant_layer(name: str, widths: tuple[int, ...], channels: int) -> nn.Module:
    if name == "poly_inv":
        return _generated(widths, "hidden", "positive", channels, "polynomial-invariant")
    if name == "inv":
        return _generated(widths, "hidden", "positive", channels, "invariant")
    schedule = "pairs" if name == "magep_inv_pairs" else "chain"
    return MagepInvariant(widths, channels, channels, schedule)


def _input(widths: tuple[int, ...], channels: int, batch: int) -> WeightSpace:
    layout = derive(mlp_spec(widths, "relu", name="bench")).space.to_layout()
    torch.manual_seed(0)
    x = random_weight_space(layout, batch, channels, torch.float32)
    return x.map(lambda t: t.requires_grad_())


def _ratio_table(
    times: dict[str, list[float]], refs: list[str], header: str
) -> tuple[dict[str, float], dict[str, float]]:
    """Print median, best, IQR and the ratios to each of ``refs`` (median, and best-of-N)."""
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    print(header)
    print("ratios from medians, and in brackets from best-of-N (steadier on a noisy host)")
    columns = "".join(f" {'/' + ref:>16s}" for ref in refs)
    print(f"{'layer':16s} {'median ms':>10s} {'best ms':>8s} {'IQR ms':>8s}{columns}")
    for name, ts in times.items():
        ordered = sorted(ts)
        iqr = (ordered[3 * len(ts) // 4] - ordered[len(ts) // 4]) * 1e3
        ratios = "".join(
            f" {med[name] / med[ref]:8.2f} ({best[name] / best[ref]:5.2f})" for ref in refs
        )
        print(f"{name:16s} {med[name] * 1e3:10.1f} {best[name] * 1e3:8.1f} {iqr:8.1f}{ratios}")
    return med, best


def invariant_part(reps: int, channels: int = 16, batch: int = 32) -> dict[str, object]:
    """Our polynomial invariant layer against MAGEP-NFN's, forward + backward of a fixed dense
    output gradient, round-robin in one process."""
    widths = MAIN_WIDTHS
    x = _input(widths, channels, batch)
    gradient = torch.randn(batch, channels, generator=torch.Generator().manual_seed(5))
    steps = {}
    for name in INVARIANT_LAYERS:
        layer = _invariant_layer(name, widths, channels)
        steps[name] = functools.partial(_invariant_step, layer, x, gradient)
    times = round_robin(steps, reps)
    header = (
        f"polynomial invariant layers, widths {widths}, channels {channels}, batch {batch}, "
        f"threads {torch.get_num_threads()}, median of {reps} forward+backward steps "
        "(round-robin)"
    )
    med, best = _ratio_table(times, ["magep_inv", "magep_inv_pairs"], header)
    return {"median_seconds": med, "best_seconds": best, "times": times}


def _invariant_step(layer: nn.Module, x: WeightSpace, gradient: Tensor) -> None:
    layer(x).backward(gradient)


def _equivariant_step(layer: nn.Module, x: WeightSpace, gradient: WeightSpace) -> None:
    torch.autograd.backward(layer(x).tensors(), gradient.tensors())


def compile_part(reps: int, channels: int = 16, batch: int = 32) -> dict[str, object]:
    """Each layer eager and under ``torch.compile(fullgraph=True)`` (compile time reported
    separately), round-robin."""
    widths = MAIN_WIDTHS
    x = _input(widths, channels, batch)
    inv_gradient = torch.randn(batch, channels, generator=torch.Generator().manual_seed(5))
    gradient = x.map(lambda t: torch.randn(t.shape, generator=torch.Generator().manual_seed(5)))
    layers: dict[str, tuple[nn.Module, Callable[..., None], object]] = {
        "poly_inv": (_invariant_layer("poly_inv", widths, channels), _invariant_step, inv_gradient),
        "magep_inv": (
            _invariant_layer("magep_inv", widths, channels),
            _invariant_step,
            inv_gradient,
        ),
        "poly": (
            _generated(widths, "hidden", "positive", channels, "polynomial"),
            _equivariant_step,
            gradient,
        ),
        "linear": (
            _generated(widths, "hidden", "positive", channels, "linear"),
            _equivariant_step,
            gradient,
        ),
    }
    steps: dict[str, Callable[[], None]] = {}
    compile_seconds = {}
    for name, (layer, step, grad) in layers.items():
        compiled = torch.compile(layer, fullgraph=True)
        start = time.perf_counter()
        step(compiled, x, grad)  # compiles forward and backward
        compile_seconds[name] = time.perf_counter() - start
        steps[name] = functools.partial(step, layer, x, grad)
        steps[f"{name}_compiled"] = functools.partial(step, compiled, x, grad)
    times = round_robin(steps, reps)
    header = (
        f"eager vs torch.compile(fullgraph=True), widths {widths}, channels {channels}, "
        f"batch {batch}, threads {torch.get_num_threads()}, median of {reps} forward+backward "
        "steps (round-robin)"
    )
    med, best = _ratio_table(times, ["magep_inv", "linear"], header)
    for name, seconds in compile_seconds.items():
        speedup = med[name] / med[f"{name}_compiled"]
        print(f"{name}: compiled in {seconds:.1f} s; eager / compiled {speedup:.2f} (medians)")
    return {"median_seconds": med, "best_seconds": best, "compile_seconds": compile_seconds}


class MagepProducts(nn.Module):
    """Only the products of a generated polynomial layer: its path products, glued terms,
    traces and ``sum_t [Wb](i,t)`` (the statements :mod:`derive.codegen.magep_code` writes,
    executed as the layer executes them), none of their mixing. ``forward`` returns every
    tensor the layer goes on to mix: each materialized term, and the factors of the terms it
    folds or adds as rank-one updates. Timed with a dense gradient for each, this is the work
    of computing the polynomial terms once, which any layer with these terms does."""

    def __init__(self, widths: tuple[int, ...], scaling: str, channels: int) -> None:
        super().__init__()
        derivation = derive(mlp_spec(widths, "relu", scaling=scaling, name="bench"))
        magep = polynomial_plan(derivation.basis).magep
        assert magep is not None
        self.layout = derivation.space.to_layout()
        for psi in magep.psis:
            self.register_parameter(
                psi.name, nn.Parameter(torch.randn(channels, *psi.shape) * psi.std)
            )
        code = magep_code(magep)
        results: list[str] = []
        for term in magep.terms:
            if term.var in code.outer:
                results += code.outer[term.var]
            elif term.var in magep.folded:
                results += [code.left.get(term.var, code.right.get(term.var, "")), "q0"]
            else:
                results.append(term.var)
        inputs = [tensor_var(t.name) for t in derivation.space.tensors]
        lines = [f"def products(self, {', '.join(inputs)}):"]
        lines += [f"    {statement}" for statement, _ in code.statements]
        lines.append(f"    return [{', '.join(dict.fromkeys(results))}]")
        namespace: dict[str, object] = {"torch": torch}
        exec("\n".join(lines), namespace)
        self._products = namespace["products"]

    def forward(self, ws: WeightSpace) -> list[Tensor]:
        tensors = [ws.get(t) for t in self.layout.tensors]
        result: list[Tensor] = self._products(self, *tensors)  # type: ignore[operator]
        return result


def floor_part(reps: int, channels: int = 16, batch: int = 32) -> dict[str, object]:
    """The polynomial layer, the linear layer and the products alone (:class:`MagepProducts`),
    round-robin: how far the polynomial layer is from linear + products."""
    widths = MAIN_WIDTHS
    x = _input(widths, channels, batch)
    gradient = x.map(lambda t: torch.randn(t.shape, generator=torch.Generator().manual_seed(5)))
    products = MagepProducts(widths, "positive", channels)
    with torch.no_grad():
        shapes = [t.shape for t in products(x)]
    product_gradients = [torch.randn(shape) for shape in shapes]

    def products_step() -> None:
        torch.autograd.backward(products(x), product_gradients)

    steps = {
        "linear": functools.partial(
            _equivariant_step,
            _generated(widths, "hidden", "positive", channels, "linear"),
            x,
            gradient,
        ),
        "poly": functools.partial(
            _equivariant_step,
            _generated(widths, "hidden", "positive", channels, "polynomial"),
            x,
            gradient,
        ),
        "products": products_step,
    }
    times = round_robin(steps, reps)
    header = (
        f"polynomial layer vs linear layer + products alone (ReLU), widths {widths}, channels "
        f"{channels}, batch {batch}, threads {torch.get_num_threads()}, median of {reps} "
        "forward+backward steps (round-robin)"
    )
    med, best = _ratio_table(times, ["linear"], header)
    floor_med = med["linear"] + med["products"]
    floor_best = best["linear"] + best["products"]
    print(
        f"linear + products: {floor_med * 1e3:.1f} ms ({floor_best * 1e3:.1f}), "
        f"{floor_med / med['linear']:.2f} ({floor_best / best['linear']:.2f}) x linear; "
        f"poly / (linear + products) {med['poly'] / floor_med:.2f} "
        f"({best['poly'] / floor_best:.2f})"
    )
    return {"median_seconds": med, "best_seconds": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part",
        choices=("main", "depth", "invariant", "floor", "compile", "all"),
        default="all",
    )
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, object] = {}
    if args.part in ("main", "all"):
        results["main"] = main_part(args.reps, not args.no_memory)
    if args.part in ("depth", "all"):
        results["depth"] = depth_part(max(3, args.reps // 2))
    if args.part in ("invariant", "all"):
        results["invariant"] = invariant_part(args.reps)
    if args.part in ("floor", "all"):
        results["floor"] = floor_part(args.reps)
    if args.part in ("compile", "all"):
        results["compile"] = compile_part(args.reps)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
