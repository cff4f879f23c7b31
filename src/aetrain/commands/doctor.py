"""`aetrain doctor <run dir>`: why a run is (not) learning, per layer, with the overrides to try.

Reads what the run left behind, whether it finished, failed, diverged, was interrupted or is still
running: metrics.csv, diagnostics.csv (absent for runs made with diagnostics.enabled=false or
before diagnostics existed: then only the rules metrics.csv can decide run), summary.json (how
it ended) and, for the size of one sample, a checkpoint's data description when there is one.
The rules are `aetrain.doctor`'s, the same ones that announce findings during training.

Writes doctor.json ({"verdict", "status", "findings": [{"code", "layers", "epochs", "evidence",
"suggestion", "message"}], "layers": [...]}) and, when the run has diagnostics, diagnostics.png
(per-layer gradient norm, update-to-weight ratio and dead/saturated share over the run, one row
per layer) into the run dir, and logs the report's lines (`doctor`, the command's function).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aetrain.atomic import write_atomic
from aetrain.config import Config
from aetrain.doctor import Facts, Finding, Trace, diagnose, epoch_ranges, too_early, unused_units, verdict
from aetrain.errors import ConfigError
from aetrain.plugins import PluginError
from aetrain.rundir import (
    BEST,
    DIAGNOSTICS,
    DIAGNOSTICS_PLOT,
    DOCTOR,
    LAST,
    METRICS,
    SUMMARY,
    RunDir,
    Status,
    checkpoint_dir,
    read_diagnostics,
    read_metrics,
    read_summary,
)

log = logging.getLogger(__name__)


@dataclass
class Report:
    run_dir: Path
    status: str  # how the run ended, or "running"
    verdict: str
    findings: list[Finding]
    layers: list[dict[str, Any]]  # the per-layer table
    has_diagnostics: bool
    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the report could not judge, and why

    def lines(self) -> list[str]:
        out = [f"aetrain doctor: {self.run_dir}", f"  run:     {self.status}", f"  verdict: {self.verdict}"]
        current = [f for f in self.findings if f.gone_by is None]
        past = [f for f in self.findings if f.gone_by is not None]
        if not current:
            out.append("  findings: none" + (" now" if past else ""))
        for f in current:
            out.append(f"  {f.code}{_where(f)} (epoch{'s' if len(f.epochs) > 1 else ''} {epoch_ranges(f.epochs)})")
            out.append(f"      {f.message}")
            out.append(f"      try: {'  |  '.join(f.suggestion)}")
        if past:
            out.append("  past findings (they held, then stopped; not part of the verdict):")
        for f in past:
            out.append(f"  {f.code}{_where(f)} (at epoch{'s' if len(f.epochs) > 1 else ''} "
                       f"{epoch_ranges(f.epochs)}, gone by epoch {f.gone_by})")
            out.append(f"      {f.message}")
        if self.layers:
            out.append("  per layer (median over the first and the last sampled epoch):")
            out.extend("    " + line for line in layer_table(self.layers))
        out.extend(f"  note: {n}" for n in self.notes)
        if self.written:
            out.append(f"  wrote: {', '.join(str(p) for p in self.written)}")
        return out


def doctor(run_dir: Path) -> Report:
    """`aetrain doctor <run dir>`: diagnose the run, write doctor.json and diagnostics.png into it, and log the
    report's lines."""
    try:
        cfg, unread = RunDir(run_dir).config(), None
    except PluginError as e:  # the findings need no model code: judged without the config, said in a note
        cfg, unread = None, f"the run's config cannot be read here ({e})"
    report = run(run_dir, cfg, unread=unread)
    for line in report.lines():
        log.info("%s", line)
    return report


def _where(f: Finding) -> str:
    return f" in {', '.join(f.layers[:6])}{' ...' if len(f.layers) > 6 else ''}" if f.layers else ""


