"""What a run writes for people to look at, as callbacks built once by `build_outputs`.

- loss_curve.png: train/validation loss (and regulariser terms) and the learning rate per epoch;
- reconstructions/epoch_NNN.png: the same validation samples every epoch, originals above
  reconstructions (with the corrupted inputs between them for denoising runs), or heatmaps of
  original against reconstructed features for tabular rows;
- tensorboard/: epoch and log-interval scalars, and the reconstruction picture when drawn;
- summary.json: the run's numbers and where its files are, rewritten atomically every epoch.

Cost: scalars and summary.json are written every epoch (about a millisecond together). A
picture costs tens to a few hundred milliseconds, more than a whole epoch of a small model, so
`DrawClock` draws them at the first and last epoch and otherwise only while the time spent
drawing stays within `outputs.render_budget` of the run's time.

Resume: the history comes from metrics.csv, TensorBoard purges events past the resumed step,
grid numbers follow the epoch, and summary.json adds the earlier sessions' wall time.

Randomness: nothing here draws from the global RNGs. The grid's samples come from a private
generator; the denoising row's corruption is drawn once, on the CPU, inside `fork_rng`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aetrain.atomic import write_atomic
from aetrain.config import OutputsConfig
from aetrain.models import count_parameters
from aetrain.models.objective import identity
from aetrain.train import plots
from aetrain.train.checkpoint import BEST, checkpoint_dir
from aetrain.train.console import EpochProgress, FinalTable, Header, is_terminal
from aetrain.train.engine import Callback, Engine

log = logging.getLogger(__name__)

METRICS = "metrics.csv"
LOSS_CURVE = "loss_curve.png"
GRIDS = "reconstructions"
TENSORBOARD = "tensorboard"
SUMMARY = "summary.json"


def grid_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}.png"


@dataclass
class RunFiles:
    """What the outputs have written so far; summary.json and the final table report it."""

    run_dir: Path
    loss_curve: Path | None = None
    last_grid: Path | None = None
    tensorboard: Path | None = None

    def relative(self, path: Path | None) -> str | None:
        return None if path is None else path.relative_to(self.run_dir).as_posix()


class History(Callback):
    """Every epoch's record: metrics.csv's rows up to the resumed epoch, then each new epoch."""

    def __init__(self, metrics_csv: Path) -> None:
        self.path = metrics_csv
        self.records: list[dict[str, Any]] = []

    def on_fit_start(self, engine: Engine) -> None:
        self.records = []
        if engine.state.epoch > 0 and self.path.exists():  # resuming: metrics.csv holds the earlier epochs
            with open(self.path, newline="") as f:
                rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
            self.records = [r for r in rows if 0 < r["epoch"] <= engine.state.epoch]

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        self.records.append(record)


def _number(text: str | None) -> float | int:
    if text is None or text == "":
        return math.nan
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


class DrawClock:
    """Which epochs get pictures: the session's first and last always; in between every `every`
    epochs while time spent drawing, plus the next draw's expected cost, stays within `budget`
    of the time since the session started (budget 1: every `every` epochs regardless)."""

    def __init__(self, every: int, budget: float, clock: Any = time.perf_counter) -> None:
        self.every, self.budget, self.clock = every, budget, clock
        self.start = clock()
        self.spent = 0.0  # seconds spent drawing
        self.last_cost = 0.0  # seconds the latest draw took: the estimate for the next

    def restart(self) -> None:
        self.start, self.spent, self.last_cost = self.clock(), 0.0, 0.0

    def due(self, epoch: int, *, first: bool, last: bool) -> bool:
        if first or last:
            return True
        if epoch % self.every:
            return False
        return self.budget >= 1.0 or self.spent + self.last_cost <= self.budget * (self.clock() - self.start)

    def charge(self, seconds: float) -> None:
        self.spent += seconds
        self.last_cost = seconds


class ImageSink:
    """Where drawn pictures also go besides their PNG file: nowhere (TensorBoard off)."""

    def add_image(self, tag: str, png: bytes, shape: tuple[int, ...], step: int) -> None:
        pass


class TensorBoard(Callback, ImageSink):
    """tensorboard/: scalars at each epoch's end and each log interval, x axis = optimizer step.

    Written with tensorboard's own event-file writer, one event per epoch holding every scalar:
    a tenth of the cost of one `SummaryWriter.add_scalar` call per tag, and pictures go in as the
    PNG bytes already encoded for their file.
    """

    EPOCH_TAGS = {"train/loss": "train/loss", "train/reconstruction": "train/reconstruction",
                  "train/penalty": "train/penalty", "train/grad_norm": "train/grad_norm", "val/loss": "val/loss",
                  "val/penalty": "val/penalty", "lr": "lr", "samples_per_s": "perf/samples_per_s",
                  "epoch_time_s": "perf/epoch_time_s", "memory_mb": "perf/memory_mb", "epoch": "epoch"}
    LOG_TAGS = {"train/loss": "step/train_loss", "train/grad_norm": "step/grad_norm", "lr": "step/lr"}

    def __init__(self, log_dir: Path, files: RunFiles) -> None:
        self.log_dir, self.files = log_dir, files
        self.writer: Any = None

    def on_fit_start(self, engine: Engine) -> None:
        self.resumed_at = engine.state.step
        self.files.tensorboard = self.log_dir

    def open(self) -> None:
        """The event file, opened at the first write: importing tensorboard takes a third of a second
        that the first optimizer step need not wait for."""
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.Event, self.Summary = event_pb2.Event, summary_pb2.Summary
        self.writer = EventFileWriter(str(self.log_dir))
        if self.resumed_at:  # resuming: TensorBoard hides what an earlier session logged after this step
            # (SummaryWriter's purge_step; the epoch that ended at this very step belongs to the history)
            self.writer.add_event(self.Event(step=self.resumed_at + 1, wall_time=time.time(),
                                             session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    def on_log(self, engine: Engine, metrics: dict[str, float]) -> None:
        self._write(metrics["step"], scalars=self._scalars(self.LOG_TAGS, metrics))

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        self._write(record["step"], scalars=self._scalars(self.EPOCH_TAGS, record))
        self.writer.flush()  # a crashed run keeps every finished epoch

    def add_image(self, tag: str, png: bytes, shape: tuple[int, ...], step: int) -> None:
        self._write(step, image=(tag, png, shape))

    def on_fit_end(self, engine: Engine) -> None:
        if self.writer is not None:
            self.writer.close()

    @staticmethod
    def _scalars(tags: dict[str, str], values: dict[str, Any]) -> list[tuple[str, float]]:
        return [(tag, float(values[key])) for key, tag in tags.items() if key in values]

    def _write(self, step: int, *, scalars: Sequence[tuple[str, float]] = (),
               image: tuple[str, bytes, tuple[int, ...]] | None = None) -> None:
        """One event at `step` holding the scalars and the PNG picture given (the event file opens here)."""
        if self.writer is None:
            self.open()
        values = [self.Summary.Value(tag=tag, simple_value=value) for tag, value in scalars]
        if image is not None:
            tag, png, shape = image
            values.append(self.Summary.Value(tag=tag, image=self.Summary.Image(
                height=shape[0], width=shape[1], colorspace=3, encoded_image_string=png)))
        self.writer.add_event(self.Event(step=int(step), wall_time=time.time(), summary=self.Summary(value=values)))


class Reconstructions:
    """The fixed validation samples and how to picture their reconstructions (image grid or heatmaps)."""

    def __init__(self, engine: Engine, cfg: OutputsConfig) -> None:
        p = engine.parts
        self.spec, self.model = p.data.spec, p.model
        self.samples = fixed_samples(p.data, cfg.num_samples, cfg.sample_seed)  # (n, *shape), model units
        corrupt = p.objective.corrupt
        # denoising: the inputs the model sees; drawn once with a fixed seed, so every epoch shows the same noise
        self.inputs = self.samples if corrupt is identity else fixed_corruption(corrupt, self.samples, cfg.sample_seed)
        self.denoising = corrupt is not identity
        self.zoom = plots.zoom_factor(self.spec.shape, cfg.grid_zoom_to) if self.spec.is_image else 1
        if not self.spec.is_image:
            unit = "model units (0-1)" if self.spec.unit_interval else "standardized units"
            self.heatmaps = plots.RowHeatmaps(self.samples.flatten(1).float().cpu().numpy(), unit)
        # display range of standardized images: the originals' own, shared by every row and epoch
        self.low, self.high = float(self.samples.min()), float(self.samples.max())

    @torch.no_grad()
    def draw(self, epoch: int) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()  # no dropout draws, batch norm from running statistics
        try:
            _, x_hat = self.model(self.inputs)  # (n, *shape) -> (n, *shape), model units
        finally:
            self.model.train(was_training)
        if not self.spec.is_image:
            return self.heatmaps.draw(x_hat.flatten(1).float().cpu().numpy(), epoch)
        rows = [self.samples, self.inputs, x_hat] if self.denoising else [self.samples, x_hat]
        return plots.image_grid([self._display(r) for r in rows], self.zoom)

    def _display(self, x: torch.Tensor) -> torch.Tensor:
        """Model units -> [0, 1] for viewing: as they are for unit-interval data, else by the originals' range."""
        if not self.spec.unit_interval:
            x = (x - self.low) / max(self.high - self.low, 1e-12)
        return x.clamp(0.0, 1.0)


