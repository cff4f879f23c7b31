"""CUDA paths: mixed precision, device-resident data, a step without host syncs, and whole-step CUDA
graphs (trainer.cuda_graphs) against eager steps. Skipped without a GPU; the CPU side of the graphs
is tests/test_graphs.py."""

from __future__ import annotations

import copy
import csv
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from aetrain.commands.train import build_parts, run
from aetrain.config import (AdamConfig, Config, ConvAEConfig, DataConfig, DenseAEConfig, DiagnosticsConfig, ModelConfig,
                            OutputsConfig, TrainerConfig)
from aetrain.errors import ConfigError
from aetrain.train.engine import Callback, Engine
from aetrain.train.graphs import GraphedTrainStep
from aetrain.train.step import TrainStep
from conftest import assert_same_run, choose, last_weights, metrics_rows, without_timing
from test_resume import CASES, FAMILIES, StopAt, cfg_for, interrupted_then_resumed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cuda_config(**trainer: object) -> Config:
    return Config(model=ConvAEConfig(), data=DataConfig(batch_size=128),
                  trainer=TrainerConfig(**{"max_epochs": 3, "device": "cuda", **trainer}))


def on_cuda(cfg: Config, **trainer: object) -> Config:
    cfg = copy.deepcopy(cfg)
    cfg.trainer.device = "cuda"
    for key, value in trainer.items():
        setattr(cfg.trainer, key, value)
    return cfg


class Val(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_epoch_end(self, engine: Engine, record: dict) -> None:
        self.losses.append(record["val/loss"])


class StepOf(Callback):
    """Keeps the run's step object for a look after training."""

    step: object = None

    def on_fit_end(self, engine: Engine) -> None:
        self.step = engine.parts.step


def assert_graphed(step: object) -> None:
    assert isinstance(step, GraphedTrainStep), type(step)
    assert step.off is None and step.replays > 0, step.off


def assert_close_runs(a: Path, b: Path) -> None:
    """The same run to float rounding: every metric within 1e-3, every weight tensor within 1e-3 of its norm.

    A graphed step reads its learning rate as float32 where the eager one uses the float; Adam turns
    that last bit into sign-sized updates of weights whose gradient is about 0, so weights are
    compared as whole tensors. A capture that is wrong (stale inputs, a frozen rate, noise drawn once)
    is off by far more.
    """
    ra, rb = without_timing(metrics_rows(a)), without_timing(metrics_rows(b))
    assert [r.keys() for r in ra] == [r.keys() for r in rb]
    for x, y in zip(ra, rb):
        for key in x:
            if "/" in key or key == "lr":
                assert float(x[key]) == pytest.approx(float(y[key]), rel=1e-3, abs=1e-7), (key, x["epoch"])
            else:
                assert x[key] == y[key], key
    wa, wb = last_weights(a), last_weights(b)
    for key in wa:
        assert (wa[key].float() - wb[key].float()).norm() <= 1e-3 * wa[key].float().norm() + 1e-6, key


# --- device-resident data, precisions, no host syncs ------------------------------------------------

@pytest.mark.parametrize("precision", ["32", "16-mixed", "bf16-mixed"])
def test_precisions_train_on_cuda_with_device_resident_data(precision: str) -> None:
    parts = build_parts(cuda_config(precision=precision))
    assert parts.data.train.data.is_cuda and parts.data.val.is_cuda
    assert parts.precision.scaler.is_enabled() == (precision == "16-mixed")
    assert parts.optimizer.defaults.get("fused") is True
    assert isinstance(parts.step, GraphedTrainStep)  # trainer.cuda_graphs=auto, and nothing stands in the way
    val = Val()
    Engine(parts, [val]).fit()
    assert val.losses[-1] < val.losses[0]
    assert_graphed(parts.step)


class NoSyncWindow(Callback):
    """Between steps 2 and 10 any synchronizing call raises (the capture itself is at step 1)."""

    def on_step(self, engine: Engine) -> None:
        if engine.state.step == 2:
            torch.cuda.set_sync_debug_mode("error")
        if engine.state.step == 10:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("graphs", ["true", "false"])
def test_the_doctors_sampled_steps_never_wait_on_the_host(tmp_path: Path, graphs: str) -> None:
    cfg = cuda_config(max_epochs=1, log_every_n_steps=1000, cuda_graphs=graphs)
    cfg.diagnostics = DiagnosticsConfig(every_n_steps=2)  # steps 2, 4, ... sampled eagerly; 3, 5, ... replayed
    cfg.outputs = OutputsConfig(plot_every=0, tensorboard=False, progress=False)
    try:
        run(cfg, tmp_path / "run", callbacks=[NoSyncWindow()])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    rows = list(csv.DictReader(open(tmp_path / "run" / "diagnostics.csv", newline="")))
    assert sorted({int(r["step"]) for r in rows if r["grad_norm"]}) == [1, 3, 5, 7, 9, 11]  # steps taken after each


@pytest.mark.parametrize("graphs", ["true", "false"])
def test_training_steps_never_wait_on_the_host(graphs: str) -> None:
    try:
        Engine(build_parts(cuda_config(precision="16-mixed", max_epochs=1, log_every_n_steps=1000,
                                       gradient_clip_val=1.0, cuda_graphs=graphs)), [NoSyncWindow()]).fit()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_validation_reads_the_device_once() -> None:
    parts = build_parts(cuda_config(max_epochs=1))
    engine = Engine(parts)
    engine.validate()  # warm: the first call may initialise libraries
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine.validate()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]  # the final read of the sums, nothing per batch


