"""``nfn-derive train`` under ``torchrun`` with two processes (DDP, gloo, CPU) agrees with one
process on the same global batch: same metrics, same checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nfn_tasks.zoo import CNNZooSettings

ARGS = ["train", "--task", "generalization", "--model", "hnp", "--setting", "tiny",
        "--seeds", "0", "--epochs", "3", "--batch-size", "8", "--no-progress"]  # fmt: skip


def _run(command: list[str], tmp: Path, cache: Path, name: str) -> tuple[dict, dict]:
    out, checkpoints = tmp / f"{name}.json", tmp / name
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = [*command, *ARGS, "--cache-dir", str(cache), "--out", str(out),
            "--checkpoint-dir", str(checkpoints)]  # fmt: skip
    done = subprocess.run(full, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(checkpoints / "generalization-relu_hnp_seed0.pt", weights_only=True)
    return json.loads(out.read_text()), saved


def test_two_processes_agree_with_one(relu_zoo, zoo_cache: Path, tmp_path: Path) -> None:
    assert CNNZooSettings.tiny("relu").networks == len(relu_zoo)  # the zoo is cached already
    cli = [sys.executable, "-m", "derive.cli"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "derive.cli"]  # fmt: skip
    single, single_state = _run(cli, tmp_path, zoo_cache, "single")
    double, double_state = _run(torchrun, tmp_path, zoo_cache, "double")
    assert single["processes"] == 1 and double["processes"] == 2
    assert double["runs"][0]["best_epoch"] == single["runs"][0]["best_epoch"]
    assert double["mean"] == pytest.approx(single["mean"], abs=1e-6)
    for key, value in single_state["state_dict"].items():
        torch.testing.assert_close(double_state["state_dict"][key], value, rtol=1e-4, atol=1e-5)
