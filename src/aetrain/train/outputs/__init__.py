"""What a run writes for people to look at, as callbacks built once by `build_outputs`.

- metrics.csv (`metrics`), one row per epoch;
- loss_curve.png, reconstructions/, a family's galleries (`pictures`);
- tensorboard/ (`tensorboard`);
- summary.json (`summary`);
- diagnostics.csv, diag/ TensorBoard scalars and the live findings of the training doctor (`diagnostics`);
- the console: header, epoch lines, a progress bar on a terminal (`console`), and the final
  table that the train command prints from summary.json;
- report.html (`report`), the run's page, written at the fit's end from the files the others wrote
  (last in the list: it reads their final files).

Each callback takes what it needs from the engine (its parts, state and `history`) or its
constructor; none reads another's attributes, so their order in the list does not matter, except
that the report comes last: it reads the files the others finish in their on_fit_end.
Resume: the history comes from the earlier metrics.csv (the train command puts it in
engine.history), TensorBoard purges events past the resumed step, pictures keep their epoch
numbers, and summary.json adds the earlier sessions' wall time.
"""

from __future__ import annotations

from pathlib import Path

from aetrain.config import DiagnosticsConfig, OutputsConfig
from aetrain.console import is_terminal
from aetrain.rundir import DIAG_TENSORBOARD, METRICS, TENSORBOARD
from aetrain.train.engine import Callback
from aetrain.train.outputs.console import EpochLog, EpochProgress, Header
from aetrain.train.outputs.diagnostics import Diagnostics
from aetrain.train.outputs.metrics import MetricsCSV
from aetrain.train.outputs.pictures import Pictures
from aetrain.train.outputs.report import Report
from aetrain.train.outputs.summary import Summary
from aetrain.train.outputs.tensorboard import ImageSink, TensorBoard

__all__ = ["build_outputs"]


def build_outputs(cfg: OutputsConfig, run_dir: Path, *, diagnostics: DiagnosticsConfig | None = None) -> list[Callback]:
    """Every output callback `cfg` (and `diagnostics`) asks for; one that is off is simply not in the list."""
    tensorboard = [TensorBoard(run_dir / TENSORBOARD)] if cfg.tensorboard else []
    doctor = [Diagnostics(run_dir, tensorboard=run_dir / TENSORBOARD / DIAG_TENSORBOARD if cfg.tensorboard else None)] \
        if diagnostics is not None and diagnostics.enabled else []
    pictures = [Pictures(cfg, run_dir, tensorboard[0] if tensorboard else ImageSink())] if cfg.plot_every else []
    progress = [EpochProgress()] if cfg.progress and is_terminal() else []
    report = [Report(run_dir)] if cfg.report else []  # last: it reads what the others wrote at the fit's end
    return [MetricsCSV(run_dir / METRICS), Header(run_dir), EpochLog(), *tensorboard, *pictures, *doctor,
            Summary(run_dir), *progress, *report]
