"""The training loop: every model, precision, schedule and regulariser runs through `Engine.fit`.

The variation lives in objects built once by `aetrain.train.run` (the objective, `Precision`,
the clip function, the `Schedule`); the loop only calls them. Metrics are summed on the device
and read back once per logging interval and per epoch, so the step itself never waits on the
host. Output (metrics, checkpoints, console, images) hangs off `Callback`s.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from aetrain.config import Config
from aetrain.data import Data
from aetrain.models import Autoencoder, Objective
from aetrain.train.optim import Schedule
from aetrain.train.precision import Clip, Precision

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
    model: Autoencoder
    objective: Objective  # training objective (noise on)
    val_objective: Objective  # clean inputs
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    precision: Precision
    clip: Clip
    params: list[torch.Tensor]  # the trainable parameters, in a fixed order
    data: Data
    windows: list[list[float]]  # per optimizer step of an epoch: each micro-batch's share of the samples


def accumulation_windows(batch_sizes: list[int], accumulate: int) -> list[list[float]]:
    """Group an epoch's micro-batches into optimizer steps of `accumulate` batches (the last may be short).

    Each batch's weight is its share of the window's samples, so the summed gradient equals the
    gradient of one batch holding the whole window, also for a short or uneven last window.
    """
    chunks = [batch_sizes[i : i + accumulate] for i in range(0, len(batch_sizes), accumulate)]
    return [[n / sum(chunk) for n in chunk] for chunk in chunks]


class Meter:
    """Sample-weighted sums of the loss terms and the sum of gradient norms, on the device."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(4, device=device)  # loss, reconstruction, penalty (x samples), grad norm
        self.samples = 0
        self.steps = 0

    def add_batch(self, loss: torch.Tensor, reconstruction: torch.Tensor, penalty: torch.Tensor, n: int) -> None:
        self.sums[:3] += torch.stack([loss, reconstruction, penalty]).detach() * n
        self.samples += n

    def add_step(self, grad_norm: torch.Tensor) -> None:
        self.sums[3] += grad_norm.detach()
        self.steps += 1

    def read(self) -> dict[str, float]:
        """Means since the meter started; one host sync."""
        loss, rec, pen, norm = self.sums.tolist()
        n, s = max(self.samples, 1), max(self.steps, 1)
        return {"train/loss": loss / n, "train/reconstruction": rec / n, "train/penalty": pen / n,
                "train/grad_norm": norm / s}


class Callback:
    """Hooks the engine calls; each does nothing unless overridden.

    Callbacks must not draw from the global RNGs (use a private torch.Generator, or
    torch.random.fork_rng): the run's random stream is part of what makes it reproducible
    and resumable.
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
        """After validation. `record`: epoch, step, train/* and val/* means, lr, improved, timings."""

    def on_fit_end(self, engine: Engine) -> None:
        """Once, after the last epoch."""


@dataclass
class Engine:
    parts: Parts
    callbacks: list[Callback] = field(default_factory=list)
    state: TrainState = field(default_factory=TrainState)
    should_stop: bool = False  # set by callbacks (early stopping); checked between epochs

    def fit(self) -> TrainState:
        cfg = self.parts.cfg.trainer
        self._call("on_fit_start")
        while self.state.epoch < cfg.max_epochs and not self.should_stop:
            self._call("on_epoch_start")
            tic = time.perf_counter()
            train = self.train_epoch()
            train_time = time.perf_counter() - tic
            val = self.validate()
            self.parts.schedule.after_epoch(val["val/loss"])
            self.state.epoch += 1
            self.state.step_in_epoch = 0
            improved = val["val/loss"] < self.state.best_val_loss
            if improved:
                self.state.best_val_loss, self.state.best_epoch = val["val/loss"], self.state.epoch
            self.state.bad_epochs = 0 if improved else self.state.bad_epochs + 1
            record = {"epoch": self.state.epoch, "step": self.state.step, **train, **val,
                      "improved": improved, "epoch_time_s": time.perf_counter() - tic,
                      "samples_per_s": self.parts.data.num_train / train_time}
            self._call("on_epoch_end", record)
        self._call("on_fit_end")
        return self.state

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training batches; returns the epoch's mean losses, grad norm and last lr."""
        p, st = self.parts, self.state
        p.model.train()
        meter = Meter(p.data.device)
        accumulate = p.cfg.trainer.accumulate_grad_batches
        log_every = p.cfg.trainer.log_every_n_steps
        batches = p.data.train.epoch(st.epoch, start=st.step_in_epoch * accumulate)
        for window in p.windows[st.step_in_epoch :]:
            for weight in window:
                x = next(batches)  # (B, *shape) in model units, on the device
                with p.precision.autocast:
                    terms = p.objective(p.model, x)
                # gradients add up over the window; weighting each micro-batch by its share of the
                # samples makes the update equal that of one batch holding them all
                p.precision.backward(terms.loss * weight)
                meter.add_batch(terms.loss, terms.reconstruction, terms.penalty, x.shape[0])
            lr = self.lr  # the rate this step uses
            grad_norm = p.precision.step(p.optimizer, p.params, p.clip)
            meter.add_step(grad_norm)
            st.step += 1
            st.step_in_epoch += 1
            self._call("on_step")
            if st.step % log_every == 0:
                self._call("on_log", {"step": st.step, "lr": lr, **meter.read()})
            p.schedule.after_step()
        return {**meter.read(), "lr": lr}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Reconstruction loss of the clean validation inputs (val/loss) and the latent penalty."""
        p = self.parts
        p.model.eval()
        sums = torch.zeros(2, device=p.data.device)
        for x in p.data.val_batches():
            with p.precision.autocast:
                terms = p.val_objective(p.model, x)
            sums += torch.stack([terms.reconstruction, terms.penalty]) * x.shape[0]
        rec, pen = (sums / p.data.num_val).tolist()
        return {"val/loss": rec, "val/penalty": pen}

    @property
    def lr(self) -> float:
        return self.parts.optimizer.param_groups[0]["lr"]

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)
