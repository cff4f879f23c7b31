"""Defects found by using aetrain as a new user would and by attacking it (issue #16), one test or more per item.

Each test drives the CLI (in this process or as a subprocess) or the Python API the way a user does, and
names the item it reproduces. Tests of one item are grouped under its number.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import FAST, call_main, metrics_rows, run_subprocess


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-epoch run on the digits (dense_ae, batch 128, CPU), to copy from; never written to."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert call_main([f"hydra.run.dir={run_dir}", *FAST, "outputs.plot_every=0", "outputs.tensorboard=false"]) == 0
    return run_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(result, code: int = 2) -> str:
    assert result.returncode == code, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aetrain: "), result.err
    return lines[0]


# --- 1. a resume writes into a dir only when it is the checkpoint's own run ------------------------------

def test_resuming_a_checkpoint_kept_outside_its_run_dir_leaves_that_folder_alone(finished: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "dl2"
    (elsewhere / "checkpoints").mkdir(parents=True)
    shutil.copy(finished / "checkpoints" / "last.pt", elsewhere / "model.pt")
    (elsewhere / "summary.json").write_text('{"mine": true}\n')
    (elsewhere / "checkpoints" / "best.pt").write_bytes(b"my own best model")
    (elsewhere / "metrics.csv").write_text("when,what\n1,2\n")  # not aetrain's: no epoch column
    (elsewhere / "train.log").write_text("my notes\n")
    before = snapshot(elsewhere)

    result = run_subprocess("trainer.resume=dl2/model.pt", "trainer.max_epochs=3", *FAST[1:], cwd=tmp_path,
                            command=("train",))
    assert result.returncode == 0, result.output
    assert snapshot(elsewhere) == before  # nothing of the folder the checkpoint was kept in was touched
    [new] = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]  # a new run dir of its own
    assert [int(r["epoch"]) for r in metrics_rows(new)] == [3]  # it continues after the checkpoint's epoch 2
    assert json.loads((new / "summary.json").read_text())["epochs"] == 3
    assert "not in the run dir it was written in" in result.out


def test_a_checkpoint_copied_into_another_runs_checkpoints_folder_does_not_continue_that_run(
        finished: Path, tmp_path: Path, cli) -> None:
    other = cli(*FAST, "trainer.max_epochs=1", run_dir=tmp_path / "other")
    assert other.returncode == 0
    shutil.copy(finished / "checkpoints" / "last.pt", other.run_dir / "checkpoints" / "theirs.pt")
    before = snapshot(other.run_dir)
    result = cli(f"trainer.resume={other.run_dir / 'checkpoints' / 'theirs.pt'}", "trainer.max_epochs=3", *FAST[1:],
                 run_dir=tmp_path / "continued")
    assert result.returncode == 0, result.output
    assert snapshot(other.run_dir) == before
    assert [int(r["epoch"]) for r in metrics_rows(tmp_path / "continued")] == [3]