def fixed_samples(data: Any, num: int, seed: int) -> torch.Tensor:
    """`num` validation samples picked by `seed` with a private generator, on the training device."""
    n = min(num, data.num_val)
    idx = torch.randperm(data.num_val, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    if isinstance(data.val, torch.Tensor):
        x = data.val[idx.to(data.val.device)]
    else:  # an image folder: load just these
        x = torch.stack([data.val[i] for i in idx.tolist()])
    return x.to(data.device)


def fixed_corruption(corrupt: Any, x: torch.Tensor, seed: int) -> torch.Tensor:
    """`corrupt(x)` with noise from `seed`, leaving every global RNG as it was.

    Drawn on the CPU, whatever the training device, so one fork of the CPU generator covers it.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: that would also reseed CUDA
        return corrupt(x.cpu()).to(x.device)


class Pictures(Callback):
    """Draws loss_curve.png and reconstructions/epoch_NNN.png on the epochs `DrawClock` picks."""

    def __init__(self, cfg: OutputsConfig, history: History, files: RunFiles, sink: ImageSink) -> None:
        self.cfg, self.history, self.files, self.sink = cfg, history, files, sink
        self.clock = DrawClock(cfg.plot_every, cfg.render_budget)
        self.first_epoch = 1
        self.drawn_epoch = -1
        self.failed = False

    def on_fit_start(self, engine: Engine) -> None:
        run_dir = self.files.run_dir
        # the figures are built at the first draw, after the first epoch: matplotlib's set-up (about a
        # second) would otherwise delay the first optimizer step
        self.curve: plots.LossCurve | None = None
        self.reconstructions: Reconstructions | None = None
        self.clock.restart()
        self.first_epoch, self.drawn_epoch = engine.state.epoch + 1, -1
        earlier = sorted((run_dir / GRIDS).glob("epoch_*.png"))  # resuming: the latest picture so far
        earlier = [g for g in earlier if int(g.stem.split("_")[1]) <= engine.state.epoch]
        self.files.last_grid = earlier[-1] if earlier else None
        self.files.loss_curve = run_dir / LOSS_CURVE if (run_dir / LOSS_CURVE).exists() else None

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        epoch = record["epoch"]
        if self.clock.due(epoch, first=epoch == self.first_epoch, last=epoch >= engine.parts.cfg.trainer.max_epochs):
            self.draw(engine)

    def on_fit_end(self, engine: Engine) -> None:
        if self.history.records and self.drawn_epoch != engine.state.epoch:  # stopped early, or failed: show it
            self.draw(engine)

    def draw(self, engine: Engine) -> None:
        tic = time.perf_counter()
        epoch, step, run_dir = engine.state.epoch, engine.state.step, self.files.run_dir
        first = self.curve is None
        try:
            if first:
                self.curve = plots.LossCurve(f"{engine.parts.cfg.model.name} on {engine.parts.data.spec.name}")
                self.reconstructions = Reconstructions(engine, self.cfg)
            write_atomic(run_dir / LOSS_CURVE, plots.encode_png(self.curve.draw(self.history.records)))
            self.files.loss_curve = run_dir / LOSS_CURVE
            # a grid shows the model at an epoch's end: not one stopped part-way into the next
            if epoch > 0 and engine.state.step_in_epoch == 0 and self.history.records[-1]["epoch"] == epoch:
                grid = self.reconstructions.draw(epoch)
                png = plots.encode_png(grid)
                write_atomic(run_dir / GRIDS / grid_name(epoch), png)
                self.sink.add_image("reconstructions", png, grid.shape, step)
                self.files.last_grid = run_dir / GRIDS / grid_name(epoch)
        except Exception as e:  # a picture is never worth a training run
            if not self.failed:
                log.warning("could not draw the run's pictures (training goes on): %s: %s", type(e).__name__, e,
                            exc_info=log.isEnabledFor(logging.DEBUG))
            self.failed = True
        self.drawn_epoch = epoch
        if first:  # it paid one-time costs (imports, fonts, layouts): not the price of a picture
            self.clock.restart()
        else:
            self.clock.charge(time.perf_counter() - tic)


class Summary(Callback):
    """summary.json: status, best and final val/loss, counts, timings and file paths; rewritten
    atomically at fit start, every epoch's end ("running") and the fit's end ("ok" or "failed")."""

    def __init__(self, files: RunFiles, history: History) -> None:
        self.files, self.history = files, history
        self.path = files.run_dir / SUMMARY
        self.data: dict[str, Any] = {}

    def on_fit_start(self, engine: Engine) -> None:
        self.start = time.perf_counter()
        self.earlier_s = self._earlier_wall_time(engine)
        self.num_parameters = count_parameters(engine.parts.model)
        self.run_dir = str(self.files.run_dir.resolve())
        self.train_s, self.train_epochs = 0.0, 0  # training-step time and epochs behind it, for samples_per_s
        for record in self.history.records:
            self._count(engine, record)
        self.write(engine, "running")

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        self._count(engine, record)
        self.write(engine, "running")

    def _count(self, engine: Engine, record: dict[str, Any]) -> None:
        if _positive(record.get("samples_per_s")):
            self.train_s += engine.parts.data.num_train / record["samples_per_s"]
            self.train_epochs += 1

    def on_fit_end(self, engine: Engine) -> None:
        ended = getattr(engine, "status", "ok")  # ok | interrupted | diverged | failed
        self.write(engine, "ok" if ended == "ok" else "failed", ended=ended, error=_error_in_flight(ended))

    def write(self, engine: Engine, status: str, *, ended: str | None = None, error: str | None = None) -> None:
        p, st, records = engine.parts, engine.state, self.history.records
        best = checkpoint_dir(self.files.run_dir) / BEST
        self.data = {
            "status": status,
            "error": error,
            "best_val_loss": _finite(st.best_val_loss),
            "final_val_loss": _finite(records[-1]["val/loss"]) if records else None,
            "best_epoch": st.best_epoch or None,
            "epochs": st.epoch,
            "steps": st.step,
            "wall_time_s": round(self.earlier_s + time.perf_counter() - self.start, 3),
            "samples_per_s": round(p.data.num_train * self.train_epochs / self.train_s, 1) if self.train_s else None,
            "num_parameters": self.num_parameters,
            "device": str(p.data.device),
            "precision": p.cfg.trainer.precision,
            "model": p.cfg.model.name,
            "data": p.cfg.data.name,
            "best_checkpoint": self.files.relative(best if best.exists() else None),
            "last_grid": self.files.relative(self.files.last_grid),
            # beyond the agreed schema
            "ended": ended,  # ok | interrupted | diverged | failed; null while running
            "max_epochs": p.cfg.trainer.max_epochs,
            "num_train": p.data.num_train,
            "num_val": p.data.num_val,
            "loss_curve": self.files.relative(self.files.loss_curve),
            "tensorboard": self.files.relative(self.files.tensorboard),
            "run_dir": self.run_dir,
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        # a sweep's table or a watching script never sees half a file
        write_atomic(self.path, json.dumps(self.data, indent=2) + "\n")

    def _earlier_wall_time(self, engine: Engine) -> float:
        """Seconds the run trained before this session: its last summary.json, else the epochs' times."""
        if engine.state.epoch == 0:
            return 0.0
        try:
            return float(json.loads(self.path.read_text())["wall_time_s"])
        except (OSError, ValueError, KeyError, TypeError):
            return sum(r["epoch_time_s"] for r in self.history.records if _positive(r.get("epoch_time_s")))


def _error_in_flight(ended: str) -> str | None:
    """What stopped the run, as the sweep's summary writes it: `Type: first line of the message`.

    on_fit_end runs in the engine's `finally`, while the exception that ended the run is still
    propagating, so it is what `sys.exc_info()` holds there.
    """
    if ended == "ok":
        return None
    error = sys.exc_info()[1]
    if error is None:
        return f"the run ended: {ended}"
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _finite(value: float) -> float | None:
    """JSON has no inf or NaN: a value that is not finite (no epoch yet, a diverged run) is null."""
    return float(value) if math.isfinite(value) else None


def build_outputs(cfg: OutputsConfig, run_dir: Path) -> list[Callback]:
    """Every output callback `cfg` asks for; one that is off is simply not in the list."""
    files = RunFiles(run_dir)
    history = History(run_dir / METRICS)
    tensorboard = TensorBoard(run_dir / TENSORBOARD, files) if cfg.tensorboard else None
    pictures = [Pictures(cfg, history, files, tensorboard or ImageSink())] if cfg.plot_every else []
    summary = Summary(files, history)
    progress = [EpochProgress()] if cfg.progress and is_terminal() else []
    return [Header(run_dir), history, *([tensorboard] if tensorboard else []), *pictures, summary, *progress,
            FinalTable(summary, files)]
