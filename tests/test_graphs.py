"""Whole-step CUDA graphs, the CPU side: the keys, the choice between graphed and eager steps, and
`GraphedTrainStep`'s own logic (staging, warm-up that leaves no trace, the self-check, the eager
short windows, learning rates from device tensors) run through a Python stand-in for the CUDA
graph, which re-runs the captured step on every replay. The CUDA path itself: tests/test_cuda.py.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from aetrain.commands.train import build_parts, run
from aetrain.config import AdamConfig, Config, DataConfig, OutputsConfig, TrainerConfig, VAEConfig
from aetrain.errors import ConfigError, Interrupted
from aetrain.train.engine import Callback, Engine
from aetrain.train.graphs import GraphedTrainStep, graph_blockers, graphs_policy
from aetrain.train.step import GradientProbe, TrainStep
from conftest import FAST, assert_same_run, choose
from test_resume import CASES, FAMILIES, StopAt, cfg_for


class PythonGraphs:
    """The CPU stand-in for `CudaGraphs`: a capture keeps the step's Python, a replay runs it again.

    Like a CUDA graph it computes nothing at capture time and writes the same static tensors on every
    replay; unlike one it re-reads everything, so it checks the logic around the graph, not torch's
    capture. Learning rates are float64 tensors: the CPU's fused Adam then rounds exactly as with floats.
    """

    device = torch.device("cpu")

    def __init__(self, replay: Callable[[Callable[[], None]], None] = lambda body: body()) -> None:
        self.run_body = replay  # how a replay runs the captured body (tests break it on purpose)
        self.captures = 0

    def side_stream(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def capture(self, body: Callable[[], None]) -> Any:
        self.captures += 1
        backend = self

        class Replay:
            def replay(self) -> None:
                backend.run_body(body)

        return Replay()

    def lr_tensor(self, value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.float64)

    def prepare(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def rng_state(self) -> Any:
        return torch.get_rng_state()

    def set_rng_state(self, state: Any) -> None:
        torch.set_rng_state(state)


class Graphed(Callback):
    """Puts the run's step into a `GraphedTrainStep` over `backend` before training (after any resume)."""

    def __init__(self, backend: Any = None, *, strict: bool = True) -> None:
        self.backend, self.strict = backend or PythonGraphs(), strict
        self.step: GraphedTrainStep | None = None

    def on_fit_start(self, engine: Engine) -> None:
        p = engine.parts
        self.step = GraphedTrainStep(p.step, self.backend, batch_size=p.data.train.plan.batch_size,
                                     accumulate=p.cfg.trainer.accumulate_grad_batches, strict=self.strict)
        p.step = self.step


def small(**trainer: object) -> Config:
    return Config(data=DataConfig(batch_size=128), optimizer=AdamConfig(lr=3e-3),
                  trainer=TrainerConfig(**{"max_epochs": 2, "device": "cpu", **trainer}),
                  outputs=OutputsConfig(plot_every=0, tensorboard=False))


# --- the keys and the choice ----------------------------------------------------------------------

def test_cuda_graphs_true_on_the_cpu_is_a_one_line_error_and_nothing_is_written(cli) -> None:
    result = cli(*FAST, "trainer.cuda_graphs=true")
    assert result.returncode == 2
    assert result.err == ("aetrain: error: trainer.cuda_graphs=true: this run's training step cannot be captured: "
                          "it trains on cpu (CUDA graphs need trainer.device=cuda). Use trainer.cuda_graphs=auto or "
                          "false\n")
    assert not result.run_dir.exists()


def test_cuda_graphs_auto_on_the_cpu_trains_eagerly_with_the_numbers_of_false(cli, tmp_path: Path) -> None:
    assert type(build_parts(small()).step) is TrainStep  # auto is the default
    auto = cli(*FAST, "model=denoising_ae", run_dir=tmp_path / "auto")
    off = cli(*FAST, "model=denoising_ae", "trainer.cuda_graphs=false", run_dir=tmp_path / "off")
    assert auto.returncode == off.returncode == 0
    assert "CUDA graphs" not in (auto.run_dir / "train.log").read_text()  # nothing to say on a CPU
    assert_same_run(auto.run_dir, off.run_dir)


@pytest.mark.parametrize(("args", "message"), [
    (["trainer.cuda_graphs=maybe"], "trainer.cuda_graphs='maybe' is not one of: auto, false, true"),
    (["trainer.compile=true", "trainer.compile_mode=fast"],
     "trainer.compile_mode='fast' is not one of: default, max-autotune, max-autotune-no-cudagraphs, reduce-overhead"),
    (["trainer.compile_mode=reduce-overhead"], "trainer.compile_mode='reduce-overhead' is used only with "
                                               "trainer.compile=true"),
])
def test_bad_graph_and_compile_keys_are_one_line_errors(cli, args: list[str], message: str) -> None:
    result = cli(*FAST, *args)
    assert result.returncode == 2 and result.err == f"aetrain: error: {message}\n"
    assert not result.run_dir.exists()


