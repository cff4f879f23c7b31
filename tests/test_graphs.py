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

    Modes that make it behave like a CUDA graph, or like a broken one, where plain re-running cannot:
    - `recorded`: a replay uses the optimizer's host settings (every param-group entry but the parameters
      and the learning rate: betas, momentum, weight decay...) as they were at the capture, as the
      captured kernels do, and refuses to see later changes;
    - `stale_rates`: a replay reads the learning rates the device tensors held at the capture (a graph
      that kept its rate on the host);
    - `frozen_noise`: every replay starts from the generator state of the capture (random numbers drawn
      once);
    - `fail_capture`: the capture fails as torch's does when its body raised this error: with "operation
      failed due to a previous error during capture", raised over it;
    - `stuck_generator`: after a failed capture no random number can be drawn on the "device" (torch
      releases whose generator keeps its capture flag);
    - `headroom`: (pool bytes, free bytes) reported after a capture.
    """

    device = torch.device("cpu")

    def __init__(self, replay: Callable[[Callable[[], None]], None] = lambda body: body(), *, recorded: bool = False,
                 stale_rates: bool = False, frozen_noise: bool = False, fail_capture: Exception | None = None,
                 stuck_generator: bool = False, headroom: tuple[int, int] | None = None) -> None:
        self.run_body = replay  # how a replay runs the captured body (tests break it on purpose)
        self.recorded, self.stale_rates, self.frozen_noise = recorded, stale_rates, frozen_noise
        self.fail_capture, self.stuck_generator, self.room = fail_capture, stuck_generator, headroom
        self.captures = 0
        self.released = 0  # graphs given back
        self.draws = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.rates: list[torch.Tensor] = []

    def side_stream(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def capture(self, body: Callable[[], None]) -> Any:
        self.captures += 1
        if self.fail_capture is not None:
            try:
                raise self.fail_capture
            except Exception:  # torch.cuda.graph's exit raises this over the error its body raised (its context)
                raise RuntimeError("CUDA error: operation failed due to a previous error during capture")  # noqa: B904
        assert self.optimizer is not None
        groups = self.optimizer.param_groups
        settings = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in groups]
        rates = [r.clone() for r in self.rates]
        rng = self.rng_state()
        backend = self

        class Replay:
            def replay(self) -> None:
                live = [{k: g[k] for k in s} for g, s in zip(groups, settings)]
                live_rates = [r.clone() for r in backend.rates]
                if backend.recorded:
                    for g, s in zip(groups, settings):
                        g.update(s)
                if backend.stale_rates:
                    for r, then in zip(backend.rates, rates):
                        r.copy_(then)
                if backend.frozen_noise:
                    backend.set_rng_state(rng)
                try:
                    backend.run_body(body)
                finally:
                    for g, s in zip(groups, live):
                        g.update(s)
                    for r, now in zip(backend.rates, live_rates):
                        r.copy_(now)

        return Replay()

    def release(self, graph: Any) -> None:
        self.released += 1

    def headroom(self) -> tuple[int, int] | None:
        return self.room

    def check_generator(self) -> None:
        self.draws += 1
        if self.stuck_generator:
            raise RuntimeError("Offset increment outside graph capture encountered unexpectedly.")
        torch.rand(1)

    def lr_tensor(self, value: float) -> torch.Tensor:
        self.rates.append(torch.tensor(value, dtype=torch.float64))
        return self.rates[-1]

    def prepare(self, optimizer: torch.optim.Optimizer) -> None:
        """As CudaGraphs.prepare, where torch allows it on a CPU: the fused Adam/AdamW kernels ignore `capturable`
        (RMSprop refuses it off the GPU), so what the flag does to checkpoints shows here too."""
        self.optimizer, self.rates = optimizer, []
        for group in optimizer.param_groups:
            if "capturable" in group and group.get("fused"):
                group["capturable"] = True

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
    assert blockers(scheduler=choose("scheduler", "onecycle")) == [
        "scheduler=onecycle with scheduler.cycle_momentum=true sets the optimizer's momentum (beta1) every step, which "
        "a captured step would keep at its value at capture (scheduler.cycle_momentum=false keeps the step graphed)"]
    assert blockers(scheduler=choose("scheduler", "onecycle", cycle_momentum=False)) == []  # the rate alone: graphed
    assert blockers(scheduler=choose("scheduler", "cosine", warmup_steps=4)) == \
        blockers(scheduler=choose("scheduler", "plateau")) == []  # a warm-up shorter than the run (#22.26)

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
    sampled = [(tmp_path / name / "diagnostics.csv").read_text() for name in ("graphed", "eager")]
    assert sampled[0] == sampled[1]
    # digits at batch 128: 11 full batches and a short one per epoch; one capture, the full ones replayed but for
    # the doctor's sampled steps 0, 10 and 20, which run eagerly
    assert graphed.backend.captures == 1 and graphed.step.replays == 2 * 11 - 3 and graphed.step.off is None
    # the capture set the optimizer's capturable flags and put them back: its checkpoints are an eager run's
    saved = [torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
             for name in ("eager", "graphed")]
    assert saved[0] == saved[1] and saved[1][0]["capturable"] is False
    assert graphed.step.optimizer.param_groups[0]["capturable"] is False


@pytest.mark.slow
@pytest.mark.parametrize(("family", "scheduler", "trainer"), CASES, ids=[f"{f}-{s}-{'-'.join(t)}" for f, s, t in CASES])
def test_every_family_schedule_clipping_accumulation_and_precision_graphs_exactly(
        tmp_path: Path, straight_run, family: str, scheduler: str, trainer: dict) -> None:
    eager = straight_run(family, scheduler, trainer)  # the eager run test_resume compares against, trained once
    graphed = Graphed(PythonGraphs(recorded=True), strict=False)  # replays keep the host settings of the capture
    run(cfg_for(FAMILIES[family], scheduler, **trainer), tmp_path / "graphed", callbacks=[graphed])
    assert_same_run(eager, tmp_path / "graphed")
    assert graphed.step.replays > 0
    if scheduler == "onecycle":  # its cycled beta1 ends the graph at the first replay after it changed
        assert graphed.step.off is not None and graphed.step.off.startswith("the optimizer's betas changed from (")
    else:
        assert graphed.step.off is None


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


# --- values a graph keeps from its capture: the recorded-host-values stand-in ---------------------------

def graph_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "aetrain.train.graphs"]


def one_epoch() -> Config:
    return small(max_epochs=1)


def dense_cosine() -> Config:  # a per-step schedule of the learning rate alone
    return cfg_for(FAMILIES["dense"], "cosine", max_epochs=1, deterministic=False)


def denoising_cosine() -> Config:  # the same, with noise drawn at every step
    return cfg_for(FAMILIES["denoising"], "cosine", max_epochs=1, deterministic=False)


Eager = Callable[[Callable[[], Config]], Path]  # the `eager` fixture


@pytest.fixture(scope="module")
def eager(tmp_path_factory: pytest.TempPathFactory) -> Eager:
    """`eager(config)`: the run dir of an eager run of `config()`, trained once per module (per xdist worker)."""
    runs: dict[str, Path] = {}

    def trained(config: Callable[[], Config]) -> Path:
        if config.__name__ not in runs:
            runs[config.__name__] = tmp_path_factory.mktemp("eager") / config.__name__
            run(config(), runs[config.__name__])
        return runs[config.__name__]

    return trained


def test_onecycles_cycled_momentum_ends_a_graph_that_keeps_its_host_values_in_one_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # OneCycleLR rewrites Adam's beta1 every step; a captured fused kernel keeps the float it read at the capture,
    # so replaying the graph after that would train with a frozen momentum (the numbers would differ)
    def cfg() -> Config:
        return cfg_for(FAMILIES["dense"], "onecycle", max_epochs=1, deterministic=False)

    run(cfg(), tmp_path / "eager")
    graphed = Graphed(PythonGraphs(recorded=True), strict=False)
    with caplog.at_level(logging.WARNING, logger="aetrain.train.graphs"):
        run(cfg(), tmp_path / "graphed", callbacks=[graphed])
    assert_same_run(tmp_path / "eager", tmp_path / "graphed")
    (line,) = graph_lines(caplog)
    assert line.startswith("CUDA graphs off: the optimizer's betas changed from (0.9") and \
        line.endswith("after the capture, and a captured step keeps the value it had then; training eagerly"), line
    # step 0 is the doctor's (eager), step 1 is captured and replayed, and beta1 has moved on by step 2
    assert graphed.step.replays == 1 and graphed.backend.released == 1


class SetWeightDecay(Callback):
    """Changes the optimizer's weight decay after `at` steps, as a user's callback (or a schedule) might."""

    def __init__(self, at: int, value: float) -> None:
        self.at, self.value = at, value

    def on_step(self, engine: Engine) -> None:
        if engine.state.step == self.at:
            for group in engine.parts.optimizer.param_groups:
                group["weight_decay"] = self.value


def test_any_optimizer_setting_changed_after_the_capture_ends_the_graph_and_a_learning_rate_schedule_does_not(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, eager: Eager) -> None:
    run(small(max_epochs=1), tmp_path / "eager", callbacks=[SetWeightDecay(5, 1e-2)])
    graphed = Graphed(PythonGraphs(recorded=True), strict=False)
    with caplog.at_level(logging.WARNING, logger="aetrain.train.graphs"):
        run(small(max_epochs=1), tmp_path / "graphed", callbacks=[SetWeightDecay(5, 1e-2), graphed])
    assert_same_run(tmp_path / "eager", tmp_path / "graphed")
    assert graph_lines(caplog) == ["CUDA graphs off: the optimizer's weight_decay changed from 0.0 to 0.01 after the "
                                   "capture, and a captured step keeps the value it had then; training eagerly"]
    assert graphed.step.replays == 5 - 1  # steps 1 to 4; step 0 is the doctor's

    # a schedule of the learning rate alone (cosine, per step) reaches the graph through its device tensor
    graphed = Graphed(PythonGraphs(recorded=True))
    run(dense_cosine(), tmp_path / "cosine_graphed", callbacks=[graphed])
    assert_same_run(eager(dense_cosine), tmp_path / "cosine_graphed")
    assert graphed.step.off is None and graphed.step.replays == 11 - 2


# --- the self-check: two replays against two eager steps -------------------------------------------------

@pytest.mark.parametrize(("backend", "model", "says"), [
    # a graph that reads the rate it had at the capture: the check's second replay runs at another rate
    (dict(stale_rates=True), "dense", "at a second replay (learning rate times 0.5): the weights' update differs"),
    # random numbers drawn once: the second replay would draw the noise of the first
    (dict(frozen_noise=True), "denoising", "at a second replay (learning rate times 0.5): the random-number "
                                           "generator is not where the eager step leaves it"),
], ids=["stale_rate", "frozen_noise"])
def test_the_self_check_catches_what_one_replay_from_one_state_cannot(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, eager: Eager,
        backend: dict, model: str, says: str) -> None:
    cfg = dense_cosine if model == "dense" else denoising_cosine  # per step: a stale rate would train at the capture's
    graphed = Graphed(PythonGraphs(**backend), strict=False)
    with caplog.at_level(logging.WARNING, logger="aetrain.train.graphs"):
        run(cfg(), tmp_path / "graphed", callbacks=[graphed])
    assert_same_run(eager(cfg), tmp_path / "graphed")
    (line,) = graph_lines(caplog)
    assert line.startswith(f"CUDA graphs off: the captured step does not reproduce the eager step {says}"), line
    assert graphed.step.replays == 0 and graphed.backend.released == 1


def test_a_model_that_draws_random_numbers_draws_fresh_ones_at_every_replay(tmp_path: Path, eager: Eager) -> None:
    # the denoising model's noise comes from the generator the replays advance as eager steps do
    graphed = Graphed()
    run(denoising_cosine(), tmp_path / "graphed", callbacks=[graphed])
    assert_same_run(eager(denoising_cosine), tmp_path / "graphed")
    assert graphed.step.off is None and graphed.step.replays == 11 - 2


# --- a failed capture -----------------------------------------------------------------------------------

def test_a_failed_capture_logs_the_error_that_broke_it_and_trains_on_with_eager_numbers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, eager: Eager) -> None:
    broken = RuntimeError("CUDA error: operation not permitted when stream is capturing\nCUDA kernel errors might be "
                          "asynchronously reported at some other API call")
    graphed = Graphed(PythonGraphs(fail_capture=broken), strict=False)
    with caplog.at_level(logging.WARNING, logger="aetrain.train.graphs"):
        run(one_epoch(), tmp_path / "graphed", callbacks=[graphed])
    assert_same_run(eager(one_epoch), tmp_path / "graphed")  # the generator check's draw was undone too
    assert graph_lines(caplog) == ["CUDA graphs off: capturing the training step failed (RuntimeError: CUDA error: "
                                   "operation not permitted when stream is capturing); training eagerly"]
    assert graphed.backend.draws == 1 and graphed.step.replays == 0
    assert graphed.step.optimizer.param_groups[0]["capturable"] is False  # put back after the failure too


def test_a_failed_capture_that_leaves_the_generator_unusable_stops_the_run_in_one_line(tmp_path: Path) -> None:
    backend = PythonGraphs(fail_capture=RuntimeError("CUDA error: operation not permitted when stream is capturing"),
                           stuck_generator=True)
    with pytest.raises(ConfigError) as error:
        run(small(max_epochs=1), tmp_path / "graphed", callbacks=[Graphed(backend, strict=False)])
    message = str(error.value)
    assert message == ("trainer.cuda_graphs: capturing the training step failed (RuntimeError: CUDA error: operation "
                       "not permitted when stream is capturing), and after it cpu cannot draw random numbers any more "
                       "(RuntimeError: Offset increment outside graph capture encountered unexpectedly.), so this "
                       "run cannot go on. Run with trainer.cuda_graphs=false")


def test_an_error_surfacing_in_the_self_checks_reads_falls_back_like_a_failed_capture(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, eager: Eager, monkeypatch: pytest.MonkeyPatch) -> None:
    # a replay's device error is reported at the next host read: the self-check's comparison
    from aetrain.train import graphs

    def fail(self: Any, reference: Any) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(graphs.Outcome, "mismatch", fail)
    graphed = Graphed(strict=False)
    with caplog.at_level(logging.WARNING, logger="aetrain.train.graphs"):
        run(one_epoch(), tmp_path / "graphed", callbacks=[graphed])
    assert_same_run(eager(one_epoch), tmp_path / "graphed")
    assert graph_lines(caplog) == ["CUDA graphs off: capturing the training step failed (RuntimeError: CUDA error: an "
                                   "illegal memory access was encountered); training eagerly"]
    assert graphed.backend.released == 1 and graphed.step.replays == 0


# --- memory, checkpoints --------------------------------------------------------------------------------

def test_a_graph_whose_pool_leaves_too_little_for_the_eager_steps_is_given_back_in_one_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, eager: Eager) -> None:
    graphed = Graphed(PythonGraphs(headroom=(3 * 10**9, 2 * 10**9)), strict=False)
    with caplog.at_level(logging.WARNING, logger="aetrain.train.graphs"):
        run(one_epoch(), tmp_path / "graphed", callbacks=[graphed])
    assert_same_run(eager(one_epoch), tmp_path / "graphed")
    assert graph_lines(caplog) == [
        "CUDA graphs off: the captured step's private memory pool holds 3.00 GB and leaves 2.00 GB free on cpu, less "
        "than the steps that run eagerly beside it (the doctor's samples, an epoch's short last step) need; training "
        "eagerly"]
    assert graphed.backend.released == 1 and graphed.step.replays == 0


def test_a_checkpoint_that_saved_capturable_flags_resumes_on_the_cpu(tmp_path: Path) -> None:
    # graphed runs saved capturable=True in every checkpoint before the flags were put back after the capture;
    # torch's RMSprop refuses that on the CPU. Such a checkpoint, made here on purpose, resumes like any other
    def cfg() -> Config:
        return Config(data=DataConfig(batch_size=128), optimizer=choose("optimizer", "rmsprop"),
                      trainer=TrainerConfig(max_epochs=2, device="cpu"),
                      outputs=OutputsConfig(plot_every=0, tensorboard=False))

    run(cfg(), tmp_path / "straight")
    with pytest.raises(Interrupted):
        run(cfg(), tmp_path / "resumed", callbacks=[StopAt(mid_epoch=2)])
    last = tmp_path / "resumed" / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    for group in ckpt["optimizer"]["param_groups"]:
        group["capturable"] = True
    torch.save(ckpt, last)
    resumed = cfg()
    resumed.trainer.resume = str(tmp_path / "resumed")
    run(resumed, tmp_path / "resumed")
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    assert torch.load(last, weights_only=True)["optimizer"]["param_groups"][0]["capturable"] is False
