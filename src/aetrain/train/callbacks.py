"""What a run leaves behind each epoch: metrics.csv, checkpoints, a log line."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aetrain.atomic import link_atomic, write_atomic
from aetrain.errors import DivergenceError
from aetrain.train import checkpoint
from aetrain.train.engine import Callback, Engine

log = logging.getLogger(__name__)

METRICS_COLUMNS = ["epoch", "step", "train/loss", "train/reconstruction", "train/penalty", "train/grad_norm",
                   "val/loss", "val/penalty", "lr", "epoch_time_s", "samples_per_s", "memory_mb"]


class MetricsCSV(Callback):
    """metrics.csv: one row per epoch, appended and flushed as each epoch ends.

    On resume the file continues: rows past the checkpoint's epoch (written after it, by a run
    that then died) are dropped, since those epochs run again; resuming into another directory
    first copies the earlier rows from `history`, so one file holds the whole run.
    """

    def __init__(self, path: Path, history: Path | None = None) -> None:
        self.path = path
        self.history = history  # metrics.csv of the run being resumed, when it lives elsewhere

    def on_fit_start(self, engine: Engine) -> None:
        source = self.history if self.history is not None and self.history.exists() else self.path
        if not source.exists():
            return
        with open(source, newline="") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if int(r["epoch"]) <= engine.state.epoch]
        if source != self.path or len(keep) != len(rows):
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=METRICS_COLUMNS, extrasaction="ignore", restval="")
            writer.writeheader()
            writer.writerows(keep)
            write_atomic(self.path, text.getvalue())

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRICS_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(record[k]) for k in METRICS_COLUMNS})


def _fmt(value: Any) -> Any:
    return f"{value:.8g}" if isinstance(value, float) else value


class Checkpointer(Callback):
    """Writes checkpoints, never of a non-finite model.

    - checkpoints/last.pt after every epoch, every `every_n_steps` optimizer steps if set, and
      when a signal stops the run (mid-epoch: resuming continues from that exact step);
    - checkpoints/best.pt, a snapshot of last.pt, whenever val/loss improves;
    - with `top_k` > 0, snapshots of the k best epochs as epoch=NNN-val_loss=X.pt.

    The state is serialized on the training thread (a consistent snapshot) and written to disk
    on a background thread while training goes on: the fsync of a large model takes long. One
    write is in flight at a time, in order; the run ends only after the last one is on disk, and
    a write that failed fails the run at the next save or at its end.
    """

    def __init__(self, run_dir: Path, *, every_n_steps: int | None = None, top_k: int = 0) -> None:
        self.dir = checkpoint.checkpoint_dir(run_dir)
        self.every_n_steps = every_n_steps or math.inf
        self.top_k = top_k
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aetrain-checkpoint")
        self.pending: Future[None] | None = None

    def save_last(self, engine: Engine, snapshots: Sequence[Path] = ()) -> None:
        """Write last.pt (and then `snapshots` of it) from the state the engine is in now."""
        engine.train_metrics()  # mid-epoch: applies the non-finite policy first, so a diverged step is never saved
        if checkpoint.nonfinite_parameters(engine.parts.model):
            raise DivergenceError(f"the model's weights are not finite at step {engine.state.step}; nothing was "
                                  "saved (last.pt and best.pt hold the last finite model): lower optimizer.lr or "
                                  "set trainer.gradient_clip_val")
        data = checkpoint.serialize(checkpoint.payload(engine))
        self.wait()
        self.pending = self.writer.submit(self._write, data, list(snapshots))

    def _write(self, data: bytes, snapshots: list[Path]) -> None:
        last = self.dir / checkpoint.LAST
        write_atomic(last, data, durable=True)
        for path in snapshots:
            link_atomic(last, path)
        if self.top_k:
            ranked = sorted(self.dir.glob("epoch=*-val_loss=*.pt"), key=lambda p: (_val_loss(p), p.name))
            for extra in ranked[self.top_k :]:
                extra.unlink()

    def wait(self) -> None:
        """Until the write in flight is on disk; raises its error if it failed."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def on_step(self, engine: Engine) -> None:
        if engine.state.step % self.every_n_steps == 0:
            self.save_last(engine)

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        snapshots = [self.dir / checkpoint.BEST] if record["improved"] else []
        if self.top_k and math.isfinite(record["val/loss"]):
            snapshots.append(self.dir / f"epoch={record['epoch']:03d}-val_loss={record['val/loss']:.6g}.pt")
        self.save_last(engine, snapshots)

    def on_fit_end(self, engine: Engine) -> None:
        try:
            if engine.status == "interrupted":
                self.save_last(engine)
            self.wait()
        except OSError as e:
            if engine.status == "ok":
                raise
            # the run is already failing with its own error: report this one without hiding that
            log.error("could not write %s: %s", self.dir / checkpoint.LAST, e)
        finally:
            self.writer.shutdown(wait=True)


def _val_loss(path: Path) -> float:
    return float(path.stem.rpartition("val_loss=")[2])


class EarlyStopping(Callback):
    """Stop when val/loss has not improved for `patience` epochs (math.inf = never)."""

    def __init__(self, patience: float) -> None:
        self.patience = patience

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        if engine.state.bad_epochs >= self.patience:
            log.info("early stopping: no val/loss improvement for %d epochs (best %.6g at epoch %d)",
                     engine.state.bad_epochs, engine.state.best_val_loss, engine.state.best_epoch)
            engine.should_stop = True


class EpochLog(Callback):
    """One log line per epoch."""

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        width = len(str(engine.parts.cfg.trainer.max_epochs))
        log.info(
            "epoch %*d/%d  train %.5f  val %.5f%s  lr %.3g  %.0f samples/s",
            width, record["epoch"], engine.parts.cfg.trainer.max_epochs, record["train/loss"], record["val/loss"],
            " *" if record["improved"] else "  ", record["lr"], record["samples_per_s"],
        )
