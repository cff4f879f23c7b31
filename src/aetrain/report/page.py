"""The pages: what each section shows, rendered with Jinja2 into one HTML file with everything inlined.

`write_report(path)` decides whether `path` is a run dir or a sweep dir, builds that page's context from
`aetrain.report.runs` / `aetrain.report.sweeps`, renders templates/<kind>.html.j2 with the CSS and JS of
static/ inlined and every picture as a data: URI, and writes report.html atomically. The page's
Content-Security-Policy allows no request at all (only inline scripts, styles and data: images), so it
works from file:// without a network, and a browser fetches nothing even if some text in it looks like
an address.

Size: pictures are shrunk losslessly (palette or grey PNGs; only the sweep page's own charts are
quantized to 256 colours); a run's per-epoch pictures share `EPOCH_PICTURE_BYTES`, spread evenly over
the epochs drawn (first, best and last always kept). Reproducible: no clock, no random ids, sorted
listings: the same dir gives the same bytes.
"""

from __future__ import annotations

import functools
import io
import json
import math
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

from aetrain.atomic import write_atomic
from aetrain.config import typed
from aetrain.doctor import epoch_ranges
from aetrain.errors import ConfigError, WriteError
from aetrain.report import figures
from aetrain.report.runs import (
    AFTER_PICTURES,
    DOCTOR_PICTURE,
    REPORT,
    Run,
    after_training,
    command,
    config_differences,
    doctor,
    is_run_dir,
    latest_grid,
    picture_folders,
    pictures,
    read_run,
)
from aetrain.report.sweeps import (
    SEED,
    Job,
    Sweep,
    follow_ups,
    is_overrides,
    is_sweep_dir,
    label,
    number,
    read_sweep,
    settings,
    short,
    typed_command,
)
from aetrain.rundir import ENCODE, EVAL, EXPORT, LOSS_CURVE, METRICS, SCORE, TENSORBOARD, TRAIN_LOG

EPOCH_PICTURE_BYTES = 120_000  # a run page's per-epoch pictures (reconstructions, samples) together, before base64
AFTER_PICTURE_BYTES = 80_000  # each picture of eval/score/encode larger than this is left out, with a link
TOP_JOBS = 6  # jobs whose reconstructions a sweep page shows side by side
PIXEL_WIDTH = 1100  # pixels a reconstruction grid may be enlarged to (by a whole factor)
STRIP_WIDTH = 860  # the same, for a row of the sweep page's side-by-side reconstructions
CURVE_DIGITS = 5  # significant digits of the values the sweep page's charts get


def write_report(path: Path) -> Path:
    """Write `path`/report.html for the run dir or sweep dir `path`; returns the file. ConfigError (one
    line) for a path that is neither, WriteError for a dir that takes no file."""
    html = render(path)
    out = Path(path) / REPORT
    try:
        write_atomic(out, html)
    except OSError as e:
        raise WriteError.of(e) from None
    return out


def render(path: Path) -> str:
    """The page of `path` (a run dir or a sweep dir) as HTML text."""
    path = Path(path)
    if not path.is_dir():
        what = "not a directory; give a run dir or a sweep dir" if path.exists() else "no such directory"
        raise ConfigError(f"{path}: {what}")
    if is_run_dir(path):
        return _render("run.html.j2", run_page(read_run(path)))
    if is_sweep_dir(path):
        sweep = read_sweep(path)
        if not sweep.jobs:
            raise ConfigError(f"{path}: a sweep dir without jobs yet: nothing to report")
        return _render("sweep.html.j2", sweep_page(sweep))
    raise ConfigError(f"{path}: not an aetrain run dir or sweep dir (a run dir has summary.json, metrics.csv or "
                      f".hydra/config.yaml; a sweep dir has multirun.yaml)")


