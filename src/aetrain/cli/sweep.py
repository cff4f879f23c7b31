"""Sweeps (`aetrain -m ...`): a failed job is recorded instead of sinking the sweep, and every
multirun ends with a summary of its jobs.

This is CLI-side code (it imports Hydra). Its pieces:
- `SweepSummary`, the Hydra callback named in configs/train.yaml (`hydra.callbacks`): it refuses
  a sweep dir that already holds a sweep and, once the sweeper is done, summarises the sweep;
- `summarize(sweep_dir)` reads every job dir and writes `sweep_summary.csv` (one row per job,
  best objective first, failed jobs last) and `sweep_objective.png`, and prints the table;
- `record_failure` marks a failed job in its summary.json; `finish` hands the jobs' results to the
  CLI for its exit code, and summarises a sweep whose sweeper stopped before its end;
- `Stopped` carries a user's interrupt out of a job through Hydra's sweepers, which would
  otherwise count it as one more failed job and go on.

A job's results come from its run dir: `summary.json` when the run wrote one, else `metrics.csv`
(best = lowest val/loss, epochs = rows, wall time = the epochs' summed time).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aetrain.atomic import write_atomic
from aetrain.rundir import HYDRA, METRICS, SUMMARY, read_metrics, read_summary

SUMMARY_CSV = "sweep_summary.csv"
CURVES_PNG = "sweep_curves.png"
NAMED_CURVES = 10  # jobs named in sweep_curves.png's legend, best first; the others are drawn in grey
CURVE_COLOURS = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9", "black"]  # tab10 without its grey
MARKER = ".aetrain-sweep"  # created exclusively when a sweep starts: two sweeps never share a dir
OBJECTIVE_PNG = "sweep_objective.png"
COLUMNS = ["job", "overrides", "status", "error", "best_val_loss", "epochs", "wall_time_s", "run_dir",
           "group"]  # fused sweeps (i23): the fused group a job trained in, "" for a job trained alone


@dataclass
class JobResult:
    """One job of a sweep, as its run dir tells it."""

    job: int  # hydra.job.num
    run_dir: Path
    overrides: list[str] = field(default_factory=list)  # the job's command-line overrides, swept values included
    status: str = "failed"  # ok | failed
    error: str = ""  # why it failed, one line ("ExceptionType: message"); "" when ok
    best_val_loss: float = math.nan  # the objective; NaN when the job has none
    epochs: int | None = None  # epochs trained; None when unknown
    wall_time_s: float | None = None  # training time; None when unknown
    group: str = ""  # fused sweeps (i23): the fused group it trained in (summary.json "group"); "" when alone

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def ranked(self) -> bool:
        """Whether the job has an objective to rank by."""
        return self.ok and math.isfinite(self.best_val_loss)


class Stopped(BaseException):
    """A job was interrupted (Ctrl-C, SIGTERM): the whole sweep stops.

    A BaseException, so that Hydra's job runner and sweepers, which catch Exception, let it
    through instead of recording one more failed job and starting the next.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


# --- one job ---------------------------------------------------------------------------------

def record_failure(run_dir: Path, error: str) -> None:
    """Mark the job in `run_dir` failed in its summary.json, keeping whatever the run wrote there."""
    path = run_dir / SUMMARY
    summary = read_summary(run_dir)
    summary.update(status="failed", error=error)
    write_atomic(path, json.dumps(summary, indent=2, default=str) + "\n")