@pytest.mark.parametrize("graphs", ["true", "false"])
def test_resume_is_exact_on_cuda_in_deterministic_mode(tmp_path: Path, graphs: str) -> None:
    cfg = lambda: cuda_config(deterministic=True, cuda_graphs=graphs)  # noqa: E731
    run(cfg(), tmp_path / "a")
    interrupted_then_resumed(cfg(), tmp_path / "b", StopAt(mid_epoch=2))
    assert_same_run(tmp_path / "a", tmp_path / "b")


@pytest.mark.slow
@pytest.mark.parametrize(("family", "scheduler", "trainer"), CASES[:3] + CASES[-2:],
                         ids=[f"{f}-{s}-{'-'.join(t)}" for f, s, t in CASES[:3] + CASES[-2:]])
def test_resume_with_graphs_is_exact_for_families_schedules_and_precisions(
        tmp_path: Path, family: str, scheduler: str, trainer: dict) -> None:
    cfg = lambda: on_cuda(cfg_for(FAMILIES[family], scheduler, **trainer), cuda_graphs="true")  # noqa: E731
    run(cfg(), tmp_path / "a")
    interrupted_then_resumed(cfg(), tmp_path / "b", StopAt(mid_epoch=2))
    assert_same_run(tmp_path / "a", tmp_path / "b")


# --- graphed steps against eager ones ---------------------------------------------------------------

OPTIMIZER_CASES = [  # the optimizers CASES (Adam throughout) leaves out, with weight decay and clipping
    (DenseAEConfig(dropout=0.1), "adamw", dict(gradient_clip_val=0.5)),
    (ConvAEConfig(batch_norm=True), "sgd", dict(accumulate_grad_batches=2, precision="16-mixed")),
    (DenseAEConfig(), "rmsprop", dict(gradient_clip_val=0.05, gradient_clip_algorithm="value", precision="bf16-mixed")),
]


def graphed_and_eager(tmp_path: Path, cfg: Config) -> GraphedTrainStep:
    run(on_cuda(cfg, cuda_graphs="false"), tmp_path / "eager")
    step = StepOf()
    run(on_cuda(cfg, cuda_graphs="true"), tmp_path / "graphed", callbacks=[step])
    assert_close_runs(tmp_path / "eager", tmp_path / "graphed")
    assert_graphed(step.step)
    return step.step


@pytest.mark.parametrize(("family", "scheduler", "trainer"), CASES, ids=[f"{f}-{s}-{'-'.join(t)}" for f, s, t in CASES])
def test_graphed_steps_give_the_eager_losses_and_weights(tmp_path: Path, family: str, scheduler: str,
                                                         trainer: dict) -> None:
    # every family (noise, sparsity, the VAE's draws, dropout, batch norm), every schedule, accumulation
    # with short windows, both clipping modes, fp16 with its scaler and bf16
    graphed_and_eager(tmp_path, cfg_for(FAMILIES[family], scheduler, **trainer))


@pytest.mark.parametrize(("model", "optimizer", "trainer"), OPTIMIZER_CASES, ids=[c[1] for c in OPTIMIZER_CASES])
def test_every_optimizer_graphs_like_its_eager_step(tmp_path: Path, model: ModelConfig, optimizer: str,
                                                    trainer: dict) -> None:
    cfg = cfg_for(model, "cosine", **trainer)
    cfg.optimizer = choose("optimizer", optimizer, weight_decay=1e-3)
    graphed_and_eager(tmp_path, cfg)


