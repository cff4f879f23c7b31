"""What a run leaves behind each epoch: metrics.csv, checkpoints, a log line."""

from __future__ import annotations

import csv
import io
import logging
import math
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
    - checkpoints/best.pt, a copy of last.pt, whenever val/loss improves;
    - with `top_k` > 0, copies of the k best epochs as epoch=NNN-val_loss=X.pt.
    """

    def __init__(self, run_dir: Path, *, every_n_steps: int | None = None, top_k: int = 0) -> None:
        self.dir = checkpoint.checkpoint_dir(run_dir)
        self.every_n_steps = every_n_steps or math.inf
        self.top_k = top_k

    def save_last(self, engine: Engine) -> Path:
        engine.train_metrics()  # mid-epoch: applies the non-finite policy first, so a diverged step is never saved
        if checkpoint.nonfinite_parameters(engine.parts.model):
            raise DivergenceError(f"the model's weights are not finite at step {engine.state.step}; nothing was "
                                  "saved (last.pt and best.pt hold the last finite model): lower optimizer.lr or "
                                  "set trainer.gradient_clip_val")
        last = self.dir / checkpoint.LAST
        checkpoint.save_atomic(checkpoint.payload(engine), last)
        return last

    def on_step(self, engine: Engine) -> None:
        if engine.state.step % self.every_n_steps == 0:
            self.save_last(engine)

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        last = self.save_last(engine)
        if record["improved"]:
            link_atomic(last, self.dir / checkpoint.BEST)
        if self.top_k and math.isfinite(record["val/loss"]):
            link_atomic(last, self.dir / f"epoch={record['epoch']:03d}-val_loss={record['val/loss']:.6g}.pt")
            ranked = sorted(self.dir.glob("epoch=*-val_loss=*.pt"), key=lambda p: (_val_loss(p), p.name))
            for extra in ranked[self.top_k :]:
                extra.unlink()

    def on_fit_end(self, engine: Engine) -> None:
        if engine.status == "interrupted":
            self.save_last(engine)


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
