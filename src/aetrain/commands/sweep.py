"""A sweep's report, as a library: every job's result read from its run dir, the table, sweep_summary.csv and
the two pictures. Hydra-free: `aetrain -m` writes it when its sweeper is done (`aetrain.cli.sweep`'s callback),
`aetrain sweep <dir>` writes it again for any sweep dir (also one whose sweeper was killed), and other tools
call it.

- `read_job(run_dir)`: what one job's run dir says (`JobResult`);
- `collect(sweep_dir)`: every job, best objective first, failed jobs last; `summarize(sweep_dir)` also
  writes `sweep_summary.csv`, `sweep_objective.png` and `sweep_curves.png`;
- `table(results, sweep_dir)`: the console table, as text;
- `claim(sweep_dir)`: a sweep's dir, held by its marker (two sweeps never share a dir);
- `refuse_resume`, `refuse_resume_jobs`: finishing an interrupted sweep in its dir (`hydra.launcher.resume=true`):
  whether it may be (what becomes of each job, kept, continued or started, is `aetrain.rundir.prepare_resume`,
  the rule both launchers follow);
- `summarize_dir(sweep_dir)`: the `aetrain sweep` command.

A job's results come from its run dir: `summary.json` when the run wrote one, else `metrics.csv`
(best = lowest val/loss, epochs = rows, wall time = the epochs' summed time).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aetrain.atomic import write_atomic
from aetrain.errors import ConfigError
from aetrain.rundir import (
    HYDRA,
    METRICS,
    MULTIRUN,
    SWEEP_MARKER,
    SWEEP_SUMMARY,
    RunDir,
    Status,
    fused_group,
    job_dirs,
    read_metrics,
    resuming,
)

log = logging.getLogger(__name__)

SUMMARY_CSV = SWEEP_SUMMARY
CURVES_PNG = "sweep_curves.png"
NAMED_CURVES = 10  # jobs named in sweep_curves.png's legend, best first; the others are drawn in grey
CURVE_COLOURS = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9", "black"]  # tab10 without its grey
MARKER = SWEEP_MARKER
OBJECTIVE_PNG = "sweep_objective.png"
COLUMNS = ["job", "overrides", "status", "error", "best_val_loss", "epochs", "wall_time_s", "run_dir", "group"]


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
    group: str = ""  # the fused group it trained in (hydra/launcher=fused, summary.json's "group"); "" when alone

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def ranked(self) -> bool:
        """Whether the job has an objective to rank by."""
        return self.ok and math.isfinite(self.best_val_loss)


# --- one job ---------------------------------------------------------------------------------

def read_job(run_dir: Path) -> JobResult:
    """What one job's run dir says about it (see the module docstring for the sources)."""
    job = RunDir(run_dir)
    num = job.job_num()
    result = JobResult(job=num if num is not None else int(run_dir.name) if run_dir.name.isdigit() else -1,
                       run_dir=run_dir.resolve())
    try:
        result.overrides = job.saved_overrides(latest=False)
    except ConfigError:  # a damaged overrides.yaml: the job's row goes without them
        pass
    summary = job.summary()
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

    result.group = fused_group(summary) or ""
    status = Status.of(summary)
    if status is not None and status is not Status.RUNNING:
        result.status, result.error = status.outcome, _one_line(summary.get("error") or "")
    elif status is Status.RUNNING:
        result.error = "did not finish: its process ended during training (killed, or out of memory?)"
    elif metrics:
        result.status = "ok"  # a run from before summary.json: metrics.csv is all there is
    else:
        result.error = "no result: the job ended before training started"
    if result.status == "failed" and not result.error:
        result.error = "failed (no reason recorded)"
    return result


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

def collect(sweep_dir: Path) -> list[JobResult]:
    """Every job of the sweep, best objective first; failed jobs (and jobs without one) last, by number."""
    results = [read_job(d) for d in job_dirs(sweep_dir)]
    return sorted(results, key=lambda r: (not r.ranked, r.best_val_loss if r.ranked else 0.0, r.job))


def summarize(sweep_dir: Path, *, report: bool = True) -> list[JobResult]:
    """Every job of the sweep (see `collect`), written into `sweep_dir` as sweep_summary.csv, sweep_objective.png and
    sweep_curves.png, then report.html (`report`: outputs.report); nothing is written for a dir without jobs."""
    results = collect(sweep_dir)
    if not results:
        return results  # the sweep stopped before any job ran (a composition error): nothing to say
    write_csv(results, sweep_dir / SUMMARY_CSV)
    plot_objective(results, sweep_dir / OBJECTIVE_PNG)
    plot_curves(results, sweep_dir / CURVES_PNG)
    if report:
        write_report_page(sweep_dir)
    return results


