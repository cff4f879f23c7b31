"""CUDA paths: mixed precision, device-resident data, a step without host syncs, and whole-step CUDA
graphs (trainer.cuda_graphs) against eager steps. Skipped without a GPU; the CPU side of the graphs
is tests/test_graphs.py."""

from __future__ import annotations

import copy
import csv
import gc
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aetrain.commands.train import build_parts, run
from aetrain.config import (
    AdamConfig,
    Config,
    ConvAEConfig,
    DataConfig,
    DenoisingAEConfig,
    DenseAEConfig,
    DiagnosticsConfig,
    ModelConfig,
    NoiseConfig,
    OutputsConfig,
    TrainerConfig,
)
from aetrain.errors import ConfigError, Interrupted
from aetrain.train.engine import Callback, Engine
from aetrain.train.graphs import GraphedTrainStep, Snapshot
from aetrain.train.step import TrainStep
from conftest import assert_same_run, choose, last_weights, metrics_rows, without_timing
from test_resume import CASES, FAMILIES, StopAt, cfg_for, interrupted_then_resumed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cuda_config(**trainer: object) -> Config:
    return Config(model=ConvAEConfig(), data=DataConfig(batch_size=128),
                  trainer=TrainerConfig(**{"max_epochs": 3, "device": "cuda", **trainer}))


def on_cuda(cfg: Config, **trainer: object) -> Config:
    """`cfg` on the GPU, with `trainer` keys set. scheduler=onecycle cycles the optimizer's momentum every step, which
    keeps a run eager (see test_onecycles_cycled_momentum_keeps_a_run_eager): here it keeps the momentum, so the
    graphed runs of the CASES cover its learning-rate schedule."""
    cfg = copy.deepcopy(cfg)
    cfg.trainer.device = "cuda"
    for key, value in trainer.items():
        setattr(cfg.trainer, key, value)
    if hasattr(cfg.scheduler, "cycle_momentum"):
        cfg.scheduler.cycle_momentum = False
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


def graph_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "aetrain.train.graphs"]


class Syncing:
    """An objective that reads its loss on the host (`.item()`) every call: a host sync, which no capture can hold."""

    def __init__(self, objective: Any) -> None:
        self.objective = objective

    def __call__(self, net: torch.nn.Module, x: torch.Tensor) -> Any:
        terms = self.objective(net, x)
        terms["loss"].item()
        return terms

    def __getattr__(self, name: str) -> Any:
        return getattr(self.objective, name)


class SyncingObjective(Callback):
    """Makes the run's training step read its loss on the host: a real capture then fails (the numbers are those of
    the plain objective: reading a value changes nothing)."""

    def on_fit_start(self, engine: Engine) -> None:
        step = getattr(engine.parts.step, "eager", engine.parts.step)
        step.objective = Syncing(step.objective)


class Streams(Callback):
    """Whether each optimizer step ended on the device's default stream."""

    def __init__(self) -> None:
        self.on_default: set[bool] = set()

    def on_step(self, engine: Engine) -> None:
        self.on_default.add(torch.cuda.current_stream() == torch.cuda.default_stream())


class PeakReserved(Callback):
    """The most memory the caching allocator reserved during training (read after every step: the engine resets
    the peak at each epoch's end)."""

    def __init__(self) -> None:
        self.peak = 0

    def on_fit_start(self, engine: Engine) -> None:
        torch.cuda.reset_peak_memory_stats()

    def on_step(self, engine: Engine) -> None:
        self.peak = max(self.peak, torch.cuda.max_memory_reserved())