def run(run_dir: Path, cfg: Config | None, *, unread: str | None = None) -> Report:
    """Diagnose `run_dir` (its config `cfg`, None when it has none, or `unread` says why it could not be read);
    writes doctor.json and diagnostics.png."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: "
                          f"{'not a directory; give the run dir' if run_dir.exists() else 'no such run dir'}")
    try:
        metrics = read_metrics(run_dir / METRICS)
        rows = read_diagnostics(run_dir / DIAGNOSTICS)
    except (ValueError, OSError) as e:
        raise ConfigError(f"{run_dir}: {e}") from None
    summary = read_summary(run_dir)
    if not metrics and not rows and not summary:
        raise ConfigError(f"{run_dir}: not an aetrain run dir (no {METRICS}, {DIAGNOSTICS} or {SUMMARY})")
    notes = []
    spec = _data_spec(run_dir)
    shape = tuple(spec.shape) if spec is not None else None
    if cfg is None:
        notes.append(f"{unread or 'no .hydra/config.yaml'}: rules that need the config (identity_mapping, suggestions) "
                     "are generic")
    elif shape is None:
        notes.append("no readable checkpoint: the input's size is unknown, so identity_mapping judges by the "
                     "reconstruction check only")
    facts = Facts.of(cfg, shape, unit_interval=spec.unit_interval if spec else None,
                     data_range=(spec.low, spec.high) if spec else None) if cfg is not None else Facts()
    trace = Trace()
    for record in metrics:
        trace.add_epoch(record)
    trace.add_rows(rows)
    status = Status.of(summary)
    trace.status = None if status is Status.RUNNING else status
    if status is not None and not status.is_result and status is not Status.RUNNING:
        trace.failed_epoch = int(summary.get("epochs") or len(metrics)) + 1
    findings = diagnose(trace, facts)
    if not rows:
        notes.append(f"no {DIAGNOSTICS} (diagnostics.enabled=false, or a run from before diagnostics): judged from "
                     f"{METRICS} alone; per-layer findings need diagnostics")
    status = _status(summary, metrics)
    early = too_early(trace)
    if early is not None and trace.status != "diverged":
        notes.insert(0, early)
    layers = layer_summary(trace, findings)
    report = Report(run_dir, status, verdict(trace, findings), findings, layers, bool(rows), notes=notes)
    files = {DOCTOR: lambda: json.dumps({
        "verdict": report.verdict, "status": status,
        "findings": [f.to_json() for f in findings], "layers": layers,
        "diagnostics": bool(rows), "notes": notes,
    }, indent=2, default=_json_default) + "\n"}
    if rows:
        files[DIAGNOSTICS_PLOT] = lambda: plot(trace, findings, title=_title(cfg, status, report.verdict))
    for name, content in files.items():
        data = content()
        if data is None:
            report.notes.append(f"no {name}: {DIAGNOSTICS} holds no per-layer statistics to draw")
            continue
        try:
            write_atomic(run_dir / name, data)
        except OSError as e:  # a read-only run dir (someone else's, an archive): the report is still printed
            report.notes.append(f"could not write {run_dir / name}: {e.strerror or e}")
            continue
        report.written.append(run_dir / name)
    return report


def _json_default(value: Any) -> Any:
    return str(value)


def _status(summary: dict[str, Any], metrics: list[dict[str, Any]]) -> str:
    status, epochs = Status.of(summary), summary.get("epochs", len(metrics))
    of = summary.get("max_epochs")
    count = f"{epochs} of {of} epoch{'s' if of != 1 else ''}" if of else f"{epochs} epoch{'s' if epochs != 1 else ''}"
    if status is Status.RUNNING:
        return f"running, or killed without a word ({count} so far)"
    if status is not None and status.is_result:
        reason = f", {summary['stop_reason']}" if summary.get("stop_reason") else ""
        return f"finished ({status}{reason}), {count}"
    if status is not None:
        error = f": {summary['error']}" if summary.get("error") else ""
        return f"{status} after {count}{error}"
    return f"unknown (no {SUMMARY}), {len(metrics)} epoch{'s' if len(metrics) != 1 else ''} in {METRICS}"


def _title(cfg: Config | None, status: str, verdict_: str) -> str:
    what = f"{cfg.model.name} on {cfg.data.name}" if cfg is not None else "run"
    return f"{what}: {verdict_}"


def _data_spec(run_dir: Path) -> Any:
    """A checkpoint's data description (best.pt or last.pt: the sample shape, the model-unit range), or None."""
    from aetrain import checkpoint
    from aetrain.errors import CheckpointError

    for name in (LAST, BEST):
        path = checkpoint_dir(run_dir) / name
        if path.is_file():
            try:
                return checkpoint.spec_from_checkpoint(checkpoint.load(path))
            except CheckpointError:
                continue
    return None


