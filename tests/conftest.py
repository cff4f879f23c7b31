"""Shared fixtures: run the real `aetrain` CLI, in-process (fast) or as a subprocess (end to end)."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# Tiny, fast runs: a couple of epochs on the embedded digits.
FAST = ["trainer.max_epochs=2", "data.batch_size=128"]


@dataclass
class Result:
    returncode: int
    out: str
    err: str
    run_dir: Path

    @property
    def output(self) -> str:
        return self.out + self.err

    def metrics(self) -> list[dict[str, str]]:
        with open(self.run_dir / "metrics.csv") as f:
            return list(csv.DictReader(f))


def call_main(args: list[str]) -> int:
    """`aetrain.cli.main(args)` in this process; returns the exit code.

    The root logger is put back as it was: Hydra gives it the run's handlers (a train.log in a run
    dir that a rejected command removes again), and later tests logging through them would fail.
    """
    from aetrain.cli import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        main(args)
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.fixture
def cli(tmp_path: Path, capfd: pytest.CaptureFixture[str]):
    """Call `aetrain.cli.main` in this process with `hydra.run.dir` under tmp_path."""

    def run(*args: str, run_dir: Path | None = None) -> Result:
        run_dir = run_dir or tmp_path / "run"
        capfd.readouterr()
        code = call_main([f"hydra.run.dir={run_dir}", *args])
        out, err = capfd.readouterr()
        return Result(code, out, err, run_dir)

    return run


def run_subprocess(*args: str, cwd: Path, run_dir: Path | None = None, env: dict[str, str] | None = None,
                   timeout: float = 300) -> Result:
    """`python -m aetrain ...` in a fresh process, the way a user runs it."""
    run_dir = run_dir or cwd / "run"
    proc = subprocess.run([sys.executable, "-m", "aetrain", f"hydra.run.dir={run_dir}", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return Result(proc.returncode, proc.stdout, proc.stderr, run_dir)