def settled_memory() -> tuple[int, int]:
    """(allocated, reserved) bytes once everything freed is given back."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(), torch.cuda.memory_reserved()


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


def test_only_the_short_window_and_the_doctors_samples_run_eagerly(tmp_path: Path) -> None:
    # digits at batch 128: 1438 training samples = 11 full batches and one of 30, per epoch; the training doctor
    # (on by default) measures steps 0, 10 and 20, eagerly. Those eager steps run with the optimizer's own
    # capturable flag (put back after the capture): torch warns when a capturable optimizer steps uncaptured
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step = graphed_and_eager(tmp_path, cfg_for(DenseAEConfig(), "none", max_epochs=2))
    assert step.replays == 2 * 11 - 3
    assert not [str(w.message) for w in caught if "capturable" in str(w.message)]
    assert all(group["capturable"] is False for group in step.optimizer.param_groups)
    saved = torch.load(tmp_path / "graphed" / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    assert saved["param_groups"] == torch.load(tmp_path / "eager" / "checkpoints" / "last.pt",
                                               weights_only=True)["optimizer"]["param_groups"]


def test_without_the_doctor_every_full_step_replays_the_graph(tmp_path: Path) -> None:
    cfg = cfg_for(DenseAEConfig(dropout=0.1), "cosine", max_epochs=2)
    cfg.diagnostics = DiagnosticsConfig(enabled=False)
    step = graphed_and_eager(tmp_path, cfg)
    assert step.replays == 2 * 11  # the capture comes at step 0, which replays too


def test_a_conv_model_in_nchw_graphs_like_its_eager_step(tmp_path: Path) -> None:
    graphed_and_eager(tmp_path, cfg_for(ConvAEConfig(batch_norm=True, dropout=0.1), "cosine", channels_last=False))


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
    import re

    with caplog.at_level(logging.INFO, logger="aetrain.train.graphs"):
        Engine(build_parts(cuda_config(max_epochs=2))).fit()
    (line,) = graph_lines(caplog)
    assert re.fullmatch(r"CUDA graphs on: each optimizer step of 1 micro-batch\(es\) of 128 replays one captured "
                        r"graph; shorter steps run eagerly \(warm-up and capture \d+\.\d\d s, self-check "
                        r"\d+\.\d\d s\)", line), line


# --- what a capture keeps, a failed capture, checkpoints, memory ----------------------------------------

def test_onecycles_cycled_momentum_keeps_a_run_eager(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # OneCycleLR rewrites beta1 every step; a captured fused Adam keeps the float it read at the capture
    cfg = cfg_for(DenseAEConfig(), "onecycle", max_epochs=2)  # cycle_momentum=true, the default
    cfg.trainer.device = "cuda"
    step = StepOf()
    with caplog.at_level(logging.INFO, logger="aetrain.train.graphs"):
        run(cfg, tmp_path / "auto", callbacks=[step])
    assert type(step.step) is TrainStep
    assert graph_lines(caplog) == [
        "CUDA graphs off: scheduler=onecycle with scheduler.cycle_momentum=true sets the optimizer's momentum (beta1) "
        "every step, which a captured step would keep at its value at capture (scheduler.cycle_momentum=false keeps "
        "the step graphed)"]
    cfg.trainer.cuda_graphs = "true"
    with pytest.raises(ConfigError, match="scheduler.cycle_momentum=true"):
        run(cfg, tmp_path / "strict")
    assert not (tmp_path / "strict").exists()


def test_lr_find_replays_its_steps_and_suggests_the_eager_rate(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from aetrain.commands import lr_find

    def cfg(graphs: str) -> Config:
        return Config(trainer=TrainerConfig(device="cuda", cuda_graphs=graphs),
                      outputs=OutputsConfig(plot_every=0, tensorboard=False))

    find = lr_find.LRFindConfig()
    eager = lr_find.run(cfg("false"), find, tmp_path / "eager")
    with caplog.at_level(logging.INFO, logger="aetrain.train.graphs"):
        graphed = lr_find.run(cfg("true"), find, tmp_path / "graphed")
    (line,) = graph_lines(caplog)
    assert line.startswith("CUDA graphs on: "), line
    # a graphed step computes its loss in update(): read before it, every loss would be 0 or a step late
    assert graphed.losses[:20] == pytest.approx(eager.losses[:20], rel=1e-3)
    assert graphed.suggestion is not None and eager.suggestion is not None
    grid = math.log(find.max_lr / find.min_lr) / (find.num_steps - 1)  # log of one step of the rate
    assert abs(math.log(graphed.suggestion / eager.suggestion)) <= 2 * grid + 1e-9, (graphed.suggestion,
                                                                                      eager.suggestion)


def test_a_capture_broken_by_a_host_sync_falls_back_to_eager_steps_on_the_default_stream(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def cfg(graphs: str) -> Config:  # noise drawn every step: the generator must come out of the failure usable
        model = DenoisingAEConfig(backbone="conv", noise=NoiseConfig("salt_pepper", 0.2))
        return on_cuda(cfg_for(model, "cosine", max_epochs=2), cuda_graphs=graphs)

    run(cfg("false"), tmp_path / "eager", callbacks=[SyncingObjective()])
    streams, step = Streams(), StepOf()
    with caplog.at_level(logging.WARNING, logger="aetrain.train.graphs"):
        run(cfg("auto"), tmp_path / "graphed", callbacks=[SyncingObjective(), streams, step])
    (line,) = graph_lines(caplog)
    assert line.startswith("CUDA graphs off: capturing the training step failed (") and \
        line.endswith("; training eagerly"), line
    assert "previous error during capture" not in line, line  # the error that broke the capture, not torch's over it
    assert isinstance(step.step, GraphedTrainStep) and step.step.replays == 0
    assert streams.on_default == {True} and torch.cuda.current_stream() == torch.cuda.default_stream()
    assert_same_run(tmp_path / "eager", tmp_path / "graphed")  # deterministic kernels: exactly the eager numbers
    torch.rand(1, device="cuda")  # the generator draws outside a capture
    with pytest.raises(ConfigError, match=r"^trainer.cuda_graphs=true: capturing the training step failed \("):
        run(cfg("true"), tmp_path / "strict", callbacks=[SyncingObjective()])


def test_a_graphed_runs_checkpoint_resumes_on_the_cpu_and_with_graphs_off(tmp_path: Path) -> None:
    # RMSprop: a checkpoint that kept capturable=True would hold step counts torch refuses to step on the CPU
    def cfg(graphs: str) -> Config:
        c = on_cuda(cfg_for(DenseAEConfig(dropout=0.1), "cosine", max_epochs=2), cuda_graphs=graphs)
        c.optimizer = choose("optimizer", "rmsprop")
        return c

    run(cfg("true"), tmp_path / "straight")
    step = StepOf()
    with pytest.raises(Interrupted):
        run(cfg("true"), tmp_path / "graphed", callbacks=[StopAt(mid_epoch=2), step])
    assert_graphed(step.step)
    last = tmp_path / "graphed" / "checkpoints" / "last.pt"
    assert all(g["capturable"] is False for g in torch.load(last, weights_only=True)["optimizer"]["param_groups"])
    on_cpu = cfg("auto")
    on_cpu.trainer.device, on_cpu.trainer.resume = "cpu", str(last)
    result = run(on_cpu, tmp_path / "on_cpu")
    assert result["epochs"] == 2 and math.isfinite(result["best_val_loss"])
    graphs_off = cfg("false")
    graphs_off.trainer.resume = str(last)
    run(graphs_off, tmp_path / "graphs_off")
    assert_close_runs(tmp_path / "straight", tmp_path / "graphs_off")


def test_replays_draw_fresh_noise_and_a_replay_is_the_eager_step_from_the_same_generator_state() -> None:
    cfg = cuda_config(max_epochs=1, cuda_graphs="true", deterministic=True)
    cfg.model = DenoisingAEConfig(backbone="conv", noise=NoiseConfig("gaussian", 0.3))
    cfg.diagnostics = DiagnosticsConfig(enabled=False)
    parts = build_parts(cfg)
    step = parts.step
    assert isinstance(step, GraphedTrainStep)
    x = next(parts.data.train.epoch(0)).clone()  # (128, 1, 8, 8): the same input for every step below
    parts.model.train()

    def graphed() -> tuple[torch.Tensor, list[torch.Tensor]]:
        step.begin(0.5)
        terms = step.forward_backward(x, 1.0)
        step.update()
        return torch.stack([terms[n] for n in step.names]).clone(), [p.detach().clone() for p in step.params]

    graphed()  # the first step: captured and checked, then replayed
    assert_graphed(step)
    start = Snapshot(step.eager, step.backend)  # weights, optimizer and GradScaler state, RNG states
    weights = [p.detach().clone() for p in step.params]
    terms, after = graphed()
    drawn = step.backend.rng_state()
    start.restore()
    again, after_again = graphed()
    assert torch.equal(again, terms) and all(map(torch.equal, after_again, after))  # the same state: the same step
    start.restore()
    step.backend.set_rng_state(drawn)  # the same weights, the generator where the first replay left it
    fresh, _ = graphed()
    assert not torch.equal(fresh, terms)  # a replay draws new noise
    start.restore()
    step.eager.begin(0.5)
    eager = step.eager.forward_backward(x, 1.0)
    eager_terms = torch.stack([eager[n].detach() for n in step.names])
    step.eager.update()
    torch.testing.assert_close(eager_terms, terms, rtol=1e-5, atol=1e-7)  # the same noise as the replay
    for w, a, e in zip(weights, after, step.params):  # the update, to the rounding of a float32 learning rate
        assert (e.detach() - a).norm() <= 1e-2 * (a - w).norm() + 1e-7


def test_a_graphed_runs_memory_is_at_most_an_eager_runs_and_its_pool(tmp_path: Path) -> None:
    cfg = cfg_for(ConvAEConfig(), "cosine", max_epochs=2)
    peaks, steps = {}, {}
    for graphs in ("false", "true"):
        settled_memory()
        peak, step = PeakReserved(), StepOf()
        run(on_cuda(cfg, cuda_graphs=graphs), tmp_path / graphs, callbacks=[peak, step])
        peaks[graphs], steps[graphs] = peak.peak, step.step
    assert_graphed(steps["true"])
    pool = steps["true"].backend.pool_bytes
    # the graph's pool holds one step's activations and gradients; beside it the warm-up's on the side stream,
    # the eager steps', the snapshot of the state and the side stream's library workspaces
    assert 0 < pool and peaks["true"] <= 3 * peaks["false"] + 128 * 2**20, (peaks, pool)


def test_runs_one_after_another_in_a_process_leave_no_memory_behind(tmp_path: Path) -> None:
    # a sweep in one process: graphed runs and runs whose capture fails, in turn
    cfg = on_cuda(cfg_for(DenseAEConfig(dropout=0.1), "cosine", max_epochs=1), cuda_graphs="auto")
    settled = []
    for i in range(5):
        step = StepOf()
        run(copy.deepcopy(cfg), tmp_path / str(i), callbacks=[step, *([SyncingObjective()] if i % 2 else [])])
        assert (step.step.off is None) == (i % 2 == 0), step.step.off
        del step
        settled.append(settled_memory())
    allocated, reserved = zip(*settled)
    assert allocated[4] <= allocated[2] and allocated[3] <= allocated[1], allocated
    assert reserved[4] <= reserved[2] and reserved[3] <= reserved[1], reserved  # a failed capture's pool is given back


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
