"""metrics.csv: one row per epoch, appended and flushed as each epoch ends.

Columns: epoch, step, then the run's metrics (`train/<term>` for each term the training
objective names, `train/grad_norm`, `val/<term>` for each validation term), then lr,
epoch_time_s, samples_per_s, memory_mb.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from aetrain.atomic import write_atomic
from aetrain.train.engine import Callback, Engine, metric_columns

TRAILING = ["lr", "epoch_time_s", "samples_per_s", "memory_mb"]


def columns(engine: Engine) -> list[str]:
    return ["epoch", "step", *metric_columns(engine.parts), *TRAILING]


class MetricsCSV(Callback):
    """On resume the file is rewritten from engine.history (the epochs up to the checkpoint), so rows
    written after the checkpoint by a run that then died are dropped, and a run resumed into another
    directory starts its file with the earlier epochs: one file holds the whole run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_fit_start(self, engine: Engine) -> None:
        self.columns = columns(engine)
        if engine.history or self.path.exists():
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=self.columns, extrasaction="ignore", restval="")
            writer.writeheader()
            writer.writerows({k: _fmt(v) for k, v in r.items()} for r in engine.history)
            write_atomic(self.path, text.getvalue())

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        new = not self.path.exists()
        try:
            with open(self.path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore", restval="")
                if new:
                    writer.writeheader()
                writer.writerow({k: _fmt(record.get(k)) for k in self.columns})
        except OSError as e:
            e.filename = e.filename or str(self.path)  # a failed write() names no file (a full disk)
            raise


def _fmt(value: Any) -> Any:
    return f"{value:.8g}" if isinstance(value, float) else value
