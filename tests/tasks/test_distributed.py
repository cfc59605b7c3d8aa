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


def _argv(tmp: Path, cache: Path, name: str) -> list[str]:
    return [*ARGS, "--cache-dir", str(cache), "--out", str(tmp / f"{name}.json"),
            "--checkpoint-dir", str(tmp / name)]  # fmt: skip


def _outputs(tmp: Path, name: str) -> tuple[dict, dict]:
    saved = torch.load(tmp / name / "generalization-relu_hnp_seed0.pt", weights_only=True)
    return json.loads((tmp / f"{name}.json").read_text()), saved


def test_two_processes_agree_with_one(cli, relu_zoo, zoo_cache: Path, tmp_path: Path) -> None:
    assert CNNZooSettings.tiny("relu").networks == len(relu_zoo)  # the zoo is cached already
    # one process: this one (one thread, like each torchrun worker below)
    assert torch.get_num_threads() == 1
    code, _, err = cli(*_argv(tmp_path, zoo_cache, "single"))
    assert code == 0, err
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "derive.cli"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*torchrun, *_argv(tmp_path, zoo_cache, "double")], check=False,
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    single, single_state = _outputs(tmp_path, "single")
    double, double_state = _outputs(tmp_path, "double")
    assert single["processes"] == 1 and double["processes"] == 2
    assert double["runs"][0]["best_epoch"] == single["runs"][0]["best_epoch"]
    assert double["mean"] == pytest.approx(single["mean"], abs=1e-6)
    for key, value in single_state["state_dict"].items():
        torch.testing.assert_close(double_state["state_dict"][key], value, rtol=1e-4, atol=1e-5)
