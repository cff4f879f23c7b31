"""What the console shows: a header, a line per epoch, a live progress bar, and a final table of results and files.

Everything but the progress bar goes through `logging`, so train.log holds what the console
showed. The console handler itself (`aetrain.console.console_handler`, named in
configs/hydra/job_logging/aetrain.yaml) is rich on a terminal and plain lines otherwise: a log
file, CI or a cluster's job output gets no redraws, colours or wrapping at 80 columns.
"""

from __future__ import annotations

import atexit
import io
import logging
import math
import sys
import time
from itertools import accumulate
from pathlib import Path
from typing import Any

from aetrain.models import count_parameters
from aetrain.rundir import Status, read_summary
from aetrain.train.engine import Callback, Engine

log = logging.getLogger(__name__)


class Header(Callback):
    """A few lines at the start: model and size, data shape and split, device, precision, run dir."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_fit_start(self, engine: Engine) -> None:
        p, st = engine.parts, engine.state
        cfg, spec = p.cfg, p.data.spec
        backbone = f"{cfg.model.backbone} backbone, " if hasattr(cfg.model, "backbone") else ""
        lines = [
            ("model", f"{cfg.model.name} ({backbone}latent {cfg.model.latent_dim}), "
                      f"{count_parameters(p.model):,} parameters"),
            ("data", f"{spec.name} {'x'.join(map(str, spec.shape))}, {p.data.num_train:,} train / "
                     f"{p.data.num_val:,} val samples, batch {cfg.data.batch_size}"),
            ("device", f"{p.data.device}{_threads(p.data.device)}, precision {cfg.trainer.precision}"),
            ("output", str(self.run_dir)),
        ]
        if p.data.note:
            lines.insert(2, ("", p.data.note))
        if world := engine.world.describe():  # data-parallel: the processes, and the batch they train together
            lines.insert(3, ("ddp", f"{world}; global batch {cfg.data.batch_size * engine.world.size} "
                                    f"({cfg.data.batch_size} per process)"))
        if st.epoch or st.step:
            lines.append(("resume", engine.where()))  # as the interrupt that stopped it said it
        elif cfg.trainer.init_from:
            lines.append(("init", f"the weights of {cfg.trainer.init_from}"))
        epochs = cfg.trainer.max_epochs
        log.info("aetrain: %s on %s for %d epoch%s", cfg.model.name, spec.name, epochs, "" if epochs == 1 else "s")
        for key, text in lines:
            log.info("  %-7s %s", key, text)


def _threads(device: Any) -> str:
    """The CPU threads torch computes with, when the CPU trains (trainer.num_threads)."""
    import torch

    if device.type != "cpu":
        return ""
    n = torch.get_num_threads()
    return f", {n} thread{'s' if n != 1 else ''}"


class EpochProgress(Callback):
    """A transient rich progress bar for the epoch under way: steps, running loss, samples/s, time left.

    Only built when stdout is a terminal. Refreshed from `on_step` at most ten times a second,
    with no background thread, so it costs the loop a few microseconds a step. The loss is the
    running mean of the epoch under way: read from the engine's meter (one host sync) at the
    epoch's first step and then at most every LOSS_EVERY_S, or taken from a log interval's read;
    "-" until the epoch has one.
    """

    REFRESH_S = 0.1
    LOSS_EVERY_S = 0.5

    def on_fit_start(self, engine: Engine) -> None:
        from rich import get_console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        p = engine.parts
        self.max_epochs = p.cfg.trainer.max_epochs
        sizes = p.data.train.plan.global_sizes  # every process together: the run's samples per step
        windows = [len(w) for w in p.windows]  # micro-batches per optimizer step
        self.samples = [0, *accumulate(sum(sizes[a - n : a]) for n, a in zip(windows, accumulate(windows)))]
        self.loss = "-"
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} samples/s"),
            TimeRemainingColumn(), console=get_console(), transient=True, auto_refresh=False)
        self.width = len(str(self.max_epochs))
        self.task = self.progress.add_task("train", total=len(windows), epoch=self._epoch(engine), loss="-", rate="-")
        self.progress.start()
        atexit.register(self.progress.stop)  # a run killed mid-epoch still gets its cursor back

    def on_epoch_start(self, engine: Engine) -> None:
        st = engine.state
        self.tic, self.start_samples, self.last = time.perf_counter(), self.samples[st.step_in_epoch], 0.0
        self.loss, self.loss_read = "-", -math.inf  # nothing of this epoch yet (not the last epoch's loss)
        self.progress.reset(self.task, completed=st.step_in_epoch, epoch=self._epoch(engine), loss=self.loss, rate="-")
        self.progress.refresh()

    def _epoch(self, engine: Engine) -> str:
        return f"{engine.state.epoch + 1:>{self.width}}/{self.max_epochs}"

    def on_step(self, engine: Engine) -> None:
        now = time.perf_counter()
        if now - self.last < self.REFRESH_S:
            self.progress.update(self.task, completed=engine.state.step_in_epoch)
            return
        self.last = now
        if now - self.loss_read >= self.LOSS_EVERY_S and engine.meter is not None:
            self.loss_read = now
            # one sync; the non-finite policy stays the loop's
            self.loss = f"{engine.meter.read()[0]['train/loss']:.5f}"
        rate = (self.samples[engine.state.step_in_epoch] - self.start_samples) / max(now - self.tic, 1e-9)
        self.progress.update(self.task, completed=engine.state.step_in_epoch, rate=f"{rate:,.0f}", loss=self.loss)
        self.progress.refresh()

    def on_log(self, engine: Engine, metrics: dict[str, float]) -> None:
        self.loss, self.loss_read = f"{metrics['train/loss']:.5f}", time.perf_counter()  # read anyway: no sync more

    def on_fit_end(self, engine: Engine) -> None:
        self.progress.stop()
        atexit.unregister(self.progress.stop)


class EpochLog(Callback):
    """One log line per epoch, and why the run stopped when it stopped before trainer.max_epochs."""

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        width = len(str(engine.parts.cfg.trainer.max_epochs))
        log.info(
            "epoch %*d/%d  train %.5f  val %.5f%s  lr %.3g  %.0f samples/s",
            width, record["epoch"], engine.parts.cfg.trainer.max_epochs, record["train/loss"], record["val/loss"],
            " *" if record["improved"] else "  ", record["lr"], record["samples_per_s"],
        )

    def on_fit_end(self, engine: Engine) -> None:
        if engine.stop_reason:
            log.info("%s", engine.stop_reason)


def final_table(run_dir: Path) -> list[str]:
    """The lines of the table printed when a run ends: its summary.json's results and where each output is."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    s = read_summary(run_dir)
    if not s:
        return []
    ended = Status.of(s) or Status.OK
    took = f"{s['wall_time_s']:.1f} s"
    title = {Status.OK: f"finished in {took}", Status.STOPPED_EARLY: f"stopped early after {took}"}.get(
        ended, f"stopped ({ended}) after {took}")
    utf8 = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "") == "utf8"
    table = Table(title=f"aetrain: {title}", box=box.ROUNDED if utf8 else box.ASCII, show_header=False,
                  title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    best = f"{s['best_val_loss']:.6g} (epoch {s['best_epoch']})" if s["best_val_loss"] is not None else "-"
    final = f"{s['final_val_loss']:.6g}" if s["final_val_loss"] is not None else "-"
    rate = f"{s['samples_per_s']:,.0f} samples/s" if s["samples_per_s"] else "-"
    rows = [
        ("best val/loss", best),
        ("final val/loss", final),
        ("epochs, steps", f"{s['epochs']} of {s['max_epochs']}, {s['steps']:,} step{'' if s['steps'] == 1 else 's'}"),
        ("throughput", f"{rate} ({s['device']}, precision {s['precision']})"),
        ("run dir", str(run_dir)),
    ]
    if s.get("stop_reason"):
        rows.insert(3, ("stopped", s["stop_reason"]))
    if s.get("loss_curve"):
        rows.append(("loss curve", ", ".join(filter(None, [s["loss_curve"], s.get("loss_curve_vector")]))))
    if s.get("last_grid"):
        rows.append(("reconstructions", f"{s['last_grid']} (the latest picture)"))
    for folder, path in (s.get("galleries") or {}).items():
        if path:
            rows.append((folder, f"{path} (the latest picture)"))
    if s.get("tensorboard"):
        rows.append(("tensorboard", f"tensorboard --logdir {run_dir / s['tensorboard']}"))
    if s.get("best_checkpoint"):
        rows.append(("best checkpoint", s["best_checkpoint"]))
    if (run_dir / "report.html").is_file():
        rows.append(("report", "report.html (all of it on one page: open it in a browser)"))
    rows.append(("also", "summary.json, metrics.csv, train.log, .hydra/config.yaml"))
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    for key, value in rows:  # escaped as the console will show it, so the table's columns line up
        table.add_row(key, value.encode(encoding, "backslashreplace").decode(encoding))
    text = io.StringIO()
    Console(file=text, width=400, color_system=None, force_terminal=False, legacy_windows=False,
            emoji=False, highlight=False).print(table)
    return [line.rstrip() for line in text.getvalue().rstrip().splitlines()]