def test_only_the_short_window_at_an_epochs_end_runs_eagerly(tmp_path: Path) -> None:
    # digits at batch 128: 1438 training samples = 11 full batches and one of 30, per epoch
    step = graphed_and_eager(tmp_path, cfg_for(DenseAEConfig(), "none", max_epochs=2))
    assert step.replays == 2 * 11


def test_image_folder_batches_reach_the_graph(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(90):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    cfg = Config(model=ConvAEConfig(channels=[8, 16]), optimizer=AdamConfig(lr=3e-3),
                 data=choose("data", "image_folder", path=str(tmp_path / "imgs"), image_size=12, batch_size=16,
                             num_workers=2),
                 trainer=TrainerConfig(max_epochs=3, deterministic=True),
                 outputs=OutputsConfig(plot_every=0, tensorboard=False))
    graphed_and_eager(tmp_path, cfg)


# --- when graphs stay off ---------------------------------------------------------------------------

def test_a_run_that_cannot_be_captured_trains_eagerly_with_one_logged_line(caplog: pytest.LogCaptureFixture) -> None:
    cfg = cuda_config(precision="16-mixed")
    cfg.optimizer = choose("optimizer", "rmsprop")
    with caplog.at_level(logging.INFO, logger="aetrain.train.graphs"):
        parts = build_parts(cfg)
    assert type(parts.step) is TrainStep
    assert [r.getMessage() for r in caplog.records if r.name == "aetrain.train.graphs"] == [
        "CUDA graphs off: trainer.precision=16-mixed with optimizer=rmsprop, which has no fused kernel: its "
        "GradScaler step reads the inf check on the host (use bf16-mixed, or adam, adamw or sgd)"]
    cfg.trainer.cuda_graphs = "true"
    with pytest.raises(ConfigError, match="trainer.cuda_graphs=true: this run's training step cannot be captured"):
        build_parts(cfg)


def test_a_capture_says_so_once_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="aetrain.train.graphs"):
        Engine(build_parts(cuda_config(max_epochs=2))).fit()
    assert [r.getMessage() for r in caplog.records if r.name == "aetrain.train.graphs"] == [
        "CUDA graphs on: each optimizer step of 1 micro-batch(es) of 128 replays one captured graph; shorter steps "
        "run eagerly"]


# --- torch.compile ----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "max-autotune-no-cudagraphs"])
def test_a_compiled_model_is_captured_in_the_step_graph(tmp_path: Path, mode: str) -> None:
    cfg = cfg_for(ConvAEConfig(), "none", max_epochs=2, compile=True, compile_mode=mode)
    step = StepOf()
    run(on_cuda(cfg, cuda_graphs="true"), tmp_path / "compiled", callbacks=[step])
    assert_graphed(step.step)
    run(on_cuda(cfg_for(ConvAEConfig(), "none", max_epochs=2), cuda_graphs="false"), tmp_path / "eager")
    # inductor fuses and reorders float sums: the losses agree to 1%, as on the CPU
    compiled, eager = (without_timing(metrics_rows(tmp_path / name)) for name in ("compiled", "eager"))
    for a, b in zip(compiled, eager):
        assert float(a["val/loss"]) == pytest.approx(float(b["val/loss"]), rel=1e-2)


@pytest.mark.slow
def test_a_compile_mode_with_its_own_cuda_graphs_keeps_the_step_eager(tmp_path: Path) -> None:
    cfg = on_cuda(cfg_for(DenseAEConfig(), "none", max_epochs=2, compile=True, compile_mode="reduce-overhead"))
    step = StepOf()
    run(cfg, tmp_path / "run", callbacks=[step])
    assert type(step.step) is TrainStep


# --- the benchmark ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_benchmark_smoke_mode_on_cuda_has_the_graph_ceiling(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "throughput.py"), "--smoke",
                           "--device", "cuda", "--batch", "64,256", "--skip", "lightning", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["results"]
    entries = ["limit", "graph", "aetrain", "aetrain-steps", "dataloader"]
    assert [(r["workload"], r["batch"], r["entry"]) for r in rows] == [
        (w, b, e) for w in ("dense", "conv") for b in (64, 256) for e in entries]
    assert all(r["samples_per_s"] > 0 for r in rows)


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
