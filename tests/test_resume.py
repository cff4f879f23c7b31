"""Exact resume: a run stopped at an epoch boundary or mid-epoch and resumed ends bit-identical."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aetrain.config import (AdamConfig, Config, ConvAEConfig, DataConfig, DenoisingAEConfig, DenseAEConfig, ModelConfig,
                            NoiseConfig, OutputsConfig, SparseAEConfig, SparsityConfig, TrainerConfig, VAEConfig,
                            default_choice)
from aetrain.errors import CheckpointError, Interrupted
from aetrain.commands.train import run
from aetrain.train.engine import Callback, Engine
from conftest import assert_same_run, metrics_rows, without_timing

EPOCHS = 3


class StopAt(Callback):
    """Deliver a stop request (what the SIGINT handler does) after an epoch, a step, or halfway
    through an epoch."""

    def __init__(self, *, epoch: int | None = None, step: int | None = None, mid_epoch: int | None = None) -> None:
        self.epoch, self.step, self.mid_epoch = epoch, step, mid_epoch

    def on_step(self, engine: Engine) -> None:
        halfway = engine.state.epoch + 1 == self.mid_epoch and engine.state.step_in_epoch == len(engine.parts.windows) // 2
        if engine.state.step == self.step or halfway:
            engine.interrupt.handle(signal.SIGINT)

    def on_epoch_end(self, engine: Engine, record: dict) -> None:
        if record["epoch"] == self.epoch:
            engine.interrupt.handle(signal.SIGTERM)


def results(run_dir: Path) -> list[dict[str, str]]:
    return without_timing(metrics_rows(run_dir))


def interrupted_then_resumed(cfg: Config, run_dir: Path, stop: StopAt) -> None:
    with pytest.raises(Interrupted) as info:
        run(cfg, run_dir, callbacks=[stop])
    assert "resume with: aetrain trainer.resume=" in str(info.value)
    cfg.trainer.resume = str(run_dir)
    run(cfg, run_dir)


def scheduler(name: str) -> object:
    s = default_choice("scheduler", name)
    for key, value in dict(step_size=1, gamma=0.7, patience=0, warmup_steps=5).items():
        if hasattr(s, key):
            setattr(s, key, value)
    return s


def cfg_for(model: ModelConfig, scheduler_name: str, **trainer: object) -> Config:
    # pictures and TensorBoard off: they cost time here, and test_outputs checks they leave the RNG alone
    return Config(model=copy.deepcopy(model), data=DataConfig(batch_size=128), scheduler=scheduler(scheduler_name),
                  optimizer=AdamConfig(lr=3e-3),
                  trainer=TrainerConfig(**{"max_epochs": EPOCHS, "deterministic": True, "device": "cpu", **trainer}),
                  outputs=OutputsConfig(plot_every=0, tensorboard=False))


FAMILIES = {
    "dense": DenseAEConfig(dropout=0.1),
    "conv": ConvAEConfig(batch_norm=True, dropout=0.1),
    "denoising": DenoisingAEConfig(backbone="conv", noise=NoiseConfig("salt_pepper", 0.2)),
    "sparse": SparseAEConfig(sparsity=SparsityConfig("kl", 1e-3, 0.1)),
    "vae": VAEConfig(backbone="conv", kl_warmup_epochs=2.5),  # resumed inside the warm-up: its weight must follow
}
CASES = [  # every family and every scheduler, with accumulation, clipping and fp16's scaler in the mix
    *[(family, "plateau", dict(accumulate_grad_batches=2, gradient_clip_val=0.5)) for family in FAMILIES],
    *[("denoising", s, dict(accumulate_grad_batches=3, gradient_clip_val=0.05, gradient_clip_algorithm="value"))
      for s in ("none", "step", "cosine", "onecycle", "exponential")],
    ("dense", "cosine", dict(precision="16-mixed")),
    ("conv", "onecycle", dict(precision="bf16-mixed", accumulate_grad_batches=2)),
]


@pytest.mark.parametrize("where", ["epoch_boundary", "mid_epoch"])
@pytest.mark.parametrize(("family", "scheduler", "trainer"), CASES,
                         ids=[f"{f}-{s}-{'-'.join(t)}" for f, s, t in CASES])
def test_resumed_run_is_bit_identical_to_uninterrupted(tmp_path: Path, family: str, scheduler: str, trainer: dict,
                                                        where: str) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(cfg_for(FAMILIES[family], scheduler, **trainer), straight)
    stop = StopAt(epoch=1) if where == "epoch_boundary" else StopAt(mid_epoch=2)
    interrupted_then_resumed(cfg_for(FAMILIES[family], scheduler, **trainer), resumed, stop)
    assert_same_run(straight, resumed)


def test_raising_max_epochs_on_resume_continues_training(tmp_path: Path) -> None:
    cfg = cfg_for(FAMILIES["dense"], "step", max_epochs=2)
    run(cfg, tmp_path / "a")
    cfg.trainer.max_epochs, cfg.trainer.resume = EPOCHS, str(tmp_path / "a")
    run(cfg, tmp_path / "a")
    run(cfg_for(FAMILIES["dense"], "step"), tmp_path / "straight")
    assert_same_run(tmp_path / "straight", tmp_path / "a")


def test_per_step_schedules_refuse_a_longer_run_on_resume(tmp_path: Path) -> None:
    cfg = cfg_for(FAMILIES["dense"], "onecycle", max_epochs=2)
    run(cfg, tmp_path / "a")
    cfg.trainer.max_epochs, cfg.trainer.resume = 4, str(tmp_path / "a")
    with pytest.raises(CheckpointError, match="scheduler=onecycle was planned over trainer.max_epochs=2"):
        run(cfg, tmp_path / "a")


def test_resuming_into_another_dir_carries_the_history(tmp_path: Path) -> None:
    cfg = cfg_for(FAMILIES["dense"], "none")
    with pytest.raises(Interrupted):
        run(cfg, tmp_path / "a", callbacks=[StopAt(epoch=2)])
    cfg.trainer.resume = str(tmp_path / "a" / "checkpoints" / "last.pt")
    run(cfg, tmp_path / "b")
    run(cfg_for(FAMILIES["dense"], "none"), tmp_path / "straight")
    assert_same_run(tmp_path / "straight", tmp_path / "b")
    assert len(results(tmp_path / "a")) == 2  # the original is left as it was


def test_rows_written_after_the_last_checkpoint_are_not_duplicated(tmp_path: Path) -> None:
    cfg = cfg_for(FAMILIES["dense"], "none")
    with pytest.raises(Interrupted):
        run(cfg, tmp_path / "a", callbacks=[StopAt(epoch=2)])
    # a run that died after writing epoch 3's row but before its checkpoint landed
    path = tmp_path / "a" / "metrics.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines) + lines[-1].replace("2,", "3,", 1))
    cfg.trainer.resume = str(tmp_path / "a")
    run(cfg, tmp_path / "a")
    assert [r["epoch"] for r in results(tmp_path / "a")] == ["1", "2", "3"]


def test_early_stopping_counter_survives_a_resume(tmp_path: Path) -> None:
    def cfg() -> Config:
        c = cfg_for(FAMILIES["dense"], "none", max_epochs=12, early_stopping_patience=1)
        c.optimizer.lr = 0.05  # val/loss bounces, so patience runs out early
        return c

    run(cfg(), tmp_path / "straight")
    stopped_at = len(results(tmp_path / "straight"))
    assert stopped_at < 12
    c = cfg()
    with pytest.raises(Interrupted):
        run(c, tmp_path / "b", callbacks=[StopAt(epoch=stopped_at - 1)])
    c.trainer.resume = str(tmp_path / "b")
    run(c, tmp_path / "b")
    assert_same_run(tmp_path / "straight", tmp_path / "b")


ARGS = ["model=conv_ae", "data.batch_size=4", "trainer.device=cpu", "trainer.max_epochs=2", "scheduler=cosine", "scheduler.warmup_steps=20",
        "trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=0.5",
        "outputs.plot_every=0"]  # no pictures at epoch 1's end: the signal below must land inside epoch 2


def aetrain(*args: str) -> list[str]:
    return [sys.executable, "-m", "aetrain", *ARGS, *args]


@pytest.fixture(scope="module")
def straight_cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run both signal tests compare against."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    straight = subprocess.run(aetrain(f"hydra.run.dir={run_dir}"), capture_output=True, text=True,
                              cwd=run_dir.parent, timeout=300)
    assert straight.returncode == 0, straight.stderr
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_real_signal_saves_mid_epoch_and_the_resumed_run_is_identical(tmp_path: Path, signum: int,
                                                                        straight_cli_run: Path) -> None:
    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen(aetrain(f"hydra.run.dir={run_dir}", "trainer.log_every_n_steps=1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not (run_dir / "metrics.csv").exists():  # epoch 1 is done; the signal lands in epoch 2
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name}" in err and "resume with: aetrain trainer.resume=" in err
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["state"]
    assert state["epoch"] == 1 and state["step_in_epoch"] > 0  # stopped inside epoch 2
    resumed = subprocess.run([sys.executable, "-m", "aetrain", f"trainer.resume={run_dir}"], capture_output=True,
                             text=True, cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(straight_cli_run, run_dir)


def test_second_signal_aborts_at_once() -> None:
    from aetrain.train.signals import Interrupt

    interrupt = Interrupt()
    with interrupt.installed():
        interrupt.handle(signal.SIGINT)
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            interrupt.handle(signal.SIGINT)
