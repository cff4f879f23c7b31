"""The training doctor during a run: diagnostics.csv, TensorBoard scalars under diag/, and one line per
finding when it first holds.

`Diagnostics` reads the `LayerProbe`'s sampled steps right after the engine's own metric reads
(each log interval and each epoch's end), measures the reconstructions once per epoch
(`ReconstructionCheck`), appends the rows to diagnostics.csv, and runs the doctor's rules
(`aetrain.doctor`, the same rules `aetrain doctor` runs on a run dir) on what the run has measured
so far. A finding is logged once, as one warning line, the first time it holds; the run goes on.

Resume: diagnostics.csv keeps the rows up to the checkpoint's step (rows a run wrote after its
last checkpoint are dropped, as in metrics.csv); a run resumed into another directory starts its
file with the earlier run's rows. Findings that already held before the checkpoint are not
announced again.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path
from typing import Any

from aetrain import doctor
from aetrain.atomic import write_atomic
from aetrain.rundir import DIAGNOSTICS, DIAGNOSTICS_COLUMNS, read_diagnostics, run_dir_of
from aetrain.train.diagnostics import LayerProbe, ReconstructionCheck
from aetrain.train.engine import Callback, Engine
from aetrain.train.outputs.tensorboard import NoWriter

log = logging.getLogger(__name__)

STAT_COLUMNS = {"grad_norm": "grad_norm", "weight_norm": "weight_norm", "update_ratio": "update_ratio",
                "dead_share": "dead_share", "saturated_share": "saturated_share", "mean_abs": "code_mean_abs"}


class Diagnostics(Callback):
    def __init__(self, run_dir: Path, *, tensorboard: Path | None) -> None:
        self.path = run_dir / DIAGNOSTICS
        self.tensorboard_dir = tensorboard  # None = no diag/ scalars (outputs.tensorboard=false)
        self.writer: Any = None

    def on_fit_start(self, engine: Engine) -> None:
        p, st = engine.parts, engine.state
        probe = p.step.probe
        if not isinstance(probe, LayerProbe):
            raise TypeError("the Diagnostics output needs the step's LayerProbe (diagnostics.enabled=true)")
        self.probe = probe
        self.probe.start(st.step)
        self.steps_per_epoch = len(p.windows)
        self.check = ReconstructionCheck(p.data)
        spec = p.data.spec
        self.facts = doctor.Facts.of(p.cfg, spec.shape, unit_interval=spec.unit_interval,
                                     data_range=(spec.low, spec.high))
        self.trace = doctor.Trace()
        earlier = self._earlier_rows(engine)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=DIAGNOSTICS_COLUMNS, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(_formatted(r) for r in earlier)
        write_atomic(self.path, text.getvalue())
        self.trace.add_rows(earlier)
        for record in engine.history:
            self.trace.add_epoch(record)
        # what already held before a resume is not news
        self.reported = {f.code for f in doctor.diagnose(self.trace, self.facts)} if engine.history else set()
        self.resumed_at = st.step

    def _earlier_rows(self, engine: Engine) -> list[dict[str, Any]]:
        """The rows up to the checkpoint this run resumes from, from the run it belongs to (none when fresh)."""
        resume = engine.parts.cfg.trainer.resume
        if not resume or not engine.state.step:
            return []
        try:
            rows = read_diagnostics(run_dir_of(resume) / DIAGNOSTICS)
        except (ValueError, OSError):
            return []
        return [r for r in rows if isinstance(r.get("step"), int) and r["step"] <= engine.state.step]

    def on_log(self, engine: Engine, metrics: dict[str, float]) -> None:
        self._append(self._sampled_rows())

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        rows = self._sampled_rows()
        check = self.check.measure(engine.parts.model)
        rows.append({"step": record["step"], "epoch": record["epoch"], "layer": "reconstruction", "kind": "output",
                     **check})
        self._append(rows)
        self.trace.add_epoch(record)
        self._announce(doctor.diagnose(self.trace, self.facts, at=record["epoch"]))
        if self.writer is not None:
            self.writer.flush()

    def on_fit_end(self, engine: Engine) -> None:
        try:
            if not engine.status.is_result:  # the points since the last read, and what failed
                self._append(self._sampled_rows())
                self.trace.status = engine.status
                self.trace.failed_epoch = engine.state.epoch + 1
                self._announce(doctor.diagnose(self.trace, self.facts, at=engine.state.epoch + 1))
        except Exception as e:  # the run is already ending with its own error: never hide it
            log.warning("diagnostics: could not read the last sampled steps: %s: %s", type(e).__name__, e)
        finally:
            if self.writer is not None:
                self.writer.close()

    # --- rows --------------------------------------------------------------------------------------

    def _sampled_rows(self) -> list[dict[str, Any]]:
        """The probe's sampled steps since the last read, one row per layer (one transfer from the device)."""
        rows = []
        for step, values in self.probe.read():
            epoch = (step - 1) // self.steps_per_epoch + 1
            by_layer: dict[str, dict[str, Any]] = {}
            for column, value in zip(self.probe.columns, values):
                row = by_layer.setdefault(column.layer, {"step": step, "epoch": epoch, "layer": column.layer,
                                                         "kind": column.kind})
                if column.stat == "unit_var":
                    row.setdefault("code_unit_var", []).append(value)
                else:
                    row[STAT_COLUMNS[column.stat]] = value
            rows.extend(sorted(by_layer.values(), key=lambda row: self.probe.order[row["layer"]]))
        return rows

    def _append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=DIAGNOSTICS_COLUMNS, extrasaction="ignore", restval="")
            writer.writerows(_formatted(r) for r in rows)
        self.trace.add_rows(rows)
        if self.tensorboard_dir is not None:
            self._scalars(rows)

    def _announce(self, findings: list[doctor.Finding]) -> None:
        for finding in findings:
            if finding.code not in self.reported:
                self.reported.add(finding.code)
                log.warning("doctor: %s", finding.line())

    # --- TensorBoard -------------------------------------------------------------------------------

    def _scalars(self, rows: list[dict[str, Any]]) -> None:
        """diag/<layer>/<statistic> at each row's step, one event per step, in an event file of its own next to
        the run's: per layer grad_norm, weight_norm, update_ratio, dead_share or saturated_share; the code's
        mean_abs and (from the reconstruction check) unused_units; the check's data_error, noise_error, hf_ratio."""
        if self.writer is None:
            self._open()
        by_step: dict[int, list[Any]] = {}
        for row in rows:
            values = by_step.setdefault(row["step"], [])
            for key, value in row.items():
                if key in ("step", "epoch", "layer", "kind", "code_unit_var"):
                    continue
                tag = f"diag/{row['layer']}/{key.removeprefix('code_')}"
                if key == "code_unit_effect":
                    tag, value = "diag/code/unused_units", float(len(doctor.unused_units(value)))
                if isinstance(value, float) and math.isfinite(value):
                    values.append(self.Summary.Value(tag=tag, simple_value=value))
        for step, values in by_step.items():
            self.writer.add_event(self.Event(step=int(step), wall_time=time.time(), summary=self.Summary(value=values)))

    def _open(self) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.Event, self.Summary = event_pb2.Event, summary_pb2.Summary
        try:
            self.writer = EventFileWriter(str(self.tensorboard_dir), filename_suffix=".diag")
        except UnicodeError:  # a path tensorboard cannot name in this locale: the run's TensorBoard said so
            self.writer = NoWriter()
            return
        if self.resumed_at:  # resuming: TensorBoard hides what an earlier session logged after this step
            self.writer.add_event(self.Event(step=self.resumed_at + 1, wall_time=time.time(),
                                             session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))


def _formatted(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if isinstance(value, list):  # code_unit_var, code_unit_effect: one number per code unit
            out[key] = " ".join(f"{v:.4g}" for v in value)
        elif isinstance(value, float):
            out[key] = f"{value:.6g}"
        else:
            out[key] = value
    return out