# --- the per-layer table -------------------------------------------------------------------------

def layer_summary(trace: Trace, findings: list[Finding]) -> list[dict[str, Any]]:
    """One entry per layer in the network's order: kind, and the median of each statistic over the first and
    the last sampled epoch, and the findings that name it."""
    epochs = sorted(trace.steps)
    if not epochs:
        return []
    first, last = trace.points(epochs[0]), trace.points(epochs[-1])
    order = list(dict.fromkeys(layer for point in first + last for layer in point))
    flagged: dict[str, list[str]] = {}
    for f in findings:
        for layer in f.layers:
            flagged.setdefault(layer, []).append(f.code if f.gone_by is None else f"{f.code} (past)")
    out = []
    for layer in order:
        entry: dict[str, Any] = {"layer": layer, "kind": next(p[layer]["kind"] for p in first + last if layer in p)}
        for stat in ("grad_norm", "weight_norm", "update_ratio", "dead_share", "saturated_share", "code_mean_abs"):
            a, b = _median(first, layer, stat), _median(last, layer, stat)
            if math.isfinite(a) or math.isfinite(b):
                entry[stat] = [_rounded(a), _rounded(b)]
        effects = trace.checks[max(trace.checks)].get("code_unit_effect") if trace.checks else None
        if layer == "code" and effects:
            entry["unused_units"] = len(unused_units(effects))
            entry["latent_dim"] = len(effects)
            entry["measured_units"] = sum(math.isfinite(e) for e in effects)  # a sample of a wide code
        entry["findings"] = flagged.get(layer, [])
        out.append(entry)
    return out


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _median(points: list[dict[str, dict[str, Any]]], layer: str, stat: str) -> float:
    values = [_num(p[layer].get(stat)) for p in points if layer in p]
    values = [v for v in values if math.isfinite(v)]
    return statistics.median(values) if values else math.nan


def _rounded(x: float) -> float | None:
    return float(f"{x:.4g}") if math.isfinite(x) else None


def layer_table(layers: list[dict[str, Any]]) -> list[str]:
    def pair(entry: dict[str, Any], stat: str, fmt: str) -> str:
        if stat not in entry:
            return ""
        a, b = entry[stat]
        return " -> ".join("-" if v is None else format(v, fmt) for v in (a, b))

    header = ("layer", "kind", "grad norm", "update/weight", "dead or saturated", "findings")
    rows = []
    for e in layers:
        share = pair(e, "dead_share", ".0%") or pair(e, "saturated_share", ".0%")
        if e["layer"] == "code" and "unused_units" in e:
            of = e["latent_dim"] if e.get("measured_units", e["latent_dim"]) == e["latent_dim"] else \
                f"{e['measured_units']} measured (of {e['latent_dim']})"
            share = f"{e['unused_units']} of {of} units unused"
        rows.append((e["layer"], e["kind"], pair(e, "grad_norm", ".2g"), pair(e, "update_ratio", ".1e"), share,
                     ", ".join(e["findings"])))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows]]


# --- diagnostics.png -----------------------------------------------------------------------------

