"""summary.json: the run's status and numbers and where its files are, rewritten atomically at fit
start, every epoch's end ("running") and the fit's end.

Everything comes from the engine (state, history, parts) and from what is on disk (best.pt, the
loss curve, the newest picture), never from another callback.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aetrain.errors import AetrainError, WriteError
from aetrain.models import count_parameters
from aetrain.rundir import (
    BEST,
    LAST,
    LOSS_CURVE,
    RECONSTRUCTIONS,
    TENSORBOARD,
    RunDir,
    Status,
    checkpoint_dir,
    latest_picture,
    loss_curve_vector,
)
from aetrain.train.engine import Callback, Engine, TrainState

log = logging.getLogger(__name__)


class Summary(Callback):
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.dir = RunDir(run_dir)

    def on_fit_start(self, engine: Engine) -> None:
        self.start = time.perf_counter()
        self.earlier_s = self._earlier_wall_time(engine)
        self.num_parameters = count_parameters(engine.parts.model)
        self.write(engine)

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        self.write(engine)

    def on_fit_end(self, engine: Engine) -> None:
        ended = engine.status  # how the run ended
        try:
            self.write(engine, ended, error=None if ended.is_result else _error_in_flight(ended))
        except OSError as e:
            if ended.is_result:
                raise
            log.warning("%s", WriteError.of(e, " (the run's final status)"))  # the run's own error follows

    def on_abort(self, engine: Engine) -> None:
        """A second Ctrl-C: the run's end as the checkpoint on disk has it (engine.state may be past last.pt: an
        epoch counted whose checkpoint was never written), so that summary.json and last.pt agree."""
        state = _saved_state(self.run_dir)
        if state is None:
            return
        records = [r for r in engine.history if r["epoch"] <= state.epoch]
        ended = engine.status
        error = None if ended.is_result else \
            f"Interrupted: aborted by a second SIGINT; last.pt holds {engine.where(state)}"
        self.write(engine, ended, error=error, state=state, records=records)

    def write(self, engine: Engine, status: Status = Status.RUNNING, *, error: str | None = None,
              state: TrainState | None = None, records: list[dict[str, Any]] | None = None) -> None:
        """summary.json from the engine (or from `state` and `records`: what a checkpoint holds)."""
        p = engine.parts
        st = engine.state if state is None else state
        records = engine.history if records is None else records
        best = checkpoint_dir(self.run_dir) / BEST
        vector = self.run_dir / loss_curve_vector(p.cfg.outputs.figure_format)
        rates = [r["samples_per_s"] for r in records if _positive(r.get("samples_per_s"))]
        train_s = sum(p.data.num_train / r for r in rates)  # training-step time behind those epochs
        data = {
            "status": status.outcome,  # running | ok | failed; `ended` below says how
            "error": error,
            "best_val_loss": _finite(st.best_val_loss),
            "final_val_loss": _finite(records[-1]["val/loss"]) if records else None,
            "best_epoch": st.best_epoch or None,
            "epochs": st.epoch,
            "steps": st.step,
            "wall_time_s": round(self.earlier_s + time.perf_counter() - self.start, 3),
            "samples_per_s": round(p.data.num_train * len(rates) / train_s, 1) if train_s else None,
            "num_parameters": self.num_parameters,
            "device": str(p.data.device),
            "precision": p.cfg.trainer.precision,
            "model": p.cfg.model.name,
            "data": p.cfg.data.name,
            "best_checkpoint": self._relative(best if best.exists() else None),
            "last_grid": self._relative(latest_picture(self.run_dir / RECONSTRUCTIONS, up_to=st.epoch)),
            # beyond the agreed schema
            "ended": None if status is Status.RUNNING else status.value,  # how it ended (a Status); null while running
            "stop_reason": engine.stop_reason,  # why a run that ended ok stopped before max_epochs
            "max_epochs": p.cfg.trainer.max_epochs,
            "num_train": p.data.num_train,
            "num_val": p.data.num_val,
            "final": {k: _finite(v) for k, v in records[-1].items() if "/" in k} if records else {},
            "galleries": {g.folder: self._relative(latest_picture(self.run_dir / g.folder, up_to=st.epoch))
                          for g in p.galleries},
            "loss_curve": self._relative(self.run_dir / LOSS_CURVE if (self.run_dir / LOSS_CURVE).exists() else None),
            "loss_curve_vector": self._relative(vector if vector.exists() and vector.suffix != ".png" else None),
            "tensorboard": self._relative(self.run_dir / TENSORBOARD if (self.run_dir / TENSORBOARD).exists()
                                          else None),
            "run_dir": str(self.run_dir.resolve()),
            "run_id": engine.run_id,  # the same in the run's checkpoints: a resume writes here only if they match
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **engine.notes,  # how the run trained, when it says (a fused sweep's member: "group")
        }
        self.dir.write_summary(data, final=status is not Status.RUNNING)

    def _relative(self, path: Path | None) -> str | None:
        return None if path is None else path.relative_to(self.run_dir).as_posix()

    def _earlier_wall_time(self, engine: Engine) -> float:
        """Seconds the run trained before this session: its last summary.json, else the epochs' times."""
        if engine.state.epoch == 0:
            return 0.0
        earlier = self.dir.summary().get("wall_time_s")
        if isinstance(earlier, (int, float)) and math.isfinite(earlier):
            return float(earlier)
        return sum(r["epoch_time_s"] for r in engine.history if _positive(r.get("epoch_time_s")))


def _saved_state(run_dir: Path) -> TrainState | None:
    """The counters of the run's last.pt (a fresh TrainState when there is none yet); None when it cannot be read."""
    from aetrain import checkpoint as checkpoints

    if not (checkpoint_dir(run_dir) / LAST).is_file():
        return TrainState()
    try:
        return TrainState(**checkpoints.load(run_dir, mmap=True)["state"])
    except (AetrainError, KeyError, TypeError):
        return None


def _error_in_flight(ended: Status) -> str | None:
    """What stopped the run, as the sweep's summary writes it: `Type: first line of the message`.

    on_fit_end runs in the engine's `finally`, while the exception that ended the run is still
    propagating, so it is what `sys.exc_info()` holds there.
    """
    error = sys.exc_info()[1]
    if error is None:
        return f"the run ended: {ended}"
    if isinstance(error, OSError):  # a file that could not be written: say which, as the console does
        error = WriteError.of(error)
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _finite(value: Any) -> Any:
    """JSON has no inf or NaN: a number that is not finite (no epoch yet, a diverged run) is null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value