@functools.cache
def _environment() -> Any:
    """The templates, compiled once per process (a sweep's jobs and its page share them)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("aetrain.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    static = resources.files("aetrain.report") / "static"
    env.globals.update(css=(static / "report.css").read_text(), js=(static / "report.js").read_text())
    return env


def _render(template: str, context: dict[str, Any]) -> str:
    return _environment().get_template(template).render(**context)


# --- formatting --------------------------------------------------------------------------------------------

def fmt(value: Any, digits: int = 4) -> str:
    """A number as the page shows it: `0.01947`, `1,438`, `-` for none."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def seconds(value: Any) -> str:
    """`81 s`, `4 min 12 s`, `2 h 05 min`."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    if value < 60:
        return f"{value:.3g} s" if value < 10 else f"{value:.0f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60):02d} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60):02d} min"


def rounded(value: Any) -> Any:
    """A number for the page's JSON: CURVE_DIGITS significant digits; None for NaN and infinity."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if not math.isfinite(value):
        return None
    return value if isinstance(value, int) else float(f"{value:.{CURVE_DIGITS}g}")


def _picture(path: Path, *, lossy: bool = False) -> str | None:
    try:
        return figures.data_uri(figures.compact_png(path.read_bytes(), lossy=lossy))
    except OSError:
        return None