def read_job(run_dir: Path) -> JobResult:
    """What one job's run dir says about it (see the module docstring for the sources)."""
    hydra_dir = run_dir / HYDRA
    result = JobResult(job=_job_num(hydra_dir, run_dir), run_dir=run_dir.resolve())
    if (hydra_dir / "overrides.yaml").is_file():
        result.overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
    summary = read_summary(run_dir)
    metrics = _read_metrics(run_dir / METRICS)
    if metrics:
        losses = [v for v in (_float(r.get("val/loss")) for r in metrics) if math.isfinite(v)]
        result.best_val_loss = min(losses, default=math.nan)
        result.epochs = len(metrics)
        result.wall_time_s = sum(_float(r.get("epoch_time_s")) for r in metrics)
    if summary.get("status") is not None:  # the run's own numbers; null best = no finite val/loss
        result.best_val_loss = _float(summary.get("best_val_loss"))
    if summary.get("epochs") is not None:
        result.epochs = int(summary["epochs"])
    if summary.get("wall_time_s") is not None:
        result.wall_time_s = _float(summary["wall_time_s"])

    result.group = group_id(summary.get("group"))  # fused sweeps (i23)
    status = summary.get("status")
    if status in ("ok", "failed"):
        result.status, result.error = status, _one_line(summary.get("error") or "")
    elif status == "running":
        result.error = "did not finish: its process ended during training (killed, or out of memory?)"
    elif metrics:
        result.status = "ok"  # a run from before summary.json: metrics.csv is all there is
    else:
        result.error = "no result: the job ended before training started"
    if result.status == "failed" and not result.error:
        result.error = "failed (no reason recorded)"
    return result


def group_id(group: Any) -> str:  # fused sweeps (i23)
    """The fused group a job trained in, from its summary.json's `group` (an object with an `id`, or a plain
    name); "" for a job trained alone."""
    if isinstance(group, dict):
        group = group.get("id")
    return "" if group is None or isinstance(group, (dict, list)) else str(group)


def _job_num(hydra_dir: Path, run_dir: Path) -> int:
    if (hydra_dir / "hydra.yaml").is_file():
        num = OmegaConf.select(OmegaConf.load(hydra_dir / "hydra.yaml"), "hydra.job.num")
        if isinstance(num, int):
            return num
    return int(run_dir.name) if run_dir.name.isdigit() else -1


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    try:
        return read_metrics(path)
    except (OSError, ValueError):  # not a metrics table: the job has no results to read from it
        return []


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


# --- the whole sweep -------------------------------------------------------------------------

def job_dirs(sweep_dir: Path) -> list[Path]:
    """The run dirs of a sweep's jobs: every dir with a `.hydra/` up to three levels down (wherever
    hydra.sweep.subdir put it), and numbered dirs without one (a job that ended before it wrote
    anything). Not deeper: a sweep dir pointed at a big tree must not be searched to the bottom."""
    found = {p.parent.parent for depth in (1, 2, 3)
             for p in sweep_dir.glob("*/" * depth + ".hydra/overrides.yaml")}
    if sweep_dir.is_dir():
        found |= {p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()}
    return sorted(found)


def collect(sweep_dir: Path) -> list[JobResult]:
    """Every job of the sweep, best objective first; failed jobs (and jobs without one) last, by number."""
    results = [read_job(d) for d in job_dirs(sweep_dir)]
    return sorted(results, key=lambda r: (not r.ranked, r.best_val_loss if r.ranked else 0.0, r.job))


def summarize(sweep_dir: Path) -> list[JobResult]:
    """Write sweep_summary.csv and sweep_objective.png into `sweep_dir` and print the table."""
    results = collect(sweep_dir)
    if not results:
        return results  # the sweep stopped before any job ran (a composition error): nothing to say
    write_csv(results, sweep_dir / SUMMARY_CSV)
    plot_objective(results, sweep_dir / OBJECTIVE_PNG)
    plot_curves(results, sweep_dir / CURVES_PNG)
    print_table(results, sweep_dir)
    return results


def write_csv(results: list[JobResult], path: Path) -> None:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(COLUMNS)
    for r in results:
        writer.writerow([
            r.job, " ".join(r.overrides), r.status, r.error,
            f"{r.best_val_loss:.8g}" if math.isfinite(r.best_val_loss) else "",
            "" if r.epochs is None else r.epochs,
            "" if r.wall_time_s is None else f"{r.wall_time_s:.2f}",
            str(r.run_dir), r.group,  # fused sweeps (i23): the group column
        ])
    write_atomic(path, text.getvalue())  # a reader never sees half a table


