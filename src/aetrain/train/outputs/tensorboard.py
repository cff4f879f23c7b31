"""tensorboard/: scalars at each epoch's end and each log interval, pictures when drawn; x axis = optimizer step.
At the fit's end, tensorboard/hparams/: the run's hyperparameters and results for TensorBoard's HParams
dashboard (what `SummaryWriter.add_hparams` writes), so `tensorboard --logdir <sweep dir>` compares a sweep's jobs."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aetrain.train.engine import Callback, Engine, metric_columns

log = logging.getLogger(__name__)

PERF = {"samples_per_s": "perf/samples_per_s", "epoch_time_s": "perf/epoch_time_s", "memory_mb": "perf/memory_mb"}
LOG_TAGS = {"train/loss": "step/train_loss", "train/grad_norm": "step/grad_norm", "lr": "step/lr"}
HPARAMS = "hparams"  # tensorboard/hparams/: the HParams dashboard's session of this run
# the config keys the HParams dashboard gets: the sections that shape the model and its training, the
# trainer's keys that change the numbers; not where files are, devices, logging or outputs
HPARAM_SECTIONS = ("model", "data", "optimizer", "scheduler")
HPARAM_TRAINER = ("max_epochs", "precision", "gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches",
                  "seed", "early_stopping_patience", "on_nonfinite")
NOT_HPARAMS = ("data.root", "data.download", "data.num_workers", "data.path", "data.labels", "data.layout")


class ImageSink:
    """Where drawn pictures also go besides their PNG file: nowhere (TensorBoard off)."""

    def add_image(self, tag: str, png: bytes, shape: tuple[int, ...], step: int) -> None:
        pass


class TensorBoard(Callback, ImageSink):
    """Written with tensorboard's own event-file writer, one event per epoch holding every scalar:
    a tenth of the cost of one `SummaryWriter.add_scalar` call per tag, and pictures go in as the
    PNG bytes already encoded for their file.

    Epoch tags: every metric under its own name (train/loss, train/<term>, train/grad_norm,
    val/<term>), lr, perf/samples_per_s, perf/epoch_time_s, perf/memory_mb, epoch. Log-interval
    tags: step/train_loss, step/grad_norm, step/lr.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.writer: Any = None

    def on_fit_start(self, engine: Engine) -> None:
        self.resumed_at = engine.state.step
        self.epoch_tags = {**{m: m for m in metric_columns(engine.parts)}, "lr": "lr", **PERF, "epoch": "epoch"}

    def open(self) -> None:
        """The event file, opened at the first write: importing tensorboard takes a third of a second
        that the first optimizer step need not wait for."""
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.Event, self.Summary = event_pb2.Event, summary_pb2.Summary
        try:
            self.writer = EventFileWriter(str(self.log_dir))
        except UnicodeError:  # tensorboard names files in UTF-8: a path undecodable in this locale (LC_ALL=C)
            log.warning("TensorBoard is off for this run: it cannot name files under %s in this locale (run with "
                        "PYTHONUTF8=1 or a UTF-8 locale such as LC_ALL=C.UTF-8)", self.log_dir)
            self.writer = NoWriter()
            return
        if self.resumed_at:  # resuming: TensorBoard hides what an earlier session logged after this step
            # (SummaryWriter's purge_step; the epoch that ended at this very step belongs to the history)
            self.writer.add_event(self.Event(step=self.resumed_at + 1, wall_time=time.time(),
                                             session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    def on_log(self, engine: Engine, metrics: dict[str, float]) -> None:
        self._write(metrics["step"], scalars=_scalars(LOG_TAGS, metrics))

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        self._write(record["step"], scalars=_scalars(self.epoch_tags, record))
        self.writer.flush()  # a crashed run keeps every finished epoch

    def add_image(self, tag: str, png: bytes, shape: tuple[int, ...], step: int) -> None:
        self._write(step, image=(tag, png, shape))

    def on_fit_end(self, engine: Engine) -> None:
        if self.writer is not None:
            self.writer.close()
        if not isinstance(self.writer, NoWriter):
            write_hparams(self.log_dir / HPARAMS, engine)

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


def hparams_of(cfg: Any) -> dict[str, bool | int | float | str]:
    """The run's hyperparameters for TensorBoard: `model.latent_dim` -> 16, ...; None as "null", lists as text."""
    sections = {name: dataclasses.asdict(getattr(cfg, name)) for name in HPARAM_SECTIONS}
    sections["trainer"] = {k: getattr(cfg.trainer, k) for k in HPARAM_TRAINER}
    out: dict[str, bool | int | float | str] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                add(f"{prefix}.{k}", v)
        elif prefix not in NOT_HPARAMS:
            out[prefix] = value if isinstance(value, (bool, int, float, str)) else \
                "null" if value is None else str(value)

    for name, values in sections.items():
        add(name, values)
    return out


def write_hparams(log_dir: Path, engine: Engine) -> None:
    """tensorboard/hparams/: the run's HParams session (start with the hyperparameters, end with how it ended)
    and its results as scalars (hparams/best_val_loss, hparams/final_val_loss, hparams/epochs), as
    `SummaryWriter.add_hparams` writes them. No experiment summary: TensorBoard then gathers the hyperparameters
    of every job under its logdir, whatever each job's family. Rewritten whole at every fit's end (a resumed
    run has one session)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from torch.utils.tensorboard.summary import hparams

    state, history = engine.state, engine.history
    results = {"hparams/best_val_loss": state.best_val_loss,
               "hparams/final_val_loss": history[-1].get("val/loss", math.nan) if history else math.nan,
               "hparams/epochs": state.epoch}
    _, start, end = hparams(hparams_of(engine.parts.cfg), {k: 0.0 for k in results})
    if engine.status not in ("ok", "stopped_early"):  # failed, diverged, interrupted: the dashboard says so
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        status = api_pb2.STATUS_ABORTED if engine.status == "interrupted" else api_pb2.STATUS_FAILURE
        content = plugin_data_pb2.HParamsPluginData(session_end_info=plugin_data_pb2.SessionEndInfo(status=status),
                                                    version=metadata.PLUGIN_DATA_VERSION).SerializeToString()
        end = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=(
            summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
                plugin_name=metadata.PLUGIN_NAME, content=content))))])
    if log_dir.is_dir():
        for old in log_dir.glob("events.out.tfevents.*"):
            old.unlink()
    writer = EventFileWriter(str(log_dir))
    now, step = time.time(), int(state.step)
    scalars = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                                         for k, v in results.items()])
    for summary in (start, scalars, end):
        writer.add_event(event_pb2.Event(step=step, wall_time=now, summary=summary))
    writer.close()


def _scalars(tags: dict[str, str], values: dict[str, Any]) -> list[tuple[str, float]]:
    return [(tag, float(values[key])) for key, tag in tags.items() if key in values]


class NoWriter:
    """An event writer that writes nothing: TensorBoard off after its file could not be opened."""

    def add_event(self, event: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
