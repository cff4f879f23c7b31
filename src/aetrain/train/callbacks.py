"""What a run leaves behind each epoch: metrics.csv, checkpoints, a log line."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from aetrain.train import checkpoint
from aetrain.train.engine import Callback, Engine

log = logging.getLogger(__name__)

METRICS_COLUMNS = ["epoch", "step", "train/loss", "train/reconstruction", "train/penalty", "train/grad_norm",
                   "val/loss", "val/penalty", "lr", "epoch_time_s", "samples_per_s"]


class MetricsCSV(Callback):
    """metrics.csv: one row per epoch, appended and flushed as each epoch ends."""

    def __init__(self, path: Path) -> None:
        self.path = path

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
    """checkpoints/last.pt after every epoch; checkpoints/best.pt, a copy of it, when val/loss improves."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = checkpoint.checkpoint_dir(run_dir)

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        last = self.dir / checkpoint.LAST
        checkpoint.save_atomic(checkpoint.payload(engine), last)
        if record["improved"]:
            checkpoint.copy_atomic(last, self.dir / checkpoint.BEST)


class EpochLog(Callback):
    """One log line per epoch."""

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        width = len(str(engine.parts.cfg.trainer.max_epochs))
        log.info(
            "epoch %*d/%d  train %.5f  val %.5f%s  lr %.3g  %.0f samples/s",
            width, record["epoch"], engine.parts.cfg.trainer.max_epochs, record["train/loss"], record["val/loss"],
            " *" if record["improved"] else "  ", record["lr"], record["samples_per_s"],
        )
