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


def test_one_process_under_torchrun_trains_on_the_gpu_with_nccl_and_sync_batch_norm(tmp_path) -> None:
    """The NCCL path with one process: DDP, SyncBatchNorm and the gathered metrics on a GPU give the
    plain run's numbers (deterministic kernels)."""
    import subprocess
    import sys

    from conftest import metrics_rows

    args = ["model=conv_ae", "model.batch_norm=true", "trainer.device=cuda", "trainer.deterministic=true",
            "trainer.max_epochs=2", "outputs.plot_every=0"]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
                          "aetrain", *args, f"hydra.run.dir={tmp_path / 'ddp'}"], capture_output=True, text=True,
                         timeout=600)
    plain = subprocess.run([sys.executable, "-m", "aetrain", *args, f"hydra.run.dir={tmp_path / 'plain'}"],
                           capture_output=True, text=True, timeout=600)
    assert ddp.returncode == plain.returncode == 0, ddp.stderr + plain.stderr
    assert "DistributedDataParallel over NCCL" in ddp.stdout
    for a, b in zip(metrics_rows(tmp_path / "ddp"), metrics_rows(tmp_path / "plain")):
        assert float(a["val/loss"]) == pytest.approx(float(b["val/loss"]), rel=1e-6)
    weights = torch.load(tmp_path / "ddp/checkpoints/last.pt", weights_only=True)["model"]
    assert any("running_mean" in k for k in weights) and not any(k.startswith("module.") for k in weights)