def varying_overrides(results: list[JobResult]) -> tuple[list[list[str]], list[str]]:
    """Each job's overrides without those every job shares, and the shared ones."""
    if len(results) < 2:
        return [r.overrides for r in results], []
    common = set.intersection(*(set(r.overrides) for r in results))
    shared = [o for o in results[0].overrides if o in common]
    return [[o for o in r.overrides if o not in common] for r in results], shared


def _short(override: str) -> str:
    """`optimizer.lr=0.0012520653814999472` as `optimizer.lr=0.001252` for the table (the CSV keeps all digits)."""
    key, sep, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return f"{key}={number:.4g}" if sep and len(value) > 8 and math.isfinite(number) else override


def _tick(override: str) -> str:
    """`optimizer.lr=0.001` as `lr=0.001`, `model=conv_ae` as it is: a short label under a job."""
    key, _, value = _short(override).partition("=")
    return f"{key.rpartition('.')[2]}={value}"


def _plain_head() -> Any:
    from rich.box import Box

    return Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)  # box.SIMPLE_HEAD in ASCII


def print_table(results: list[JobResult], sweep_dir: Path) -> None:
    """The summary as a rich table on stdout: colours on a terminal, plain text otherwise."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    interactive = sys.stdout.isatty()
    # Off a terminal rich assumes 80 columns and would fold the table; logs have room.
    console = Console(highlight=False, width=None if interactive else 200)
    varying, shared = varying_overrides(results)
    failed = sum(not r.ok for r in results)
    table = Table(
        caption=f"same in every job: {' '.join(shared)}" if shared else None,
        box=box.SIMPLE_HEAD if interactive else _plain_head(), caption_justify="left",
    )
    table.add_column("job", justify="right")
    table.add_column("status")
    table.add_column("best val/loss", justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("time", justify="right")
    table.add_column("overrides", overflow="fold")  # wrapped on a narrow terminal, never cut
    grouped = any(r.group for r in results)  # fused sweeps (i23): a group column when jobs trained fused
    if grouped:  # fused sweeps (i23)
        table.add_column("group", justify="right")  # fused sweeps (i23)
    if failed:
        table.add_column("error", overflow="fold")
    best = results[0] if results[0].ranked else None
    for r, overrides in zip(results, varying):
        table.add_row(
            str(r.job), r.status,
            f"{r.best_val_loss:.5g}" if math.isfinite(r.best_val_loss) else "-",
            "-" if r.epochs is None else str(r.epochs),
            "-" if r.wall_time_s is None else f"{r.wall_time_s:.1f}s",
            " ".join(_short(o) for o in overrides), *([r.group or "-"] if grouped else []),  # fused sweeps (i23)
            *([r.error] if failed else []),
            style="bold green" if r is best else ("red" if not r.ok else None),
        )
    header = f"sweep {sweep_dir}: {len(results) - failed} ok, {failed} failed"  # not the table's title: rich would fold a long path
    footer = f"written: {sweep_dir / SUMMARY_CSV}, {sweep_dir / OBJECTIVE_PNG}, {sweep_dir / CURVES_PNG}"
    if interactive:
        console.print(header, style="bold", soft_wrap=True)
        console.print(table)
        console.print(footer, soft_wrap=True)
    else:  # rich pads every line to the table's width; logs are better without the trailing blanks
        with console.capture() as captured:
            console.print(table)
        text = "\n".join(line.rstrip() for line in captured.get().splitlines())
        sys.stdout.write(f"{header}\n{text}\n{footer}\n")
        sys.stdout.flush()


def plot_objective(results: list[JobResult], path: Path) -> None:
    """The objective of each job in launch order, the best so far as a line, failed jobs as red crosses."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ordered = sorted(results, key=lambda r: r.job)
    ranked = [r for r in ordered if r.ranked]
    failed = [r for r in ordered if not r.ranked]
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if ranked:
        values = [r.best_val_loss for r in ranked]
        ax.plot([r.job for r in ranked], values, "o", color="C0", label="job")
        running = [min(values[: i + 1]) for i in range(len(values))]
        ax.step([r.job for r in ranked], running, where="post", color="C0", alpha=0.4, label="best so far")
        best = min(ranked, key=lambda r: r.best_val_loss)
        ax.plot([best.job], [best.best_val_loss], "*", color="C2", markersize=14, label="best")
        if max(values) / min(values) > 20 and min(values) > 0:
            ax.set_yscale("log")  # a diverging corner of the grid would flatten everything else
    if failed:
        if ranked:  # headroom above the values: failed jobs have none to be placed by, they go on top
            lo, hi = ax.get_ylim()
            ax.set_ylim(lo, hi * (hi / lo) ** 0.3 if ax.get_yscale() == "log" else hi + 0.3 * (hi - lo))
            ax.axhline(hi, color="0.6", linewidth=0.8, linestyle=":")  # above it: no value
        ax.plot([r.job for r in failed], [0.9] * len(failed), "x", color="C3", markersize=9, mew=2,
                transform=ax.get_xaxis_transform(), label="failed")
        for r in failed[:30]:  # beyond that the labels would only overlap
            ax.annotate("failed", (r.job, 0.9), xycoords=ax.get_xaxis_transform(), xytext=(0, 8),
                        textcoords="offset points", ha="center", fontsize=7, color="C3")
    ax.set_xlabel("job (hydra.job.num)")
    ax.set_ylabel("best val/loss (lower is better)")
    title = f"{path.parent.name}: {len(ranked)} of {len(results)} jobs ok"
    if ranked:
        title += f"; best: job {best.job}, {best.best_val_loss:.4g}"
    ax.set_title(title, fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    jobs = [r.job for r in ordered]
    varying, _ = varying_overrides(ordered)
    if len(ordered) <= 12 and all(len(v) <= 2 for v in varying):  # a small grid: name each job's values
        ax.set_xticks(jobs, [f"{j}\n" + "\n".join(_tick(o) for o in v) for j, v in zip(jobs, varying)], fontsize=7)
    ax.set_xlim(min(jobs) - 0.5, max(jobs) + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))


