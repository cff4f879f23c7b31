"""The training loop: every model, precision, schedule and regulariser runs through `Engine.fit`.

The variation lives in objects built once by `aetrain.commands.train` (the objectives, the
`TrainStep` with its precision and clipping, the `Schedule`, the non-finite policy); the loop
only calls them. Loss terms are named by the objective and written to a device buffer that is
read back once per logging interval and per epoch, so the step itself never waits on the host.
Output (metrics, checkpoints, console, images) hangs off `Callback`s.

Counters live in `TrainState` and change only here: an optimizer step advances `step` and
`step_in_epoch`; an epoch's end advances `epoch` and resets `step_in_epoch`. A checkpoint taken
between any two optimizer steps therefore describes a point the loop can continue from exactly.
`Engine.history` holds the record of every finished epoch (on resume, the earlier ones too):
callbacks read it there, never from each other.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from aetrain.config import Config
from aetrain.data import Data
from aetrain.errors import DivergenceError, Interrupted
from aetrain.models import Autoencoder, Gallery, Objective, Terms
from aetrain.registry import Registry
from aetrain.rundir import Status
from aetrain.train.distributed import World
from aetrain.train.optim import Schedule
from aetrain.train.precision import Precision
from aetrain.train.signals import Interrupt
from aetrain.train.step import Step, admit_always, admit_if_finite

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Every counter the loop keeps; saved in checkpoints and restored on resume."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken over the run
    step_in_epoch: int = 0  # optimizer steps taken in the epoch under way; 0 at an epoch boundary
    best_val_loss: float = math.inf  # lowest val/loss so far
    best_epoch: int = 0  # the epoch (1-based) that reached it; 0 = none yet
    bad_epochs: int = 0  # epochs since the last improvement (early stopping)


@dataclass
class Parts:
    """What one run trains with, built once from the config."""

    cfg: Config
    model: Autoencoder  # what checkpoints save and callbacks inspect
    net: torch.nn.Module  # the same model as the loop calls it: torch.compile'd with trainer.compile
    objective: Objective  # training objective (noise on, warm-ups applied)
    val_objective: Objective  # clean inputs
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    precision: Precision
    step: Step  # forward, backward, clip, optimizer step: one seam (eager, or replayed as a CUDA graph)
    data: Data
    windows: list[list[float]]  # per optimizer step of an epoch: each micro-batch's share of the samples
    galleries: tuple[Gallery, ...] = ()  # pictures the model's family draws besides reconstructions


def accumulation_windows(batch_sizes: list[int], accumulate: int, *, global_sizes: list[int] | None = None,
                         world_size: int = 1) -> list[list[float]]:
    """Group an epoch's micro-batches into optimizer steps of `accumulate` batches (the last may be short).

    Each batch's weight is its share of the window's samples, so the summed gradient equals the
    gradient of one batch holding the whole window, also for a short or uneven last window.

    With `world_size` data-parallel processes, `batch_sizes` are this process's shares of the
    `global_sizes` batches, and a share's weight is its part of the samples of the whole window
    on every process, times `world_size`: DDP averages the processes' gradients, so the update is
    that of one batch holding every process's samples, whatever each process holds (a short last
    batch split unevenly included).
    """
    global_sizes = batch_sizes if global_sizes is None else global_sizes
    windows = []
    for i in range(0, len(batch_sizes), accumulate):
        total = sum(global_sizes[i : i + accumulate])
        windows.append([n * world_size / total for n in batch_sizes[i : i + accumulate]])
    return windows


def metric_columns(parts: Parts) -> list[str]:
    """The per-epoch metrics of this run, in order: what metrics.csv, TensorBoard and the curve show."""
    return [*(f"train/{n}" for n in parts.objective.names), "train/grad_norm",
            *(f"val/{n}" for n in parts.val_objective.names)]


class Meter:
    """One epoch's per-batch loss terms and per-step gradient norms, in device buffers.

    Writing a row is one copy kernel and no host sync; `read` reduces everything written so far
    in one sync. A batch whose terms are not finite is left out of the means and reported. With
    several data-parallel processes, `read` adds up every process's sums first (one collective),
    so every process gets the means over all of the epoch's samples and the same verdict.
    """

    def __init__(self, names: tuple[str, ...], batch_sizes: list[int], accumulate: int, device: torch.device) -> None:
        self.names = names  # the objective's terms, "loss" first
        self.sizes = torch.tensor(batch_sizes, dtype=torch.float32, device=device)  # (batches,)
        self.terms = torch.zeros(len(batch_sizes), len(names), device=device)  # (batches, terms)
        self.norms = torch.zeros(math.ceil(len(batch_sizes) / accumulate), device=device)  # (steps,)
        self.accumulate = accumulate
        self.batches = 0  # rows written
        self.steps = 0

    def add_batch(self, terms: Terms) -> None:
        # stacked straight into the row: one copy kernel (the terms are fp32, computed outside autocast)
        torch.stack([terms[n].detach() for n in self.names], out=self.terms[self.batches])
        self.batches += 1

    def add_step(self, grad_norm: torch.Tensor) -> None:
        self.norms[self.steps] = grad_norm.detach()
        self.steps += 1

    def read(self, world: World | None = None) -> tuple[dict[str, float], int | None, int]:
        """(means so far, index in the epoch of the first non-finite step or None, non-finite batches),
        over every process of `world`."""
        terms, sizes, norms = self.terms[: self.batches], self.sizes[: self.batches], self.norms[: self.steps]
        finite = terms.isfinite().all(dim=1)  # (batches,)
        weights = sizes * finite
        sums, count = (terms.nan_to_num(0.0, 0.0, 0.0) * weights[:, None]).sum(0), weights.sum()  # (terms,), ()
        never = torch.full((1,), float(len(self.sizes)), device=finite.device)
        index = torch.arange(self.batches, dtype=torch.float32, device=finite.device)
        first = torch.cat([torch.where(finite, never, index), never]).min()  # the first non-finite batch, or never
        local = torch.cat([sums, count[None], (~finite).sum()[None].float(), first[None]])
        every = (world or World()).gather(local)  # (processes, terms + 3): one collective; a view for one process
        total = torch.cat([every[:, :-1].sum(0), every[:, -1].min()[None]])  # added in rank order, the same bits
        means = total[: len(self.names)] / total[len(self.names)].clamp_min(1.0)  # everywhere
        norm_ok = norms.isfinite()  # fp16: the scaler skips inf-gradient steps on purpose; average the rest
        norm = (norms.nan_to_num(0.0, 0.0, 0.0) * norm_ok).sum() / norm_ok.sum().clamp_min(1)
        numbers = torch.cat([means, norm[None], total[-2:]]).tolist()  # one sync
        values, (norm_mean, n_bad, first_bad) = numbers[: len(self.names)], numbers[len(self.names) :]
        metrics = {f"train/{n}": v for n, v in zip(self.names, values)}
        metrics["train/grad_norm"] = norm_mean  # the same on every process: their gradients are all-reduced
        return metrics, int(first_bad) // self.accumulate if first_bad < len(self.sizes) else None, int(n_bad)

    def state_dict(self) -> dict[str, Any]:
        return {"terms": self.terms.cpu(), "norms": self.norms.cpu(), "batches": self.batches, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.terms.copy_(state["terms"])
        self.norms.copy_(state["norms"])
        self.batches, self.steps = state["batches"], state["steps"]


class StopOnNonFinite:
    """trainer.on_nonfinite=stop: the run ends at the next read with a message naming the step.

    A policy for non-finite losses (`NONFINITE`) is one object: which updates the step applies (`admit`,
    given to the `TrainStep`), whether that reads the host every step (`reads_host`: then no CUDA graph),
    and what the engine does at each metric read (`on_read`)."""

    admit = staticmethod(admit_always)  # every update is applied; the run stops at the next read
    reads_host = False

    def on_read(self, engine: Engine, first_bad: int | None, n_bad: int) -> None:
        if first_bad is not None:
            cfg = engine.parts.cfg
            step = engine.state.step - engine.state.step_in_epoch + first_bad + 1
            causes = [f"optimizer.lr={cfg.optimizer.lr:g} too high"]
            if cfg.trainer.precision == "16-mixed":
                causes.append("fp16 overflow (try trainer.precision=bf16-mixed or 32)")
            if cfg.trainer.gradient_clip_val is None:
                causes.append("no gradient clipping (try trainer.gradient_clip_val=1.0)")
            raise DivergenceError(
                f"non-finite loss at step {step} (epoch {engine.state.epoch + 1}); likely causes: {', '.join(causes)}. "
                "Checkpoints keep only finite models; trainer.on_nonfinite=skip drops such steps instead"
            )


class SkipNonFinite(StopOnNonFinite):
    """trainer.on_nonfinite=skip: updates with non-finite gradients are dropped. fp16's GradScaler already skips
    steps with inf/NaN gradients on its own; this extends that to every precision, at one host read a step."""

    admit = staticmethod(admit_if_finite)
    reads_host = True

    def __init__(self) -> None:
        self.reported = 0

    def on_read(self, engine: Engine, first_bad: int | None, n_bad: int) -> None:
        if n_bad > self.reported:
            log.warning("skipped %d update(s) with a non-finite loss in epoch %d so far", n_bad, engine.state.epoch + 1)
        self.reported = n_bad


NONFINITE: Registry[type[StopOnNonFinite]] = Registry("trainer.on_nonfinite")
NONFINITE.add("stop", StopOnNonFinite)
NONFINITE.add("skip", SkipNonFinite)


def memory_mb(device: torch.device) -> float:
    """CUDA: peak memory allocated since the last call (then reset); CPU: the process's resident set."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        return peak / 2**20
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the peak is the best the standard library offers
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


