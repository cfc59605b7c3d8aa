"""generated/ stays byte-identical to what the generator writes now."""

from __future__ import annotations

import difflib

from derive.cli.regenerate import GENERATED_DIR, expected_files


def test_generated_files_are_in_sync():
    files = expected_files()
    assert files, "no specs in generated/specs"
    stale = []
    for name, source in files.items():
        current = (
            (GENERATED_DIR / name).read_text(encoding="utf-8")
            if (GENERATED_DIR / name).exists()
            else ""
        )
        if current != source:
            diff = "".join(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    source.splitlines(keepends=True),
                    f"generated/{name}",
                    "regenerated",
                )
            )
            stale.append(diff)
    assert not stale, (
        "generated/ is stale; run `python -m derive.cli.regenerate`:\n" + "\n".join(stale)[:20000]
    )


def test_no_orphan_generated_modules():
    expected = set(expected_files())
    present = {p.name for p in GENERATED_DIR.glob("*.py") if p.name != "__init__.py"}
    assert present == expected
