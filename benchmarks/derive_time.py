"""Derivation time of the complete linear basis (what ``inspect`` computes) for MLPs of depth
L = 2..64 under each group, and the symbolic engine against a numeric null-space solve.

    python benchmarks/derive_time.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from derive.basis import linear as basis_module
from derive.basis import partitions
from derive.basis.polynomial import count_polynomial, enumerate_polynomial
from derive.cli.report import report_table
from derive.frontend.spec import mlp_spec
from derive.pipeline import derive
from derive.verify.numeric import completeness_report

GROUPS = {
    "perm (HNP)": {"activation": "relu", "scaling": "none"},
    "positive": {"activation": "relu"},
    "sign": {"activation": "tanh"},
    "NP": {"activation": "relu", "permute": "all", "scaling": "none"},
}


def _cold(fn, reps=3):
    """Median time with the partition caches cleared before every run."""
    times = []
    for _ in range(reps):
        partitions.set_partitions.cache_clear()
        partitions.partition_count.cache_clear()
        basis_module._space_patterns.cache_clear()
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


if __name__ == "__main__":
    main()
    polynomial_part()