def write_report_page(sweep_dir: Path) -> Path | None:
    """The sweep's report.html (`aetrain.report`). A page that cannot be written is one logged line, never the
    sweep's outcome: the jobs and the summary are what the sweep is for."""
    from aetrain.report import write_report

    try:
        page = write_report(sweep_dir)
    except Exception as e:  # noqa: BLE001 - any failure of the page is reported, not raised
        log.warning("aetrain: could not write %s (aetrain report %s tries again): %s: %s",
                    sweep_dir / "report.html", sweep_dir, type(e).__name__, e)
        return None
    return page


def summarize_dir(sweep_dir: Path) -> list[JobResult]:
    """`aetrain sweep <dir>`: summarise a sweep dir again (also one whose sweeper was killed: its unfinished jobs
    are failed, "did not finish") and log the table. ConfigError for a dir that holds no sweep."""
    if not sweep_dir.is_dir():
        what = "not a directory; give the sweep dir" if sweep_dir.exists() else "no such sweep dir"
        raise ConfigError(f"{sweep_dir}: {what}")
    results = summarize(sweep_dir, report=False)
    if not results:
        raise ConfigError(f"{sweep_dir}: not a sweep dir (no job dirs: numbered dirs, or dirs with "
                          ".hydra/overrides.yaml, up to three levels down)")
    log.info("%s", table(results, sweep_dir, terminal=sys.stdout.isatty()).rstrip("\n"))
    page = write_report_page(sweep_dir)
    if page is not None:
        log.info("report: %s", page)
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
            str(r.run_dir), r.group,
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