def test_cuda_graphs_takes_true_and_false_as_hydra_hands_them_over() -> None:
    assert graphs_policy("True").strict and graphs_policy(True).wanted  # `trainer.cuda_graphs=true` arrives as 'True'
    assert not graphs_policy("False").wanted and not graphs_policy("auto").strict


def test_blockers_name_every_reason_a_cuda_run_stays_eager() -> None:
    cuda = torch.device("cuda")  # only named: nothing runs there

    def blockers(sizes: list[int] | None = None, probe: GradientProbe | None = None, **sections: Any) -> list[str]:
        cfg = small()
        for name, value in sections.items():
            setattr(cfg, name, value)
        parts = build_parts(cfg)
        if probe is not None:
            parts.step.probe = probe
        return graph_blockers(cfg, cuda, parts.step, sizes or parts.data.train.plan.sizes)

    assert blockers() == []
    assert blockers(optimizer=choose("optimizer", "sgd")) == []
    assert blockers(trainer=TrainerConfig(device="cpu", precision="bf16-mixed", accumulate_grad_batches=4)) == []
    on_cpu = graph_blockers(small(), torch.device("cpu"), build_parts(small()).step, [128])
    assert on_cpu == ["it trains on cpu (CUDA graphs need trainer.device=cuda)"]
    assert "has no fused kernel" in blockers(optimizer=choose("optimizer", "rmsprop"),
                                             trainer=TrainerConfig(device="cpu", precision="16-mixed"))[0]
    assert blockers(optimizer=choose("optimizer", "rmsprop")) == []  # fp32 and bf16: capturable RMSprop is fine
    assert blockers(trainer=TrainerConfig(device="cpu", on_nonfinite="skip")) == [
        "trainer.on_nonfinite=skip reads every step's gradient norm on the host"]
    assert blockers(trainer=TrainerConfig(device="cpu", compile=True, compile_mode="reduce-overhead")) == [
        "trainer.compile_mode=reduce-overhead captures CUDA graphs of its own"]

    class Diagnostics(GradientProbe):
        sampling = True

    assert blockers(probe=Diagnostics()) == []  # the doctor's sampled steps run eagerly, the others replay
    assert blockers(sizes=[128, 128, 30], trainer=TrainerConfig(device="cpu", accumulate_grad_batches=3)) == [
        "no optimizer step of an epoch has 3 full batches of data.batch_size=128"]


# --- GraphedTrainStep's logic, with the Python stand-in ---------------------------------------------

def test_a_graphed_run_gives_the_eager_run_bit_for_bit_and_replays_the_regular_steps(tmp_path: Path) -> None:
    run(small(), tmp_path / "eager")
    graphed = Graphed()
    run(small(), tmp_path / "graphed", callbacks=[graphed])
    assert_same_run(tmp_path / "eager", tmp_path / "graphed")
    # the training doctor (on by default) sampled the same steps and measured the same numbers
    assert (tmp_path / "graphed" / "diagnostics.csv").read_text() == (tmp_path / "eager" / "diagnostics.csv").read_text()
    # digits at batch 128: 11 full batches and a short one per epoch; one capture, the full ones replayed but for
    # the doctor's sampled steps 0, 10 and 20, which run eagerly
    assert graphed.backend.captures == 1 and graphed.step.replays == 2 * 11 - 3 and graphed.step.off is None


@pytest.mark.slow
@pytest.mark.parametrize(("family", "scheduler", "trainer"), CASES, ids=[f"{f}-{s}-{'-'.join(t)}" for f, s, t in CASES])
def test_every_family_schedule_clipping_accumulation_and_precision_graphs_exactly(
        tmp_path: Path, family: str, scheduler: str, trainer: dict) -> None:
    run(cfg_for(FAMILIES[family], scheduler, **trainer), tmp_path / "eager")
    graphed = Graphed()
    run(cfg_for(FAMILIES[family], scheduler, **trainer), tmp_path / "graphed", callbacks=[graphed])
    assert_same_run(tmp_path / "eager", tmp_path / "graphed")
    assert graphed.step.replays > 0 and graphed.step.off is None


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "rmsprop"])
def test_every_optimizer_graphs_exactly_from_a_fresh_state(tmp_path: Path, optimizer: str) -> None:
    # the capture comes at the first step, so the state warm-up created is put back as zeros: this
    # checks that zeros are what each optimizer's first step would have created
    def cfg() -> Config:
        return Config(data=DataConfig(batch_size=128), optimizer=choose("optimizer", optimizer, weight_decay=1e-3),
                      trainer=TrainerConfig(max_epochs=1, device="cpu"),
                      outputs=OutputsConfig(plot_every=0, tensorboard=False))

    run(cfg(), tmp_path / "eager")
    graphed = Graphed()
    run(cfg(), tmp_path / "graphed", callbacks=[graphed])
    assert_same_run(tmp_path / "eager", tmp_path / "graphed")
    assert graphed.step.replays == 11 - 2  # steps 0 and 10: the doctor's, eager


