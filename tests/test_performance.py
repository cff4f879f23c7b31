"""Fast paths compute what the plain path computes; the benchmark script runs (smoke mode)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aetrain.commands.train import build_parts
from aetrain.config import Config, ConvAEConfig, DataConfig, OptimizerConfig, TrainerConfig
from aetrain.train.engine import Callback, Engine
from aetrain.train.optim import OPTIMIZERS, build_optimizer
from conftest import choose

ROOT = Path(__file__).parents[1]


class Records(Callback):
    def __init__(self) -> None:
        self.val: list[float] = []

    def on_epoch_end(self, engine: Engine, record: dict) -> None:
        self.val.append(record["val/loss"])


def val_losses(optimizer: OptimizerConfig | None = None, **trainer: object) -> list[float]:
    cfg = Config(model=ConvAEConfig(batch_norm=True), data=DataConfig(batch_size=128),
                 trainer=TrainerConfig(**{"max_epochs": 2, "device": "cpu", **trainer}))
    cfg.optimizer = optimizer or cfg.optimizer
    records = Records()
    Engine(build_parts(cfg), [records]).fit()
    return records.val


def test_channels_last_is_the_conv_default_and_gives_the_losses_of_nchw() -> None:
    parts = build_parts(Config(model=ConvAEConfig(), trainer=TrainerConfig(device="cpu")))
    assert next(parts.data.train.epoch(0)).is_contiguous(memory_format=torch.channels_last)
    assert parts.data.val.is_contiguous(memory_format=torch.channels_last)
    assert parts.model.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    nchw = build_parts(Config(model=ConvAEConfig(), trainer=TrainerConfig(channels_last=False, device="cpu")))
    assert nchw.model.encoder[0].weight.is_contiguous()
    # other conv kernels round differently, in another way on every CPU; SGD carries that over two epochs
    # as it is (Adam's first steps amplify it to ~2e-4), and a wrong layout would be off by far more
    sgd = choose("optimizer", "sgd", lr=0.05)
    torch.testing.assert_close(val_losses(sgd), val_losses(sgd, channels_last=False), rtol=1e-4, atol=0)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_cpu_optimizers_are_fused_where_torch_has_the_kernel_and_train_like_the_reference(name: str) -> None:
    def trained(fast: bool) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 16))
        cfg = choose("optimizer", name, lr=1e-2, weight_decay=1e-3)
        if hasattr(cfg, "momentum"):
            cfg.momentum = 0.9
        optimizer = build_optimizer(cfg, model.parameters()) if fast else OPTIMIZERS.get(name).build(
            list(model.parameters()), cfg, {"foreach": True})
        x = torch.randn(64, 16)
        for _ in range(20):
            torch.nn.functional.mse_loss(model(x), x).backward()
            optimizer.step()
            optimizer.zero_grad()
        return optimizer, [p.detach() for p in model.parameters()]

    fast, fast_params = trained(fast=True)
    _, reference_params = trained(fast=False)
    assert fast.defaults.get("fused", False) is OPTIMIZERS.get(name).fused
    for a, b in zip(fast_params, reference_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_model_gives_the_losses_of_the_eager_one() -> None:
    # inductor fuses and reorders float sums, so two epochs drift apart by ~0.2%; a wrong graph is off by far more
    torch.testing.assert_close(val_losses(compile=True), val_losses(), rtol=1e-2, atol=0)


@pytest.mark.slow
def test_benchmark_smoke_mode_runs_and_reports_every_entry(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--smoke",
                           "--workloads", "dense", "--batch", "128,256", "--skip", "lightning", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    rows = report["results"]
    entries = ["limit", "aetrain", "aetrain-steps", "dataloader"]  # no graph entry on the CPU, and a note saying so
    assert [(r["batch"], r["entry"]) for r in rows] == [(b, e) for b in (128, 256) for e in entries]
    assert report["notes"] == ["graph: skipped (a CUDA graph needs --device cuda)"]
    assert all(r["samples_per_s"] > 0 and r["peak_mb"] > 0 for r in rows)
    assert all(r["vs_limit"] == 1.0 for r in rows if r["entry"] == "limit")
    steps, whole = (next(r for r in rows if r["entry"] == e and r["batch"] == 128)
                    for e in ("aetrain-steps", "aetrain"))
    assert steps["samples_per_s"] > whole["samples_per_s"]  # the steps are part of the whole epoch


def test_training_runs_with_setup_objects_frozen_and_thaws_them_after(tmp_path: Path) -> None:
    import gc

    from aetrain.commands.train import run

    class FreezeCount(Callback):
        def on_epoch_end(self, engine: Engine, record: dict) -> None:
            self.during = gc.get_freeze_count()

    before, probe = gc.get_freeze_count(), FreezeCount()
    alive = len(gc.get_objects())  # torch, Hydra's config classes, this test session: all there before the run
    run(Config(trainer=TrainerConfig(max_epochs=1, device="cpu")), tmp_path / "run", callbacks=[probe])
    assert probe.during - before >= 0.9 * alive  # out of the collector's way while training (how many: the machine's)
    assert gc.get_freeze_count() == before  # and back in it: a sweep's runs don't pile up garbage


@pytest.mark.slow
def test_sweep_benchmark_smoke_mode_times_both_launchers_with_the_same_numbers(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep.py"), "--smoke", "--via", "api",
                           "--threads", "1", "--outputs-off", "--json", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())["results"]
    assert (row["workload"], row["jobs"]) == ("dense", 4)
    assert row["basic_s"] > 0 and row["fused_s"] > 0 and row["ratio"] == pytest.approx(row["basic_s"] / row["fused_s"],
                                                                                        rel=0.05)
    assert row["max_rel_diff_best_val_loss"] == 0  # every member's best val/loss is its job's, bit for bit
    assert row["outputs_share_of_fused"] < 1  # (noise can make it a little negative at one epoch)
