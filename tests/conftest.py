"""Shared fixtures and helpers: run the real `aetrain` CLI (in-process or as a subprocess), build
configs for the engine, and compare runs.

Tiers: `python -m pytest -q -n 2` runs everything (what CI runs); `-m "not slow"` is the fast tier
for development. Tests that train long, start
many processes or wait on real signals are marked `slow`.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from aetrain.config import Config, DataConfig, OutputsConfig, TrainerConfig

# Under pytest-xdist (`-n N`) each worker gets one core's worth of threads, and so do the CLI processes it
# starts: N workers with torch's default of one thread per core each would fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# Tiny, fast runs: a couple of epochs on the embedded digits; every test that means the CPU says so
# (trainer.device=auto is CUDA on a GPU machine).
FAST = ["trainer.max_epochs=2", "data.batch_size=128", "trainer.device=cpu"]
TIMING = {"epoch_time_s", "samples_per_s", "memory_mb"}  # measurements, not results


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
        return metrics_rows(self.run_dir)


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def without_timing(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def last_weights(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / name, weights_only=True)["model"]


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical final weights and identical metrics rows (timings aside)."""
    wa, wb = last_weights(a), last_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert without_timing(metrics_rows(a)) == without_timing(metrics_rows(b))


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
    """Call `aetrain.cli.main` in this process with `hydra.run.dir` under tmp_path (for `aetrain train`).

    `cli(*args)` trains; `cli.command("eval", *args)` runs another command as typed."""

    class Cli:
        def __call__(self, *args: str, run_dir: Path | None = None) -> Result:
            run_dir = run_dir or tmp_path / "run"
            return self.command(f"hydra.run.dir={run_dir}", *args, run_dir=run_dir)

        def command(self, *args: str, run_dir: Path | None = None) -> Result:
            capfd.readouterr()
            code = call_main(list(args))
            out, err = capfd.readouterr()
            return Result(code, out, err, run_dir or tmp_path / "run")

    return Cli()