def _pixels(png: bytes, limit: int = 0) -> dict[str, Any]:
    """A pixel picture (a reconstruction grid) for an <img>: its data URI and the width to show it at, enlarged
    by a whole factor (at most 3, up to PIXEL_WIDTH) so small samples stay legible and sharp."""
    from PIL import Image

    width = Image.open(io.BytesIO(png)).width
    return {"uri": figures.data_uri(figures.compact_png(png)),
            "width": width * max(1, min(3, (limit or PIXEL_WIDTH) // width))}


def _data(value: Any) -> str:
    """JSON for a <script type="application/json"> block: sorted keys, no NaN, nothing that closes the tag."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --- a run's page ------------------------------------------------------------------------------------------

def run_page(run: Run) -> dict[str, Any]:
    s = run.summary
    return {
        "kind": "run", "title": run.title, "path": str(run.path), "status": run.status,
        "tiles": _tiles(run), "what": _what_was_run(run), "curves": _curves(run),
        "metrics": _metrics_table(run), "pictures": _epoch_pictures(run), "doctor": _doctor(run),
        "after": _after(run), "details": _details(run),
        "links": [(name, name) for name in (TRAIN_LOG, METRICS, "summary.json", f"{TENSORBOARD}/")
                  if (run.path / name.rstrip("/")).exists()],
        "tensorboard": f"tensorboard --logdir {shlex.quote(str(run.path / s['tensorboard']))}"
                       if isinstance(s.get("tensorboard"), str) else None,
    }


def _tiles(run: Run) -> list[tuple[str, str, str]]:
    s = run.summary
    best = s.get("best_val_loss") if s else run.objective
    best_epoch = s.get("best_epoch")
    epochs = run.epochs
    tiles = [("best val/loss", fmt(best), f"epoch {best_epoch}" if best_epoch else ""),
             ("final val/loss", fmt(s.get("final_val_loss") if s else _last(run, "val/loss")), ""),
             ("epochs", f"{epochs if epochs is not None else '-'}"
              + (f" of {s['max_epochs']}" if s.get("max_epochs") else ""),
              f"{fmt(s['steps'])} steps" if isinstance(s.get("steps"), int) else ""),
             ("wall time", seconds(run.wall_time_s), ""),
             ("throughput", f"{fmt(s.get('samples_per_s'), 3)} samples/s" if s.get("samples_per_s") else "-",
              f"{s.get('device', '')} · precision {s.get('precision')}" if s.get("device") else ""),
             ("parameters", fmt(s.get("num_parameters")), "")]
    return tiles


def _last(run: Run, key: str) -> Any:
    return run.metrics[-1].get(key) if run.metrics else None


def _what_was_run(run: Run) -> dict[str, Any]:
    """The command, its resumes, the commands to continue and to repeat it, the config's differences."""
    commands = []
    if run.overrides or (run.path / ".hydra" / "overrides.yaml").is_file():
        commands.append(("started with", command(run.overrides), ""))
    for i, overrides in enumerate(run.resumes, 1):
        commands.append((f"resumed ({i})", command(overrides), ""))
    last = run.path / "checkpoints" / "last.pt"
    s = run.summary
    if last.is_file() and run.status.kind != "running":
        if s.get("ended") in ("ok", "stopped_early") or run.status.word == "finished":
            more = (s.get("max_epochs") or run.epochs or 0) * 2
            commands.append(("train it longer", command([], f"trainer.resume={run.path}", f"trainer.max_epochs={more}"),
                             "continues from last.pt in this dir; the curves and pictures carry on"))
        else:
            commands.append(("resume it", command([], f"trainer.resume={run.path}"),
                             "continues from last.pt, exactly where it stopped, in this dir"))
    if run.overrides or run.config is not None:
        kept = [o for o in run.overrides if not o.startswith(("trainer.resume=", "hydra."))]
        commands.append(("repeat it", command(kept), "a new run dir; the same config and seed give the same "
                                                     "numbers on the CPU"))
    differences = config_differences(run.config) if run.config is not None else None
    return {"commands": commands, "differences": differences}


def _curves(run: Run) -> dict[str, Any] | None:
    """loss_curve.png as the run drew it; without one (outputs.plot_every=0, a run that drew none), the train
    and validation loss from metrics.csv for the page's script to draw."""
    if (run.path / LOSS_CURVE).is_file():
        return {"uri": _picture(run.path / LOSS_CURVE), "caption": LOSS_CURVE, "data": None}
    rows = [r for r in run.metrics if isinstance(r.get("epoch"), int)]
    if not rows:
        return None
    val = [rounded(r.get("val/loss")) for r in rows]
    finite = [i for i, v in enumerate(val) if v is not None]
    return {"uri": None, "caption": f"train/loss and val/loss from {METRICS}: the run drew no {LOSS_CURVE} "
                                    f"(outputs.plot_every=0)",
            "data": _data({"epochs": [r["epoch"] for r in rows], "train": [rounded(r.get("train/loss")) for r in rows],
                           "val": val, "best_index": min(finite, key=lambda i: val[i]) if finite else None})}


def _metrics_table(run: Run) -> dict[str, Any] | None:
    if not run.metrics:
        return None
    columns = list(dict.fromkeys(k for r in run.metrics for k in r))
    best = run.summary.get("best_epoch")
    rows = [{"best": r.get("epoch") == best, "cells": [fmt(r.get(c), 5) for c in columns]} for r in run.metrics]
    return {"columns": columns, "rows": rows}


def _epoch_pictures(run: Run) -> dict[str, Any] | None:
    """The per-epoch pictures (reconstructions/, a VAE's samples/) for the epoch picker, within
    EPOCH_PICTURE_BYTES: all epochs when they fit, else an even spread that keeps the first, best and last."""
    folders = picture_folders(run)
    if not folders:
        return None
    found = {name: pictures(run.path / name) for name in folders}
    epochs = sorted({e for f in found.values() for e in f})
    sizes = {e: sum(f[e].stat().st_size for f in found.values() if e in f) for e in epochs}
    kept = _spread(epochs, sizes, EPOCH_PICTURE_BYTES, must={epochs[0], epochs[-1], run.summary.get("best_epoch")})
    shown = []
    for name in folders:
        frames = [{"epoch": e, **_pixels(found[name][e].read_bytes())} for e in kept if e in found[name]]
        shown.append({"name": name, "title": _folder_title(name, run), "frames": frames})
    best = run.summary.get("best_epoch")
    return {"folders": shown, "epochs": kept, "drawn": len(epochs), "best": best if best in kept else None}


def _spread(epochs: list[int], sizes: dict[int, int], budget: int, must: set[Any]) -> list[int]:
    """The most epochs, evenly spread, whose pictures fit `budget` bytes, `must` among them; the last alone
    when not even those fit."""
    kept = [e for e in epochs if e in must]
    for count in range(len(epochs), 0, -1):
        step = (len(epochs) - 1) / max(count - 1, 1)
        pick = sorted({*kept, *(epochs[round(i * step)] for i in range(count))})
        if sum(sizes[e] for e in pick) <= budget:
            return pick
    return epochs[-1:]


def _folder_title(name: str, run: Run) -> str:
    if name == "reconstructions":
        denoising = run.config is not None and run.config.model.name == "denoising_ae"
        return ("the same validation samples every epoch: originals, the corrupted inputs, reconstructions"
                if denoising else "the same validation samples every epoch: originals above, reconstructions below")
    if name == "samples":
        return "decoded draws from the prior N(0, I), the same draws every epoch"
    return name


def _doctor(run: Run) -> dict[str, Any] | None:
    found = doctor(run)
    if found is None:
        return None
    base = [o for o in run.overrides if not o.startswith(("trainer.resume=", "hydra."))]
    findings = []
    for f in found.findings:
        tries = []
        for alternative in f.suggestion:
            words = shlex.split(alternative)
            if not is_overrides(alternative):  # a command of its own (aetrain lr_find): with the run's overrides
                tries.append({"override": alternative, "command": " ".join([alternative, *map(shlex.quote, base)])})
                continue
            keys = {o.partition("=")[0] for o in words}
            kept = [o for o in base if o.partition("=")[0] not in keys]
            tries.append({"override": alternative, "command": command(kept, *words)})
        findings.append({"code": f.code, "layers": f.layers, "epochs": epoch_ranges(f.epochs), "message": f.message,
                         "tries": tries})
    picture = _picture(run.path / DOCTOR_PICTURE) if (run.path / DOCTOR_PICTURE).is_file() else None
    return {"verdict": found.verdict, "findings": findings, "notes": found.notes, "picture": picture,
            "command": f"aetrain doctor {shlex.quote(str(run.path))}"}


def _after(run: Run) -> dict[str, Any]:
    """eval/score/export/encode results, when those commands ran into their default folders."""
    results = after_training(run.path)
    out: dict[str, Any] = {
        "eval": _eval(results[EVAL]) if EVAL in results else None,
        "score": _score(results[SCORE]) if SCORE in results else None,
        "export": _export(results[EXPORT]) if EXPORT in results else None,
    }
    shown, left = [], []
    for folder, names in AFTER_PICTURES.items():
        for name in names:
            path = run.path / folder / name
            if not path.is_file():
                continue
            uri = _picture(path)
            if uri is not None and len(uri) * 3 // 4 <= AFTER_PICTURE_BYTES:
                shown.append((f"{folder}/{name}", uri))
            else:
                left.append(f"{folder}/{name}")
    out["pictures"], out["left_out"] = shown, left
    quoted = shlex.quote(str(run.path))
    out["missing"] = [f"aetrain {c} {quoted}" for c in (EVAL, SCORE, ENCODE, EXPORT)
                      if not (run.path / c).is_dir()] if run.status.kind in ("ok",) else []
    return out


def _eval(data: dict[str, Any]) -> dict[str, Any]:
    ae, pca = data.get("autoencoder") or {}, data.get("pca") or {}
    names = [("mse", "MSE (lower is better)"), ("mae", "MAE"), ("psnr_db", "PSNR (dB, higher is better)"),
             ("ssim", "SSIM (higher is better)")]
    rows = [(title, fmt(ae.get(key)), fmt(pca.get(key))) for key, title in names if key in ae or key in pca]
    probe = data.get("probe") if isinstance(data.get("probe"), dict) else {}
    if probe and "codes" in probe:
        rows.append(("probe accuracy", fmt(probe.get("codes")), fmt(probe.get("pca"))))
    notes = []
    if probe.get("raw") is not None:
        notes.append(f"probe on the raw inputs: {fmt(probe['raw'])}")
    if probe.get("skipped"):
        notes.append(f"probes skipped: {probe['skipped']}")
    if ae.get("mse") and pca.get("mse"):
        notes.insert(0, f"the autoencoder's MSE is {ae['mse'] / pca['mse']:.2f}× PCA's at the same size")
    d = data.get("data") if isinstance(data.get("data"), dict) else {}
    other = "" if d.get("own", True) else ", other data"
    samples = f"{d['num_samples']} samples ({d.get('split', '?')} split{other})" \
        if "num_samples" in d else None
    return {"rows": rows, "pca": f"PCA-{pca.get('components', '?')}", "notes": notes, "samples": samples,
            "units": data.get("units") if isinstance(data.get("units"), str) else None}


def _score(data: dict[str, Any]) -> dict[str, Any]:
    threshold = data.get("threshold") if isinstance(data.get("threshold"), dict) else {}
    detection = data.get("detection") if isinstance(data.get("detection"), dict) else {}
    rows = [(name, fmt(d.get("auroc")), fmt(d.get("average_precision", d.get("ap"))))
            for name, d in detection.items() if isinstance(d, dict)]
    facts = []
    if threshold:
        facts.append(f"threshold {fmt(threshold.get('value'))} (the {fmt(threshold.get('quantile'))} quantile of "
                     f"{fmt(threshold.get('validation_samples'))} validation scores)")
    if data.get("flagged") is not None:
        facts.append(f"{fmt(data['flagged'])} samples flagged" + (
            f", {fmt(data.get('flagged_anomalies'))} of {fmt(data.get('anomalies'))} anomalies"
            if data.get("anomalies") is not None else ""))
    if detection.get("skipped"):
        facts.append(f"no detection metrics: {detection['skipped']}")
    scored = data.get("data", {}).get("scored") if isinstance(data.get("data"), dict) else None
    return {"rows": rows, "facts": facts, "scored": scored}


def _export(data: dict[str, Any]) -> dict[str, Any]:
    parts = data.get("parts") if isinstance(data.get("parts"), dict) else {}
    check = data.get("check") if isinstance(data.get("check"), dict) else {}
    differences = check.get("max_difference_model_units") if isinstance(check.get("max_difference_model_units"),
                                                                         dict) else {}
    rows = [(name, str(part.get("file", "")), fmt(differences.get(name), 2)) for name, part in parts.items()
            if isinstance(part, dict)]
    note = f"checked in {check.get('runtime')} on {check.get('samples')}; tolerance {fmt(check.get('tolerance'))}" \
        if check else None
    return {"format": data.get("format"), "rows": rows, "note": note}


def _details(run: Run) -> list[tuple[str, str]]:
    s, ck = run.summary, run.checkpoint
    rows = []
    if s.get("device"):
        rows.append(("device, precision", f"{s['device']}, {s.get('precision')}"))
    if s.get("num_train") is not None:
        rows.append(("samples", f"{fmt(s['num_train'])} train / {fmt(s.get('num_val'))} validation"))
    if run.config is not None:
        c = run.config
        rows.append(("batch, optimizer", f"{c.data.batch_size}, {c.optimizer.name} (lr {typed(c.optimizer.lr)}), "
                                         f"scheduler {c.scheduler.name}"))
    times = sorted(t for r in run.metrics if isinstance(t := r.get("epoch_time_s"), (int, float)) and math.isfinite(t))
    if times:
        rows.append(("epoch time", f"median {seconds(times[len(times) // 2])}, slowest {seconds(times[-1])}"))
    memory = [m for r in run.metrics if isinstance(m := r.get("memory_mb"), (int, float)) and math.isfinite(m)]
    if memory:
        what = "CUDA peak allocated" if str(s.get("device", "")).startswith("cuda") else "process resident"
        rows.append(("memory", f"{max(memory):,.0f} MB at most ({what})"))
    if ck:
        rows.append(("versions", f"aetrain {ck['aetrain_version']}, torch {ck['torch_version']} (from {ck['file']})"))
        rows.append(("sample shape", " × ".join(map(str, ck["shape"]))))
    if s.get("run_id"):
        rows.append(("run id", str(s["run_id"])))
    if s.get("updated_at"):
        rows.append(("summary.json updated", str(s["updated_at"])))
    return rows


# --- a sweep's page ----------------------------------------------------------------------------------------

def sweep_page(sweep: Sweep) -> dict[str, Any]:
    jobs = sweep.jobs
    ok = sum(j.status == "ok" for j in jobs)
    failed = [j for j in jobs if j.status == "failed"]
    running = sum(j.status == "running" for j in jobs)
    seeds = settings(sweep)
    return {
        "kind": "sweep", "title": sweep.path.name, "path": str(sweep.path),
        "what": "Optuna search" if sweep.optuna else "grid sweep",
        "counts": {"jobs": len(jobs), "ok": ok, "failed": len(failed), "running": running},
        "best": _best(sweep), "command": typed_command(sweep), "shared": sweep.shared, "keys": sweep.keys,
        "grouped": sweep.grouped, "rows": [_row(sweep, j) for j in jobs],
        "data": _data(_chart_data(sweep)),
        "by_key": _uri(figures.objective_by_key(sweep)),
        "seeds": _seeds(seeds), "top": _top_reconstructions(sweep),
        "follow_ups": [{"code": f.code, "jobs": ", ".join(str(j.num) for j in sorted(f.jobs, key=lambda j: j.num)),
                        "count": len(f.jobs), "message": f.message, "suggestion": f.suggestion,
                        "command": f.command, "alternatives": f.alternatives} for f in follow_ups(sweep)],
        "failures": [{"num": j.num, "rel": j.rel, "setting": label(j.values), "error": j.error,
                      "log": (j.run.path / TRAIN_LOG).is_file()} for j in sorted(failed, key=lambda j: j.num)],
        "optuna": _optuna(sweep) if sweep.optuna else None,
        "groups": _groups(sweep) if sweep.grouped else None,
    }


def _uri(png: bytes | None) -> str | None:
    return figures.data_uri(png) if png else None


def _best(sweep: Sweep) -> dict[str, Any] | None:
    best = sweep.best
    if best is None:
        return None
    return {"num": best.num, "label": label(best.values), "objective": fmt(best.objective),
            "epoch": best.run.summary.get("best_epoch"), "rel": best.rel,
            "report": (best.run.path / REPORT).is_file()}


def _row(sweep: Sweep, job: Job) -> dict[str, Any]:
    s = job.run.summary
    cells = []
    for key in sweep.keys:
        value = job.values.get(key)
        cells.append({"text": short(value) if value is not None else "-", "title": value or "",
                      "sort": number(value) if number(value) is not None else (value or "")})
    findings = [f.code for f in job.doctor.findings] if job.doctor else []
    return {"num": job.num, "rel": job.rel, "report": (job.run.path / REPORT).is_file(), "cells": cells,
            "group": job.group, "status": job.status, "error": job.error,
            "best": fmt(job.objective), "best_sort": rounded(job.objective),
            "final": fmt(s.get("final_val_loss")), "final_sort": rounded(s.get("final_val_loss")),
            "best_epoch": s.get("best_epoch"), "epochs": job.run.epochs, "time": seconds(job.run.wall_time_s),
            "time_sort": rounded(job.run.wall_time_s), "doctor": ", ".join(findings),
            "verdict": job.doctor.verdict if job.doctor else "", "top": job is sweep.best}


def _chart_data(sweep: Sweep) -> dict[str, Any]:
    """What the page's script draws: the parallel coordinates (axes and each job's values) and every job's
    validation curve."""
    axes = []
    for key in sweep.keys:
        values = [j.values.get(key) for j in sweep.jobs if j.values.get(key) is not None]
        numeric = key != SEED and all(number(v) is not None for v in values)  # a seed is a name, not a quantity
        xs = [number(v) for v in values] if numeric else []
        log = numeric and min(xs) > 0 and max(xs) / min(xs) >= 10
        categories = [] if numeric else list(dict.fromkeys(v for j in sorted(sweep.jobs, key=lambda j: j.num)
                                                           if (v := j.values.get(key)) is not None))
        axes.append({"key": key, "label": key.rpartition(".")[2], "numeric": numeric, "log": bool(log),
                     "categories": categories})
    objectives = [j.objective for j in sweep.jobs if j.ranked]
    jobs = []
    for j in sweep.jobs:
        rows = [r for r in j.run.metrics if isinstance(r.get("epoch"), int)]
        jobs.append({
            "num": j.num, "status": j.status, "label": label(j.values), "objective": rounded(j.objective),
            "values": [(number(j.values[k]) if a["numeric"] else j.values[k]) if k in j.values else None
                       for k, a in zip(sweep.keys, axes)],
            "epochs": [r["epoch"] for r in rows], "val": [rounded(r.get("val/loss")) for r in rows],
        })
    return {"axes": axes, "objective_log": bool(objectives and min(objectives) > 0
                                                and max(objectives) / min(objectives) >= 10),
            "jobs": jobs, "best": sweep.best.num if sweep.best else None}


def _seeds(found: list[Any]) -> dict[str, Any] | None:
    if not found:
        return None
    best = found[0]
    rows = []
    for s in found:
        gap = s.mean - best.mean
        rows.append({"label": label(s.values), "seeds": s.seeds, "jobs": ", ".join(str(j.num) for j in s.jobs),
                     "mean": fmt(s.mean), "sd": fmt(s.sd, 2), "best": s is best,
                     "gap": "" if s is best else f"+{fmt(gap, 2)}" + (f" ({gap / best.sd:.1f} sd)"
                                                                       if best.sd > 0 else ""),
                     "within": s.within})
    return {"rows": rows, "best": label(best.values),
            "within": [r["label"] for r in rows if r["within"]]}


def _top_reconstructions(sweep: Sweep) -> dict[str, Any] | None:
    """The latest reconstruction picture of the best TOP_JOBS jobs: the originals once (when every job's are
    the same pixels: the same fixed validation samples), then each job's reconstruction row; a picture
    without the grid geometry (tabular heatmaps) is shown whole."""
    found = []
    for job in sweep.jobs:
        if not job.ranked or len(found) == TOP_JOBS:
            continue
        grid = latest_grid(job.run)
        if grid is not None:
            found.append((job, *grid))
    if not found:
        return None
    rows, whole = [], []
    originals = None
    for job, epoch, path in found:
        png = path.read_bytes()
        cut = figures.grid_rows(png, _tile_height(job)) if _tile_height(job) else None
        name = f"job {job.num}: {label(job.values)}"
        if cut is None or len(cut) < 2:
            whole.append({"label": name, "epoch": epoch, "objective": fmt(job.objective), "uri": _picture(path)})
            continue
        if originals is None:
            originals = cut[0]
        elif not figures.same_pixels(originals, cut[0]):
            whole.append({"label": name + " (other samples)", "epoch": epoch, "objective": fmt(job.objective),
                          "uri": _picture(path)})
            continue
        rows.append({"label": name, "num": job.num, "epoch": epoch, "objective": fmt(job.objective),
                     "images": [_pixels(r, STRIP_WIDTH) for r in cut[1:]]})
    return {"originals": _pixels(originals, STRIP_WIDTH) if originals is not None and rows else None,
            "rows": rows, "whole": whole}


def _tile_height(job: Job) -> int | None:
    """Pixels of one tile of the job's reconstruction grid: the sample's height, enlarged as the run drew it."""
    shape, cfg = job.run.checkpoint.get("shape"), job.run.config
    if not shape or len(shape) != 3 or cfg is None:
        return None
    zoom_to = cfg.outputs.grid_zoom_to
    zoom = max(1, zoom_to // max(shape[1:])) if zoom_to else 1
    return shape[1] * zoom


def _optuna(sweep: Sweep) -> dict[str, Any]:
    best = sweep.optuna_best
    params = best.get("best_params") if isinstance(best.get("best_params"), dict) else {}
    return {"picture": _uri(figures.best_so_far(sweep)),
            "params": [(k, short(str(v))) for k, v in params.items()],
            "value": fmt(best.get("best_value")) if best.get("best_value") is not None else None,
            "trials": len(sweep.jobs)}


NOT_FUSED = "(not fused)"


def _groups(sweep: Sweep) -> list[dict[str, Any]]:
    by: dict[str, list[Job]] = {}
    for job in sorted(sweep.jobs, key=lambda j: j.num):
        by.setdefault(job.group or NOT_FUSED, []).append(job)
    out = []
    for name, jobs in by.items():
        # a member's wall time is its group's while it trained, so the group's is the longest; jobs not fused
        # trained one after another. Per job: the row's time over its jobs, to set against a job's time alone
        times = [j.run.wall_time_s for j in jobs if j.run.wall_time_s is not None]
        total, count = (sum(times), len(times)) if name == NOT_FUSED else (max(times, default=None), len(jobs))
        out.append({"name": name, "jobs": ", ".join(str(j.num) for j in jobs), "count": len(jobs),
                    "ok": sum(j.status == "ok" for j in jobs), "time": seconds(total) if times else "-",
                    "per_job": seconds(total / count) if times else "-"})
    return out

