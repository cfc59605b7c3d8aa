"""Regenerate the checked-in modules of ``generated/`` from ``generated/specs/*.yaml``.

python -m derive.cli.regenerate           # rewrite generated/*.py
python -m derive.cli.regenerate --check   # exit 1 with a unified diff if anything is stale
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from derive.codegen.emit import write_atomic
from derive.frontend.spec import load_spec
from derive.pipeline import LAYER_KINDS, derive, generate

__all__ = ["GENERATED_DIR", "expected_files", "main"]

GENERATED_DIR = Path(__file__).resolve().parents[2] / "generated"


def expected_files(folder: Path = GENERATED_DIR) -> dict[str, str]:
    """File name -> source, for every spec in ``folder/specs`` and every layer kind that
    applies to its weight space (e.g. MAGEP layers need a chain with fixed input and output)."""
    files = {}
    for spec_path in sorted((folder / "specs").glob("*.yaml")):
        derivation = derive(load_spec(spec_path))
        for kind in LAYER_KINDS.values():
            if kind.applies(derivation) is None:
                files[f"{spec_path.stem}_{kind.file_stem}.py"] = generate(derivation, kind.name)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only compare; exit 1 on any difference"
    )
    args = parser.parse_args(argv)
    stale = 0
    for name, source in expected_files().items():
        path = GENERATED_DIR / name
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == source:
            continue
        stale += 1
        if args.check:
            diff = difflib.unified_diff(
                current.splitlines(keepends=True),
                source.splitlines(keepends=True),
                f"generated/{name}",
                "regenerated",
            )
            sys.stdout.writelines(diff)
        else:
            write_atomic(path, source)
            print(f"wrote generated/{name}")
    if args.check and stale:
        print(f"{stale} generated file(s) are stale: run python -m derive.cli.regenerate")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