def run_subprocess(*args: str, cwd: Path, run_dir: Path | None = None, env: dict[str, str] | None = None,
                   timeout: float = 300, command: tuple[str, ...] = ()) -> Result:
    """`python -m aetrain [command] ...` in a fresh process, the way a user runs it."""
    run_dir = run_dir or cwd / "run"
    where = [] if command else [f"hydra.run.dir={run_dir}"]
    proc = subprocess.run([sys.executable, "-m", "aetrain", *command, *where, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return Result(proc.returncode, proc.stdout, proc.stderr, run_dir)


def digits_config(**sections: Any) -> Config:
    """A short CPU run on the digits (2 epochs, batch 128, no pictures or TensorBoard), with `sections` replaced."""
    cfg = Config(data=DataConfig(batch_size=128), trainer=TrainerConfig(max_epochs=2, device="cpu"),
                 outputs=OutputsConfig(plot_every=0, tensorboard=False))
    for name, value in sections.items():
        setattr(cfg, name, value)
    cfg.trainer.device = "cpu"
    return cfg


def choose(group: str, name: str, **keys: Any) -> Any:
    """The config of `group=name` (its defaults, as the preset gives them) with `keys` set; a key that
    choice does not have is an error, as on the command line."""
    from aetrain.config import default_choice

    section = default_choice(group, name)
    for key, value in keys.items():
        if not hasattr(section, key):
            raise AttributeError(f"{group}={name} has no key {key}")
        setattr(section, key, value)
    return section


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """`trained(*overrides)`: the run dir of a CPU training run (no pictures, no TensorBoard) with these
    overrides, trained once per session (per xdist worker) and shared by the tests that ask for it. The
    commands after training write into their own folders of it; a test that checks a run dir is left
    alone compares it before and after."""
    runs: dict[tuple[str, ...], Path] = {}

    def train(*args: str) -> Path:
        if args not in runs:
            run_dir = tmp_path_factory.mktemp("trained") / "run"
            code = call_main([f"hydra.run.dir={run_dir}", "trainer.device=cpu", "outputs.plot_every=0",
                              "outputs.tensorboard=false", *args])
            assert code == 0, f"training {args} failed with exit code {code}"
            runs[args] = run_dir
        return runs[args]

    return train


@pytest.fixture(scope="session")
def made_once(tmp_path_factory: pytest.TempPathFactory):
    """`made_once(name, make)`: the folder `name` of this test session, made by `make(folder)` once for the whole
    session: under xdist the first worker to ask makes it while holding a file lock, and the other waits for it
    and reads it. Never written to after: a test that changes it works on a copy (`copy_run`)."""
    from filelock import FileLock

    # every worker's basetemp is a folder of the session's own; without xdist, basetemp is the session's
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base

    def get(name: str, make) -> Path:
        import hashlib

        # one folder name, whatever the overrides hold; the hash keeps two names apart that read alike after that
        name = re.sub(r"[^\w.-]+", "_", name)[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
        folder, done = root / name / "out", root / name / "made"
        with FileLock(str(root / f"{name}.lock")):
            if not done.exists():
                if folder.exists():  # an earlier try failed: make it again (and fail again)
                    import shutil

                    shutil.rmtree(folder)
                make(folder)
                done.touch()
        return folder

    return get


@pytest.fixture(scope="session")
def shared(made_once):
    """`shared(*overrides)`: the run dir of a long CPU training run (no pictures, no TensorBoard) with these
    overrides, trained once for the whole session (`made_once`). For the acceptance runs at the defaults (200
    epochs) that several files check."""

    def train(run_dir: Path, args: tuple[str, ...]) -> None:
        code = call_main([f"hydra.run.dir={run_dir}", "trainer.device=cpu", "outputs.plot_every=0",
                          "outputs.tensorboard=false", *args])
        assert code == 0, f"training {args} failed with exit code {code}"

    return lambda *args: made_once("shared-" + "-".join(args),
                                   lambda run_dir: train(run_dir, args))


@pytest.fixture(scope="session")
def straight_run(made_once):
    """`straight_run(family, scheduler, trainer)`: the uninterrupted run of a case of test_resume.CASES, trained once
    per session: both resume tests of the case and test_graphs' eager run of it compare against it."""

    def get(family: str, scheduler: str, trainer: dict) -> Path:
        from aetrain.commands.train import run
        from test_resume import FAMILIES, cfg_for

        name = "straight-" + "-".join([family, scheduler, *(f"{k}_{v}" for k, v in trainer.items())])
        return made_once(name, lambda run_dir: run(cfg_for(FAMILIES[family], scheduler, **trainer), run_dir))

    return get


def copy_run(run_dir: Path, to: Path) -> Path:
    """A copy of `run_dir` at `to` (a run dir a command may write into), returned."""
    import shutil

    return Path(shutil.copytree(run_dir, to))


@pytest.fixture(scope="session")
def finished(trained) -> Path:
    """A finished two-epoch run on the digits (dense_ae, batch 128, CPU), to copy from; never written to."""
    return trained(*FAST)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes: compare before and after to show nothing was written."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(result: Result, code: int = 2) -> str:
    """The one line `aetrain: ...` a refused command printed, with exit code `code` and no traceback."""
    assert result.returncode == code, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aetrain: "), result.err
    return lines[0]


def assert_one_line_error(result: Result, message: str) -> None:
    """Exit 2, one line `aetrain: error: ...` holding `message`, no traceback, no run dir."""
    assert result.returncode == 2, result.output
    assert result.err.startswith("aetrain: error: ") and result.err.count("\n") == 1, result.err
    assert message in result.err, result.err
    assert "Traceback" not in result.output
    assert not result.run_dir.exists()


def start(*args: str, cwd: Path) -> subprocess.Popen:
    """`python -m aetrain *args` started in the background, its output captured."""
    return subprocess.Popen([sys.executable, "-m", "aetrain", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read_only(path: Path, on: bool) -> None:
    """Make a dir read-only, for root too (chattr +i: no entry may be added, removed or renamed)."""
    if os.geteuid() != 0:
        path.chmod(0o555 if on else 0o755)
    elif subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a dir read-only for root here (no chattr)")


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels and holds none: all Pillow sees of a huge image before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def save_pngs(folder: Path, n: int, size: int = 12) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