def plot(trace: Trace, findings: list[Finding], *, title: str) -> bytes | None:
    """Heatmaps over the run, one row per layer in the network's order: gradient norm and update-to-weight
    ratio (log10) for the layers with parameters, dead or saturated share for the activations. Layers a
    finding names are labelled in red with its code. None when diagnostics.csv holds none of these."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize

    from aetrain.drawing import canvas, encode_png, figure

    steps = sorted(s for e in trace.steps for s in trace.steps[e])
    points = [trace.steps[e][s] for e in sorted(trace.steps) for s in sorted(trace.steps[e])]
    spe = _steps_per_epoch(trace)
    x = np.asarray(steps, dtype=float) / spe if spe else np.asarray(steps, dtype=float)
    edges = np.concatenate([x, [x[-1] + (x[-1] - x[-2] if len(x) > 1 else 1.0)]]) if len(x) else x
    layers = list(dict.fromkeys(layer for p in points for layer in p))
    params = [name for name in layers if any(math.isfinite(_num(p.get(name, {}).get("grad_norm"))) for p in points)]
    acts = [name for name in layers if any(math.isfinite(_num(p.get(name, {}).get("dead_share")))
                                           or math.isfinite(_num(p.get(name, {}).get("saturated_share")))
                                           for p in points)]
    flagged: dict[str, list[str]] = {}
    for f in findings:
        for layer in f.layers:
            flagged.setdefault(layer, []).append(f.code if f.gone_by is None else f"{f.code}, past")
    current = {layer for f in findings if f.gone_by is None for layer in f.layers}

    def grid(rows: list[str], stat: str | tuple[str, ...]) -> np.ndarray:
        stats = (stat,) if isinstance(stat, str) else stat
        out = np.full((len(rows), len(points)), np.nan)
        for j, p in enumerate(points):
            for i, layer in enumerate(rows):
                row = p.get(layer, {})
                values = [_num(row.get(s)) for s in stats]
                finite = [v for v in values if math.isfinite(v)]
                if finite:
                    out[i, j] = finite[0]
        return out

    panels = []
    if params:
        panels.append(("gradient norm", params, grid(params, "grad_norm"), "log", "viridis"))
        panels.append(("update / weight norm per step", params, grid(params, "update_ratio"), "log", "cividis"))
    if acts:
        panels.append(("dead (ReLU) or saturated (sigmoid, tanh) share", acts,
                       grid(acts, ("dead_share", "saturated_share")), "share", "magma"))
    if not panels:
        return None
    heights = [max(len(p[1]), 2) for p in panels]
    labels = {r: f"{r}  [{', '.join(flagged[r])}]" if r in flagged else r for r in layers}
    width = 7.5 + 0.068 * max(map(len, labels.values()))  # room for the longest label at 8 pt
    fig = figure(width, 1.2 + 0.24 * sum(heights) + 0.55 * len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    height = fig.get_figheight()
    fig.subplots_adjust(left=(width - 7.3) / width, right=1 - 0.8 / width, top=1 - 0.75 / height, bottom=0.5 / height,
                        hspace=0.45 * len(panels) / max(sum(heights), 1) * 4)
    for ax, (name, rows, values, scale, cmap) in zip(axes, panels):
        finite = values[np.isfinite(values) & (values > 0)] if scale == "log" else values[np.isfinite(values)]
        zeros = scale == "log" and bool((values == 0).any())
        if scale == "log":
            norm = LogNorm(vmin=finite.min(), vmax=finite.max()) if finite.size and finite.min() < finite.max() \
                else LogNorm(vmin=1e-8, vmax=1)
            shown = np.where(values == 0, norm.vmin / 10, values)  # exactly 0: below the scale, drawn black
        else:
            norm, shown = Normalize(vmin=0, vmax=1), values
        colours = colormaps[cmap].with_extremes(under="black", bad="white")  # white: not measured
        mesh = ax.pcolormesh(edges, np.arange(len(rows) + 1), np.ma.masked_invalid(shown), cmap=colours, norm=norm,
                             shading="flat")
        ax.set_yticks(np.arange(len(rows)) + 0.5)
        ax.set_yticklabels([labels[r] for r in rows], fontsize=8)
        for label, r in zip(ax.get_yticklabels(), rows):
            if r in current:  # a past finding is named, in black
                label.set_color("#d62728")
                label.set_fontweight("bold")
        ax.set_ylim(len(rows), 0)  # the input side on top
        ax.set_title(name + ("  (black: exactly 0)" if zeros else ""), fontsize=10, loc="left")
        bar = fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.04)
        bar.ax.tick_params(labelsize=8)
    axes[-1].set_xlabel("epoch" if spe else "optimizer step")
    fig.suptitle(title, fontsize=11)
    return encode_png(canvas(fig))


def _steps_per_epoch(trace: Trace) -> float | None:
    for r in trace.epochs:
        if isinstance(r.get("step"), int) and isinstance(r.get("epoch"), int) and r["epoch"] > 0 and r["step"] > 0:
            return r["step"] / r["epoch"]
    return None
