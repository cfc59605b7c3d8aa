"""Size of the generated modules as the depth L grows (it must grow linearly, not quadratically).

python benchmarks/codegen_size.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from derive.frontend.spec import mlp_spec
from derive.pipeline import derive, generate

SETTINGS = {
    "perm (HNP)": {"activation": "relu", "scaling": "none"},
    "positive": {"activation": "relu"},
    "NP": {"activation": "relu", "permute": "all", "scaling": "none"},
}


def main() -> None:
    print(
        "Generated linear layer, widths (64, 128 x (L-1), 10): lines, bytes, bytes per layer, generation time"
    )
    print(f"{'L':>3s} " + " ".join(f"{name:>30s}" for name in SETTINGS))
    for depth in (2, 4, 8, 16, 32, 64):
        widths = (64,) + (128,) * (depth - 1) + (10,)
        cells = []
        for options in SETTINGS.values():
            start = time.perf_counter()
            source = generate(derive(mlp_spec(widths, **options)), "linear")
            elapsed = time.perf_counter() - start
            size = len(source.encode())
            lines = source.count("\n")
            cells.append(
                f"{lines:6d} l {size / 1024:7.1f} KiB {size / depth / 1024:5.2f}/L {elapsed:5.2f}s"
            )
        print(f"{depth:3d} " + " ".join(f"{c:>30s}" for c in cells))


if __name__ == "__main__":
    main()