def _curves(results: list[JobResult]) -> list[tuple[JobResult, list[str], list[float], list[float]]]:
    """(job, its varying overrides, epochs, val/loss) of every job that has validation losses, best first."""
    varying, _ = varying_overrides(results)
    out = []
    for r, overrides in zip(results, varying):
        rows = [row for row in _read_metrics(r.run_dir / METRICS) if isinstance(row.get("epoch"), int)]
        if rows:
            out.append((r, overrides, [row["epoch"] for row in rows], [_float(row.get("val/loss")) for row in rows]))
    return out


def curve_labels(results: list[JobResult]) -> list[str]:
    """The legend of sweep_curves.png: the best NAMED_CURVES jobs by what varies, then how many others."""
    curves = _curves(results)
    labels = [_curve_label(r, overrides) for r, overrides, _, _ in curves[:NAMED_CURVES]]
    others = len(curves) - NAMED_CURVES
    return labels + ([f"{others} other job{'s' if others > 1 else ''}"] if others > 0 else [])


def _curve_label(r: JobResult, overrides: list[str]) -> str:
    values = " ".join(_tick(o) for o in overrides) or "(no overrides)"
    return f"job {r.job}{'' if r.ok else ' (failed)'}: {values}"


def plot_curves(results: list[JobResult], path: Path) -> None:
    """Every job's val/loss per epoch in one picture: the best NAMED_CURVES in colour and named by the overrides
    that vary between jobs, the rest in thin grey; failed jobs dotted; the best job's best epoch starred. The
    axis follows the jobs that finished (log scale when they span a decade): a failed job's blow-up would
    flatten the rest, so it may leave the picture, which its legend entry then says."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    curves = _curves(results)
    if not curves:
        return
    positive = lambda losses: [v for v in losses if math.isfinite(v) and v > 0]  # noqa: E731
    scaled = [v for r, _, _, losses in curves if r.ok for v in positive(losses)] or \
        [v for *_, losses in curves for v in positive(losses)]
    log = bool(scaled) and max(scaled) / min(scaled) >= 10
    if scaled:
        pad = 0.05 * (max(scaled) - min(scaled)) or 0.05 * max(scaled)
        low, high = (min(scaled) / 1.15, max(scaled) * 1.15) if log else (min(scaled) - pad, max(scaled) + pad)
    fig = Figure(figsize=(9.0, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    named, others = curves[:NAMED_CURVES], curves[NAMED_CURVES:]
    for r, _, epochs, losses in others:  # behind the named ones
        ax.plot(epochs, losses, color="0.6", linewidth=0.8, alpha=0.5, linestyle="-" if r.ok else ":")
    if others:
        ax.plot([], [], color="0.6", linewidth=0.8, label=curve_labels(results)[-1])
    for i, (r, overrides, epochs, losses) in enumerate(named):
        off = scaled and not r.ok and all(v > high for v in positive(losses))
        ax.plot(epochs, losses, color=CURVE_COLOURS[i], linewidth=2.0 if i == 0 else 1.3,
                linestyle="-" if r.ok else ":", marker="o" if len(epochs) <= 30 else "", markersize=3,
                label=_curve_label(r, overrides) + (" (above the scale)" if off else ""), zorder=3 + i)
    best = next(((e, v) for r, _, e, v in curves if r.ranked), None)
    if best is not None:
        epochs, losses = best
        i = min(range(len(losses)), key=lambda k: losses[k] if math.isfinite(losses[k]) else math.inf)
        ax.plot([epochs[i]], [losses[i]], "*", color="C0", markersize=14, markeredgecolor="black",
                markeredgewidth=0.6, zorder=20)
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))  # 0.02, not 2x10^-2
        if max(scaled) / min(scaled) < 100:  # one or two decades have one or two major ticks: label 2s and 5s too
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.3g}" if f"{v:.0e}"[0] in "25" else ""))
    if scaled:
        ax.set_ylim(low, high)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss")
    shared = varying_overrides(results)[1]
    title = f"{path.parent.name}: val/loss per epoch of {len(curves)} job{'s' if len(curves) > 1 else ''}"
    if shared:  # wrapped to the axes' width, at most two lines: the table and the CSV have them all
        lines = textwrap.wrap(f"same in every job: {' '.join(_short(o) for o in shared)}", 95)
        title += "\n" + "\n".join(lines[:2]) + (" ..." if len(lines) > 2 else "")
    ax.set_title(title, fontsize=9, loc="left")
    ax.grid(alpha=0.3)
    ax.grid(alpha=0.1, which="minor")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda k: labels[k].endswith(("other job", "other jobs")))  # others last
    fig.legend([handles[k] for k in order], [labels[k] for k in order], loc="outside right upper", fontsize=8,
               title="best first", title_fontsize=8)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))


# --- Hydra's callback and the CLI's view of the sweep ----------------------------------------

@dataclass
class _Sweep:
    """The multirun this process is running: its dir once it starts, its results once summarised."""

    dir: Path | None = None
    results: list[JobResult] | None = None


_current = _Sweep()


def finish() -> list[JobResult] | None:
    """The results of the multirun this process ran, or None after a single run.

    Summarises the sweep first when its end was never reached (a sweeper that stopped early,
    Ctrl-C), so the jobs that ran are still in the table. Forgets the sweep: call it once.
    """
    sweep, _current.dir, _current.results = _Sweep(_current.dir, _current.results), None, None
    if sweep.dir is None:
        return None
    return sweep.results if sweep.results is not None else summarize(sweep.dir)


def previous_sweep(sweep_dir: Path) -> str | None:
    """What in `sweep_dir` shows an earlier (or a running) sweep: its marker, a summary or a job dir; or None."""
    for name in (MARKER, SUMMARY_CSV):
        if (sweep_dir / name).exists():
            return name
    dirs = job_dirs(sweep_dir)
    return f"{dirs[0].relative_to(sweep_dir)}/" if dirs else None


class SweepSummary(Callback):
    """Hydra callback (configs/train.yaml: hydra.callbacks). Runs in the process that launched the
    sweep, whichever launcher ran the jobs."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_launcher(config)  # fused sweeps (i23): before any dir is made, so a corrected command can use it
        try:
            sweep_dir = Path(config.hydra.sweep.dir)  # resolving it claims the default dir (aetrain.new_dir)
        except OmegaConfBaseException as e:
            from aetrain.cli.report import describe

            sys.stderr.write(f"aetrain: error: {describe(e)}\n")
            sys.exit(2)
        # Jobs of a second sweep would be refused by the runs already there, and the summary would
        # mix both. Hydra turns a callback's exception into a warning, hence the exits here.
        resuming = OmegaConf.select(config, "hydra.launcher.resume", default=False) is True  # fused sweeps (i23)
        if resuming and not (sweep_dir / "multirun.yaml").is_file():  # fused sweeps (i23): nothing to continue
            sys.stderr.write(f"aetrain: hydra.launcher.resume=true: hydra.sweep.dir={sweep_dir} holds no sweep to "
                             f"continue; starting it\n")  # fused sweeps (i23)
            resuming = False  # fused sweeps (i23)
        if resuming:  # fused sweeps (i23)
            _check_same_sweep(config, sweep_dir)  # fused sweeps (i23)
        used = None if resuming else previous_sweep(sweep_dir) or _claim(sweep_dir)  # fused sweeps (i23)
        if used:
            sys.stderr.write(f"aetrain: error: hydra.sweep.dir={sweep_dir} already holds a sweep ({used}); "
                             f"choose another hydra.sweep.dir\n")
            sys.exit(2)
        _current.dir, _current.results = sweep_dir, None
        if "optuna" in str(OmegaConf.select(config, "hydra.sweeper._target_", default="")):
            _route_optuna_logs()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if _current.dir is not None:
            _current.results = summarize(_current.dir)


