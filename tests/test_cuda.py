"""CUDA paths: mixed precision, device-resident data, a step without host syncs. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from aetrain.config import Config, ConvAEConfig, DataConfig, TrainerConfig
from aetrain.train.engine import Callback, Engine
from aetrain.commands.train import build_parts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cuda_config(**trainer: object) -> Config:
    return Config(model=ConvAEConfig(), data=DataConfig(batch_size=128),
                  trainer=TrainerConfig(**{"max_epochs": 3, "device": "cuda", **trainer}))


class Val(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_epoch_end(self, engine: Engine, record: dict) -> None:
        self.losses.append(record["val/loss"])


@pytest.mark.parametrize("precision", ["32", "16-mixed", "bf16-mixed"])
def test_precisions_train_on_cuda_with_device_resident_data(precision: str) -> None:
    parts = build_parts(cuda_config(precision=precision))
    assert parts.data.train.data.is_cuda and parts.data.val.is_cuda
    assert parts.precision.scaler.is_enabled() == (precision == "16-mixed")
    assert parts.optimizer.defaults.get("fused") is True
    val = Val()
    Engine(parts, [val]).fit()
    assert val.losses[-1] < val.losses[0]


def test_training_steps_never_wait_on_the_host() -> None:
    class NoSyncWindow(Callback):
        """Between steps 2 and 10 any synchronizing call raises."""

        def on_step(self, engine: Engine) -> None:
            if engine.state.step == 2:
                torch.cuda.set_sync_debug_mode("error")
            if engine.state.step == 10:
                torch.cuda.set_sync_debug_mode("default")

    try:
        Engine(build_parts(cuda_config(precision="16-mixed", max_epochs=1, log_every_n_steps=1000,
                                       gradient_clip_val=1.0)), [NoSyncWindow()]).fit()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_resume_is_exact_on_cuda_in_deterministic_mode(tmp_path) -> None:
    from aetrain.commands.train import run

    from test_resume import StopAt, assert_same_run, interrupted_then_resumed

    run(cuda_config(deterministic=True), tmp_path / "a")
    interrupted_then_resumed(cuda_config(deterministic=True), tmp_path / "b", StopAt(mid_epoch=2))
    assert_same_run(tmp_path / "a", tmp_path / "b")