class Callback:
    """Hooks the engine calls; each does nothing unless overridden.

    Callbacks must not draw from the global RNGs (use a private torch.Generator, or
    torch.random.fork_rng): the run's random stream is part of what makes it reproducible
    and resumable. What a callback needs comes from the engine (its parts, state and history)
    or from its constructor, never from another callback.
    """

    def on_fit_start(self, engine: Engine) -> None:
        """Once, before the first epoch (engine.state may be past zero when resuming)."""

    def on_epoch_start(self, engine: Engine) -> None:
        """Before each epoch's training batches."""

    def on_step(self, engine: Engine) -> None:
        """After every optimizer step. No metrics here: reading them would sync the device."""

    def on_log(self, engine: Engine, metrics: dict[str, float]) -> None:
        """Every trainer.log_every_n_steps steps: step, lr and the epoch's running train means."""

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        """After validation; `record` is also the newest entry of engine.history: epoch, step, train/*
        and val/* means, lr, improved, timings, memory."""

    def on_fit_end(self, engine: Engine) -> None:
        """Once, after the last epoch or when the run stops early; engine.status says how it ended:
        ok, stopped_early, interrupted (a signal; the state may be mid-epoch), diverged or failed;
        engine.stop_reason says why, when it stopped before trainer.max_epochs."""

    def on_abort(self, engine: Engine) -> None:
        """Instead of (or amid) on_fit_end, when a second Ctrl-C aborts the run at once, wherever it landed: only
        what must agree with the checkpoints on disk (a write in flight settled, summary.json saying how the run
        ended), nothing slow. engine.state may be ahead of last.pt: read what a checkpoint holds from disk."""