def _check_launcher(config: DictConfig) -> None:  # fused sweeps (i23)
    """hydra/launcher=fused's values its schema cannot refuse (hydra.launcher.max_group=0): one line, exit 2."""
    from hydra_plugins.aetrain_fused.fused_launcher import FusedLauncherConf, check

    from aetrain.errors import ConfigError

    if OmegaConf.select(config, "hydra.launcher._target_", default=None) == FusedLauncherConf._target_:
        try:
            check(config.hydra.launcher)
        except ConfigError as e:
            sys.stderr.write(f"aetrain: error: {e}\n")
            sys.exit(2)


def _check_same_sweep(config: DictConfig, sweep_dir: Path) -> None:  # fused sweeps (i23)
    """hydra.launcher.resume=true continues the sweep in `sweep_dir`: one with other values (whose jobs would be
    kept or continued as this command's) is refused in one line, before Hydra writes its multirun.yaml over the
    one there."""
    path = sweep_dir / "multirun.yaml"
    before = [str(o) for o in OmegaConf.select(OmegaConf.load(path), "hydra.overrides.task", default=[]) or []]
    now = [str(o) for o in config.hydra.overrides.task]
    if before != now:
        sys.stderr.write(f"aetrain: error: hydra.launcher.resume=true: hydra.sweep.dir={sweep_dir} holds another "
                         f"sweep ({' '.join(before) or 'no overrides'}); resume it with the command it printed when "
                         f"it stopped, or choose another hydra.sweep.dir\n")
        sys.exit(2)


def _claim(sweep_dir: Path) -> str | None:
    """Mark `sweep_dir` as this sweep's by creating its marker exclusively; the marker's name when another
    sweep got there first. A dir that cannot be made is a one-line error."""
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(sweep_dir / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return MARKER
    except OSError as e:
        sys.stderr.write(f"aetrain: error: hydra.sweep.dir={sweep_dir}: cannot create it: {e.strerror}\n")
        sys.exit(2)
    with os.fdopen(fd, "w") as f:
        f.write(f"a sweep started by pid {os.getpid()}\n")
    return None


def _route_optuna_logs() -> None:
    """Send Optuna's messages through Hydra's console handler: Optuna's own one colours them even off
    a terminal. Optuna imports alembic, which announces its plugins at INFO level: quiet."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