def table(results: list[JobResult], sweep_dir: Path, *, terminal: bool = False) -> str:
    """The summary as a table for the console, ending in a newline: a header line, the jobs, what is the same in
    every job, the files written. `terminal`: rich's colours and box, fitted to the terminal; otherwise plain
    text (rich assumes 80 columns off a terminal and would fold the table; logs have room)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    varying, shared = varying_overrides(results)
    failed = sum(not r.ok for r in results)
    rows = Table(
        caption=f"same in every job: {' '.join(shared)}" if shared else None,
        box=box.SIMPLE_HEAD if terminal else _plain_head(), caption_justify="left",
    )
    rows.add_column("job", justify="right")
    rows.add_column("status")
    rows.add_column("best val/loss", justify="right")
    rows.add_column("epochs", justify="right")
    rows.add_column("time", justify="right")
    rows.add_column("overrides", overflow="fold")  # wrapped on a narrow terminal, never cut
    grouped = any(r.group for r in results)  # a group column when jobs trained fused
    if grouped:
        rows.add_column("group", justify="right")
    if failed:
        rows.add_column("error", overflow="fold")
    best = results[0] if results[0].ranked else None
    for r, overrides in zip(results, varying):
        rows.add_row(
            str(r.job), r.status,
            f"{r.best_val_loss:.5g}" if math.isfinite(r.best_val_loss) else "-",
            "-" if r.epochs is None else str(r.epochs),
            "-" if r.wall_time_s is None else f"{r.wall_time_s:.1f}s",
            " ".join(_short(o) for o in overrides), *([r.group or "-"] if grouped else []),
            *([r.error] if failed else []),
            style="bold green" if r is best else ("red" if not r.ok else None),
        )
    header = f"sweep {sweep_dir}: {len(results) - failed} ok, {failed} failed"  # not a title: rich would fold a path
    footer = f"written: {sweep_dir / SUMMARY_CSV}, {sweep_dir / OBJECTIVE_PNG}, {sweep_dir / CURVES_PNG}"
    console = Console(file=io.StringIO(), highlight=False, force_terminal=terminal, width=None if terminal else 200)
    if terminal:
        console.print(header, style="bold", soft_wrap=True)
        console.print(rows)
        console.print(footer, soft_wrap=True)
        return console.file.getvalue()
    console.print(rows)  # rich pads every line to the table's width; logs are better without the trailing blanks
    text = "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())
    return f"{header}\n{text}\n{footer}\n"


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


# --- a sweep's dir ------------------------------------------------------------------------------

def refuse_resume(sweep_dir: Path, overrides: list[str]) -> None:
    """Before a sweep is resumed in `sweep_dir` with the command line's `overrides` (Hydra's task overrides, the
    swept ones among them): ConfigError when the dir holds no sweep, or one started with other overrides (its
    multirun.yaml says which: in another order, the jobs would be numbered otherwise). Nothing is touched."""
    if previous_sweep(sweep_dir) is None:
        raise ConfigError(f"hydra.sweep.dir={sweep_dir} holds no sweep to resume (hydra.launcher.resume=true "
                          "continues an interrupted sweep in its own dir); leave out hydra.launcher.resume to start "
                          "one")
    import yaml

    try:
        recorded = yaml.safe_load((sweep_dir / "multirun.yaml").read_text(encoding="utf-8"))
        started = recorded["hydra"]["overrides"]["task"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return  # no record of the sweep's command line: its jobs' own records are checked (refuse_resume_jobs)
    if isinstance(started, list) and started != list(overrides):
        raise ConfigError(f"hydra.sweep.dir={sweep_dir} holds a sweep of {' '.join(map(str, started))}, not of "
                          f"{' '.join(overrides)}: resume a sweep with the overrides it was started with, in their "
                          "order")


def refuse_resume_jobs(sweep_dir: Path, jobs: list[tuple[Path, list[str]]]) -> None:
    """Before the jobs of a resumed sweep run (`jobs`: each one's run dir and overrides, in job order): ConfigError
    when a job dir there holds a run of other overrides, or a job this sweep does not have, or when a live
    process trains in one of them (the sweep is still running: `aetrain.rundir.resuming`). Nothing is touched."""
    mine = {d.resolve() for d, _ in jobs}
    for run_dir, overrides in jobs:
        if (run_dir / HYDRA / "overrides.yaml").is_file():  # else never started, or ended before it recorded what ran
            try:
                ran = RunDir(run_dir).saved_overrides(latest=False)
            except ConfigError:
                ran = None
            if ran != list(overrides):
                raise ConfigError(f"hydra.sweep.dir={sweep_dir}: {run_dir.name} ran {' '.join(ran or ['?'])}, not "
                                  f"this sweep's job {' '.join(overrides)}: resume a sweep with the command line it "
                                  "was started with")
        resuming(sweep_dir, run_dir)  # refused while a live process trains there
    extra = [d for d in job_dirs(sweep_dir) if d.resolve() not in mine]
    if extra:
        raise ConfigError(f"hydra.sweep.dir={sweep_dir} holds job {extra[0].name}, which this sweep does not have: "
                          "resume a sweep with the command line it was started with")


def previous_sweep(sweep_dir: Path) -> str | None:
    """What in `sweep_dir` shows an earlier (or a running) sweep: its marker, a summary or a job dir; or None."""
    for name in (MARKER, SUMMARY_CSV):
        if (sweep_dir / name).exists():
            return name
    dirs = job_dirs(sweep_dir)
    return f"{dirs[0].relative_to(sweep_dir)}/" if dirs else None


def claim(sweep_dir: Path, *, resuming: list[str] | None = None) -> bool:
    """Make `sweep_dir` this sweep's: refused (ConfigError, naming what is there) when it holds an earlier or a
    running sweep, else marked by creating its marker exclusively (`RunDir.mark`), so of two sweeps given one dir
    at once the second is refused. A dir that cannot be made is a ConfigError too.

    `resuming`: this sweep's overrides when it continues the interrupted sweep in `sweep_dir`
    (hydra.launcher.resume=true): a dir holding a sweep run with other overrides is refused (its jobs would be
    kept or continued as this command's); one holding no sweep (no multirun.yaml) is claimed as a new one.
    Returns whether the sweep continues one already there."""
    if resuming is not None and (sweep_dir / MULTIRUN).is_file():
        before = _sweep_overrides(sweep_dir)
        if before != list(resuming):
            raise ConfigError(f"hydra.launcher.resume=true: hydra.sweep.dir={sweep_dir} holds another sweep "
                              f"({' '.join(before) or 'no overrides'}); resume it with the command it printed when "
                              "it stopped, or choose another hydra.sweep.dir")
        return True
    used = previous_sweep(sweep_dir)
    if used is None and not RunDir(sweep_dir, key="hydra.sweep.dir").mark(MARKER, f"a sweep started by pid "
                                                                                    f"{os.getpid()}\n"):
        used = MARKER
    if used is not None:
        raise ConfigError(f"hydra.sweep.dir={sweep_dir} already holds a sweep ({used}); choose another "
                          "hydra.sweep.dir")
    return False


def _sweep_overrides(sweep_dir: Path) -> list[str]:
    """The overrides the sweep in `sweep_dir` was run with (its multirun.yaml, as Hydra writes it)."""
    import yaml

    try:
        saved = yaml.safe_load((sweep_dir / MULTIRUN).read_text(encoding="utf-8"))
        overrides = saved["hydra"]["overrides"]["task"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError) as e:
        raise ConfigError(f"hydra.launcher.resume=true: {sweep_dir / MULTIRUN} cannot be read ({type(e).__name__}); "
                          "choose another hydra.sweep.dir") from None
    return [str(o) for o in overrides or []]