@dataclass
class Engine:
    parts: Parts
    callbacks: list[Callback] = field(default_factory=list)
    state: TrainState = field(default_factory=TrainState)
    nonfinite: StopOnNonFinite = field(default_factory=StopOnNonFinite)
    interrupt: Interrupt = field(default_factory=Interrupt)
    world: World = field(default_factory=World)  # the data-parallel processes; a single process by default
    history: list[dict[str, Any]] = field(default_factory=list)  # every finished epoch's record
    meter: Meter | None = None  # the epoch under way; None at an epoch boundary
    stop_reason: str | None = None  # set by a callback (early stopping) to end the run after this epoch
    status: Status = Status.RUNNING  # then how it ended: ok | stopped_early | interrupted | diverged | failed
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # names the run in its checkpoints and summary.json;
    # kept on resume, so a checkpoint can tell its own run dir from a folder it was copied into
    notes: dict[str, Any] = field(default_factory=dict)  # extra keys summary.json records about how the run trained
    # (a member of a fused sweep group: {"group": {"id": ...}}, see aetrain.fused); none for a run of its own
    clock: Callable[[], float] = time.perf_counter  # the run's own time in seconds, which outputs.render_budget is a
    # share of: the wall clock; for a member of a fused group its share of the group's time (aetrain.fused.engine)

    def fit(self) -> TrainState:
        self._call("on_fit_start")
        try:
            try:
                while self.state.epoch < self.parts.cfg.trainer.max_epochs and self.stop_reason is None:
                    self.run_epoch()
            except Interrupted:
                self.status = Status.INTERRUPTED
                raise
            except Exception as e:
                error = self.world.explain(e)  # a lost process: one clear line instead of the backend's error
                self.status = Status.DIVERGED if isinstance(error, DivergenceError) else Status.FAILED
                if error is e:
                    raise
                raise error from e
            else:
                self.status = Status.OK if self.stop_reason is None else Status.STOPPED_EARLY
            finally:
                if self.status is not Status.RUNNING:  # not after a second Ctrl-C: that one aborts at once
                    self._end()
        except KeyboardInterrupt:  # a second Ctrl-C, in training or while the run was ending
            self._abort()
            raise
        return self.state

    def _abort(self) -> None:
        """Every callback's on_abort, each once, whatever the others do; a run that had not ended is interrupted
        (one that had finished training keeps its status)."""
        if self.status is Status.RUNNING:
            self.status = Status.INTERRUPTED
        for cb in self.callbacks:
            try:
                cb.on_abort(self)
            except Exception as e:  # the abort goes on: the run's own line says what happened
                log.warning("while aborting the run: %s: %s", type(e).__name__, e)

    def _end(self) -> None:
        """Every callback's on_fit_end, also when one fails (a full disk): each gets to close its files and
        say how the run ended. The first failure is raised after all have run, unless the run is already
        ending on an error of its own, which must not be hidden."""
        failure: Exception | None = None
        for cb in self.callbacks:
            try:
                cb.on_fit_end(self)
            except Exception as e:
                failure = failure or e
        if failure is not None and sys.exc_info()[1] is None:
            self.status = Status.FAILED
            raise failure
        if failure is not None:
            log.warning("while ending the run: %s: %s", type(failure).__name__, failure)

    def run_epoch(self) -> None:
        self.check_interrupt()
        self._call("on_epoch_start")
        tic = time.perf_counter()
        train, samples = self.train_epoch()
        train_time = time.perf_counter() - tic
        samples = self.world.total(samples)  # every process's
        val = self.validate()
        self.parts.schedule.after_epoch(val["val/loss"])
        st = self.state
        st.epoch += 1
        st.step_in_epoch = 0
        self.meter = None
        improved = val["val/loss"] < st.best_val_loss  # False for NaN
        if improved:
            st.best_val_loss, st.best_epoch = val["val/loss"], st.epoch
        st.bad_epochs = 0 if improved else st.bad_epochs + 1
        record = {"epoch": st.epoch, "step": st.step, **train, **val, "improved": improved,
                  "epoch_time_s": time.perf_counter() - tic, "samples_per_s": samples / max(train_time, 1e-9),
                  "memory_mb": memory_mb(self.parts.data.device)}
        self.history.append(record)
        self._call("on_epoch_end", record)

    def train_epoch(self) -> tuple[dict[str, float], int]:
        """The epoch's training steps (from step_in_epoch on); returns its mean terms and last lr, and
        the number of samples this call trained on."""
        p, st = self.parts, self.state
        p.model.train()
        accumulate = p.cfg.trainer.accumulate_grad_batches
        if self.meter is None:  # else restored from a mid-epoch checkpoint
            self.meter = Meter(p.objective.names, p.data.train.plan.sizes, accumulate, p.data.device)
        meter, log_every, steps_per_epoch = self.meter, p.cfg.trainer.log_every_n_steps, len(p.windows)
        batches = p.data.train.epoch(st.epoch, start=st.step_in_epoch * accumulate)
        lr, samples = self.lr, 0
        for window in p.windows[st.step_in_epoch :]:
            p.step.begin(st.epoch + (st.step_in_epoch + 1) / steps_per_epoch, len(window))
            terms = []
            for weight in window:
                x = next(batches)  # (B, *shape) in model units, on the device
                terms.append(p.step.forward_backward(x, weight))
                samples += x.shape[0]
            lr = self.lr  # the rate this step uses
            grad_norm = p.step.update()  # the window's terms are final from here (a graphed step computes them now)
            for t in terms:
                meter.add_batch(t)
            meter.add_step(grad_norm)
            p.schedule.after_step()
            st.step += 1
            st.step_in_epoch += 1
            self._call("on_step")
            if st.step % log_every == 0:
                self._call("on_log", {"step": st.step, "lr": lr, **self.train_metrics()})
            self.check_interrupt()
        return {**self.train_metrics(), "lr": lr}, samples

    def train_metrics(self) -> dict[str, float]:
        """The epoch's running train means (one host sync); applies the non-finite policy."""
        if self.meter is None:
            return {}
        metrics, first_bad, n_bad = self.meter.read(self.world)
        self.nonfinite.on_read(self, first_bad, n_bad)
        return metrics

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        """The validation objective's terms over the clean validation inputs (val/loss first); with several
        processes each validates its share and the sums are added up."""
        p = self.parts
        p.model.eval()
        names = p.val_objective.names
        sums = torch.zeros(len(names), device=p.data.device)
        for x in p.data.val_batches():
            with p.precision.autocast:
                terms = p.val_objective(p.net, x)
            sums += torch.stack([terms[n] for n in names]) * x.shape[0]
        return {f"val/{n}": v for n, v in zip(names, (self.world.sum(sums) / p.data.num_val).tolist())}

    def check_interrupt(self) -> None:
        """Stop here if a signal came in: between optimizer steps, where the state is complete. With several
        processes, a signal on any of them stops all of them at the same step."""
        signum = self.world.stop_signal(self.interrupt.signum)
        if signum is not None:
            raise Interrupted(f"interrupted by {signal.Signals(signum).name} {self.where()}", signum)

    def where(self, state: TrainState | None = None) -> str:
        """The point the run is at (or `state` is), as every message says it: `after epoch 2, step 90 of the run`
        at an epoch boundary, `in epoch 3 (step 12 of 45), step 102 of the run` inside one."""
        st = self.state if state is None else state
        inside = f"in epoch {st.epoch + 1} (step {st.step_in_epoch} of {len(self.parts.windows)})" \
            if st.step_in_epoch else f"after epoch {st.epoch}"
        return f"{inside}, step {st.step} of the run"

    @property
    def lr(self) -> float:
        return self.parts.optimizer.param_groups[0]["lr"]

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)
