"""``nfn-derive zoo``, ``train`` and ``experiment`` on the tiny setting, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_zoo_command(cli, zoos, zoo_cache: Path) -> None:
    code, out, _ = cli("zoo", "generalization-tanh", "--setting", "tiny", "--cache-dir", zoo_cache,
                       "--no-progress")  # fmt: skip
    assert code == 0
    assert "generalization-tanh: 24 networks of nfn_runtime.architectures:small_cnn_tanh" in out
    assert "test accuracy: min" in out


def test_train_command(cli, zoos, zoo_cache: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "train.json"
    code, out, _ = cli("train", "--task", "inr", "--model", "statnn", "--setting", "tiny",
                       "--seeds", "0,1", "--cache-dir", zoo_cache, "--no-progress",
                       "--out", out_file)  # fmt: skip
    assert code == 0, out
    summary = json.loads(out_file.read_text())
    assert summary["task"] == "inr" and summary["metric"] == "accuracy"
    assert [run["seed"] for run in summary["runs"]] == [0, 1]
    assert "inr statnn: accuracy" in out
    # weights only: a different model (no probe statistics), so a different parameter count
    code, _, _ = cli("train", "--task", "inr", "--model", "statnn", "--setting", "tiny",
                     "--seeds", "0", "--cache-dir", zoo_cache, "--no-progress",
                     "--probe-grid", "0", "--out", out_file)  # fmt: skip
    assert code == 0
    without = json.loads(out_file.read_text())
    assert without["runs"][0]["parameters"] < summary["runs"][0]["parameters"]


def test_experiment_command(cli, zoos, zoo_cache: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "results"
    code, out, _ = cli("experiment", "--setting", "tiny", "--models", "monomial,hnp",
                       "--tasks", "generalization-relu,inr", "--cache-dir", zoo_cache,
                       "--no-progress", "--out", out_dir)  # fmt: skip
    assert code == 0
    results = json.loads((out_dir / "results.json").read_text())
    relu = results["tasks"]["generalization-relu"]
    assert [t["label"] for t in relu["transformations"]] == ["k=1", "k=2", "k=3", "k=4"]
    assert all(t["max_function_change"] < 1e-9 for t in relu["transformations"])
    monomial = relu["models"]["monomial"]
    for label in ("k=1", "k=4"):
        assert monomial["transformed"][label]["mean"] == pytest.approx(
            monomial["clean_float64"]["mean"], abs=1e-9
        )
    assert set(results["tasks"]["inr"]["models"]) == {"monomial", "hnp"}
    assert results["settings"]["model"]["probe_grid"] == 8  # the tiny setting's probes
    table = (out_dir / "results.md").read_text()
    assert "| monomial |" in table and "**inr**" in table
    assert (out_dir / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in out


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["experiment", "--models", "hnp,transformer"], ["--models", "'transformer'"]),
        (["experiment", "--tasks", "imagenet"], ["--tasks", "'imagenet'"]),
        (["train", "--task", "inr", "--model", "hnp", "--seeds", "1,x"], ["--seeds", "'1,x'"]),
        (["train", "--task", "inr", "--model", "hnp", "--epochs", "0"], ["--epochs", "0"]),
        (["experiment", "--probe-grid", "-2"], ["--probe-grid", "-2"]),
        (["train", "--task", "inr", "--model", "hnp", "--probe-grid", "-1"], ["--probe-grid"]),
        (["experiment", "--probe-images", "-3"], ["--probe-images", "-3"]),
        (
            ["train", "--task", "generalization", "--model", "canon-hnp", "--probe-images", "-1"],
            ["--probe-images"],
        ),
    ],
)
def test_bad_arguments(cli, one_line_error, tmp_path: Path, argv, fragments) -> None:
    code, out, err = cli(*argv, "--setting", "tiny", "--cache-dir", tmp_path / "cache")
    one_line_error(code, out, err, fragments)
    assert not (tmp_path / "cache").exists()
