"""Derivation time of the complete linear basis (what ``inspect`` computes) for MLPs of depth
L = 2..64 under each group, and the symbolic engine against a numeric null-space solve; then
trace, group, basis and linear plan of torchvision's CNNs (skipped where torchvision does not
import).

    python benchmarks/derive_time.py               # every table
    python benchmarks/derive_time.py torchvision   # only the torchvision table
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.torchvision_models import torchvision_models
from derive.basis import linear as basis_module
from derive.basis import partitions
from derive.basis.polynomial import count_polynomial, enumerate_polynomial
from derive.cli.report import report_table
from derive.derivation import Derivation
from derive.frontend.spec import mlp_spec
from derive.frontend.torch_spec import torch_spec
from derive.frontend.trace import trace_network
from derive.pipeline import derive
from derive.plan import linear as plan_module
from derive.symmetry.group import derive_group
from derive.verify.numeric import completeness_report

GROUPS = {
    "perm (HNP)": {"activation": "relu", "scaling": "none"},
    "positive": {"activation": "relu"},
    "sign": {"activation": "tanh"},
    "NP": {"activation": "relu", "permute": "all", "scaling": "none"},
}


def _clear_caches() -> None:
    partitions.set_partitions.cache_clear()
    partitions.partition_count.cache_clear()
    basis_module._space_patterns.cache_clear()
    basis_module._pair_patterns.cache_clear()
    plan_module.pattern_keys.cache_clear()


def _cold(fn, reps=3):
    """Median time with the partition caches cleared before every run."""
    times = []
    for _ in range(reps):
        _clear_caches()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    print(
        "Derivation of the complete linear basis, widths (64, 128 x (L-1), 10), median of 3 cold runs"
    )
    print(f"{'L':>3s} " + " ".join(f"{g:>14s}" for g in GROUPS) + f" {'inspect table':>14s}")
    for depth in (2, 4, 8, 16, 32, 64):
        widths = (64,) + (128,) * (depth - 1) + (10,)
        cells = []
        for options in GROUPS.values():
            spec = mlp_spec(widths, **options)
            cells.append(_cold(lambda spec=spec: derive(spec).basis))
        spec = mlp_spec(widths, "relu", scaling="none")
        table = _cold(lambda spec=spec: report_table(derive(spec)), reps=1)
        print(
            f"{depth:3d} "
            + " ".join(f"{t * 1e3:11.1f} ms" for t in cells)
            + f" {table * 1e3:11.1f} ms"
        )

    print()
    print(
        "Symbolic enumeration vs numeric null-space solve (all blocks, medians of 3), widths (2, 3 x (L-1), 2)"
    )
    print(f"{'L':>3s} {'group':>12s} {'dim':>6s} {'symbolic':>12s} {'numeric':>12s} {'ratio':>8s}")
    warm = derive(mlp_spec((2, 3, 2)))
    completeness_report(
        warm.space, {b.key: b.dim for b in warm.basis.blocks}
    )  # warm up torch.linalg
    for depth in (2, 3, 4):
        widths = (2,) + (3,) * (depth - 1) + (2,)
        for name, options in GROUPS.items():
            spec = mlp_spec(widths, **options)
            derivation = derive(spec)
            symbolic = _cold(lambda spec=spec: derive(spec).basis)
            counts = {b.key: b.dim for b in derivation.basis.blocks}
            numeric_times = []
            for _ in range(3):
                start = time.perf_counter()
                report = completeness_report(derivation.space, counts)
                numeric_times.append(time.perf_counter() - start)
                assert all(c.null_space == c.symbolic for c in report)
            numeric = statistics.median(numeric_times)
            print(
                f"{depth:3d} {name:>12s} {derivation.basis.dim:6d} {symbolic * 1e3:9.2f} ms "
                f"{numeric * 1e3:9.1f} ms {numeric / symbolic:7.0f}x"
            )


def polynomial_part() -> None:
    """Complete polynomial terms of a 16-layer MLP: count, and materialize where not too many."""
    print()
    print(
        "Complete polynomial terms, 16-layer MLP widths (64, 128 x 15, 10), median of 3 cold runs"
    )
    print(
        f"{'group':>12s} {'degree':>6s} {'terms':>8s} {'dimension':>10s} {'count':>10s} {'enumerate':>10s}"
    )
    widths = (64,) + (128,) * 15 + (10,)
    for name, options in (
        ("positive", {"activation": "relu"}),
        ("sign", {"activation": "tanh"}),
        ("perm (HNP)", {"activation": "relu", "scaling": "none"}),
    ):
        space = derive(mlp_spec(widths, **options)).space
        for degree in (2, 3):
            counts = count_polynomial(space, degree)
            terms = sum(c[0] for c in counts.values())
            dim = sum(c[1] for c in counts.values())
            count_time = _cold(lambda space=space, degree=degree: count_polynomial(space, degree))
            if terms <= 20000:
                enum_time = f"{_cold(lambda space=space, degree=degree: enumerate_polynomial(space, degree, None)) * 1e3:7.1f} ms"
            else:
                enum_time = "refused"  # past the default limit: counted only
            print(
                f"{name:>12s} {degree:6d} {terms:8d} {dim:10d} {count_time * 1e3:7.1f} ms {enum_time:>10s}"
            )


#: name -> (factory, input shape without the batch axis), as in tests/derive/test_real_models.py
TORCHVISION = {
    "resnet18": (lambda m: m.resnet18(), (3, 32, 32)),
    "resnet50": (lambda m: m.resnet50(), (3, 32, 32)),
    "vgg11_bn": (lambda m: m.vgg11_bn(), (3, 32, 32)),
    "alexnet": (lambda m: m.alexnet(), (3, 64, 64)),
    "squeezenet1_0": (lambda m: m.squeezenet1_0(), (3, 64, 64)),
    "googlenet": (lambda m: m.googlenet(aux_logits=False, init_weights=False), (3, 32, 32)),
    "mobilenet_v2": (lambda m: m.mobilenet_v2(), (3, 32, 32)),
    "mobilenet_v3_small": (lambda m: m.mobilenet_v3_small(), (3, 32, 32)),
    "mobilenet_v3_large": (lambda m: m.mobilenet_v3_large(), (3, 32, 32)),
    "efficientnet_b0": (lambda m: m.efficientnet_b0(), (3, 32, 32)),
    "densenet121": (lambda m: m.densenet121(), (3, 64, 64)),
    "convnext_tiny": (lambda m: m.convnext_tiny(), (3, 32, 32)),
    "regnet_y_400mf": (lambda m: m.regnet_y_400mf(), (3, 32, 32)),
    "resnext50_32x4d": (lambda m: m.resnext50_32x4d(), (3, 32, 32)),
    "shufflenet_v2_x0_5": (lambda m: m.shufflenet_v2_x0_5(), (3, 32, 32)),
}


def _stages(model: torch.nn.Module, shape: tuple[int, ...], name: str) -> dict[str, float]:
    """Seconds per stage of one cold run (partition and pattern caches cleared)."""
    _clear_caches()
    spec = torch_spec(model, shape, name=name)
    times = {}
    start = time.perf_counter()
    traced = trace_network(model, shape, name, name)
    times["trace"] = time.perf_counter() - start
    mark = time.perf_counter()
    derivation = Derivation(spec=spec, space=derive_group(traced))
    times["group"] = time.perf_counter() - mark
    mark = time.perf_counter()
    basis = derivation.basis
    times["basis"] = time.perf_counter() - mark
    mark = time.perf_counter()
    plan = derivation.linear_plan
    times["plan"] = time.perf_counter() - mark
    times["total"] = time.perf_counter() - start
    times["tensors"] = len(derivation.space.tensors)
    times["maps"] = basis.num_maps
    times["ops"] = len(plan.ops)
    return times


def torchvision_part(names: list[str] | None = None, reps: int = 3) -> None:
    """Trace, group, basis and linear plan of torchvision's CNNs, median of ``reps`` cold runs."""
    print()
    models = torchvision_models()
    if models is None:
        print("torchvision does not import: torchvision table skipped")
        return
    torch.set_num_threads(1)
    print(f"torchvision CNNs: trace, group, complete linear basis, linear plan (median of {reps})")
    print(
        f"{'model':>20s} {'tensors':>7s} {'maps':>9s} {'matmuls':>7s} {'trace':>9s} {'group':>9s} "
        f"{'basis':>9s} {'plan':>9s} {'total':>9s}"
    )
    _stages(models.resnet18().eval(), (3, 32, 32), "warm-up")  # imports, torch.fx
    for name in names or list(TORCHVISION):
        factory, shape = TORCHVISION[name]
        try:
            torch.manual_seed(0)
            model = factory(models).eval()
        except (AttributeError, ImportError, RuntimeError) as error:  # older torchvision
            print(f"{name:>20s} skipped: {error}")
            continue
        try:
            runs = [_stages(model, shape, name) for _ in range(reps)]
        except Exception as error:  # an operation the tracer does not support
            print(f"{name:>20s} failed: {type(error).__name__}: {error}")
            continue
        med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(
            f"{name:>20s} {int(med['tensors']):7d} {int(med['maps']):9d} {int(med['ops']):7d} "
            + " ".join(
                f"{med[stage] * 1e3:6.0f} ms"
                for stage in ("trace", "group", "basis", "plan", "total")
            )
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["torchvision"]:
        torchvision_part(sys.argv[2:] or None)
    else:
        main()
        polynomial_part()
        torchvision_part()