def test_a_resumed_graphed_run_is_bit_identical_to_the_uninterrupted_one(tmp_path: Path) -> None:
    def cfg() -> Config:  # the VAE (its draws, its KL warm-up), a per-step schedule, accumulation
        return cfg_for(VAEConfig(kl_warmup_epochs=1.5), "cosine", accumulate_grad_batches=2, max_epochs=2)

    run(cfg(), tmp_path / "straight", callbacks=[Graphed()])
    resumed = cfg()
    with pytest.raises(Interrupted):
        run(resumed, tmp_path / "resumed", callbacks=[StopAt(mid_epoch=2), Graphed()])
    resumed.trainer.resume = str(tmp_path / "resumed")
    graphed = Graphed()
    run(resumed, tmp_path / "resumed", callbacks=[graphed])
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    assert graphed.backend.captures == 1 and graphed.step.replays > 0


def twice(body: Callable[[], None]) -> None:
    body()
    body()  # a "graph" that takes two steps per replay: what a capture bug could look like


def failing_in_the_scaler_step(body: Callable[[], None]) -> None:
    """A replay that fails halfway, after the GradScaler unscaled (what a capture error looks like)."""
    original = torch.amp.GradScaler.step

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    torch.amp.GradScaler.step = fail  # type: ignore[method-assign]
    try:
        body()
    finally:
        torch.amp.GradScaler.step = original  # type: ignore[method-assign]


def test_a_graph_that_does_not_reproduce_the_eager_step_is_dropped_with_one_logged_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run(small(), tmp_path / "eager")
    graphed = Graphed(PythonGraphs(replay=twice), strict=False)
    with caplog.at_level(logging.WARNING, logger="aetrain.train.graphs"):
        run(small(), tmp_path / "graphed", callbacks=[graphed])
    assert_same_run(tmp_path / "eager", tmp_path / "graphed")  # the state before the capture was put back
    lines = [r.getMessage() for r in caplog.records if r.name == "aetrain.train.graphs"]
    assert len(lines) == 1 and lines[0].startswith("CUDA graphs off: the captured step does not reproduce the eager "
                                                   "step: ") and lines[0].endswith("; training eagerly")
    assert graphed.step.replays == 0 and graphed.backend.captures == 1

    strict = Graphed(PythonGraphs(replay=twice), strict=True)
    with pytest.raises(ConfigError, match=r"^trainer.cuda_graphs=true: the captured step does not reproduce"):
        run(small(), tmp_path / "strict", callbacks=[strict])


def test_a_capture_that_fails_halfway_leaves_one_logged_line_and_eager_numbers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # fp16: the failure comes after the GradScaler unscaled, whose stage must not leak into the next step
    run(small(precision="16-mixed"), tmp_path / "eager")
    graphed = Graphed(PythonGraphs(replay=failing_in_the_scaler_step), strict=False)
    with caplog.at_level(logging.WARNING, logger="aetrain.train.graphs"):
        run(small(precision="16-mixed"), tmp_path / "graphed", callbacks=[graphed])
    assert_same_run(tmp_path / "eager", tmp_path / "graphed")
    assert [r.getMessage() for r in caplog.records if r.name == "aetrain.train.graphs"] == [
        "CUDA graphs off: capturing the training step failed (RuntimeError: operation not permitted when stream is "
        "capturing); training eagerly"]
    assert graphed.step.replays == 0


def test_a_probe_attached_to_a_graphed_step_sees_its_sampled_steps_and_counts_every_step(tmp_path: Path) -> None:
    measured = []

    class EveryFourth(GradientProbe):
        def __init__(self) -> None:
            self.steps = 0

        @property
        def sampling(self) -> bool:
            return self.steps % 4 == 0

        def before_update(self, step: TrainStep) -> None:  # eager steps only: the graph runs no Python
            if self.sampling:
                measured.append(self.steps)

        def after_update(self, step: TrainStep) -> None:
            self.steps += 1

    probe = EveryFourth()

    class Attach(Callback):
        def on_fit_start(self, engine: Engine) -> None:
            engine.parts.step.probe = probe

    graphed = Graphed(strict=True)
    run(small(max_epochs=1), tmp_path / "run", callbacks=[graphed, Attach()])
    assert measured == [0, 4, 8] and probe.steps == 12  # 12 optimizer steps, the warm-up and capture not among them
    assert graphed.step.replays == 11 - 3 and graphed.step.off is None  # the short 12th step is eager anyway
    assert graphed.step.optimizer is graphed.step.eager.optimizer  # the eager step's parts read through
