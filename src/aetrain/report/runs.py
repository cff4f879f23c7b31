"""What a run dir says, gathered for its page (and, in part, for its row on a sweep's page).

Everything is read from the files a run and the commands after it write (README "What a run writes"):
summary.json, metrics.csv, .hydra/ (the config and the overrides typed), the pictures, diagnostics.csv,
eval/, score/, encode/, export/, and one checkpoint (last.pt, else best.pt) for the versions that trained
it and the shape of a sample. Nothing is written, and nothing depends on the clock or on the order files
are listed in: the same run dir always gives the same page.

The training doctor's findings are computed here from metrics.csv and diagnostics.csv with the rules of
`aetrain.doctor`, exactly as `aetrain doctor` assembles them (without writing doctor.json), so a run
nobody ran the doctor on still shows them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aetrain.config import CHOICES, Config, default_choice, from_json, typed
from aetrain.doctor import Facts, Finding, Trace, diagnose, verdict
from aetrain.errors import ConfigError
from aetrain.rundir import (
    BEST,
    DIAGNOSTICS,
    DIAGNOSTICS_PLOT,
    ENCODE,
    EVAL,
    EXPORT,
    EXPORT_INFO,
    HYDRA,
    LAST,
    LOCK,
    METRICS,
    RECONSTRUCTIONS,
    SCORE,
    SUMMARY,
    checkpoint_dir,
    picture_epoch,
    read_diagnostics,
    read_metrics,
    read_summary,
)

REPORT = "report.html"  # the page, in the run dir (or sweep dir) it describes

# how a run ended (summary.json's `ended`, else its `status`) -> (badge class, words)
ENDINGS = {
    "ok": ("ok", "finished"),
    "stopped_early": ("ok", "stopped early"),
    "diverged": ("failed", "diverged"),
    "failed": ("failed", "failed"),
    "interrupted": ("failed", "interrupted"),
    "running": ("running", "running"),
    "unknown": ("unknown", "unknown"),
}


@dataclass
class Standing:
    """How a run stands: its badge (ok, failed, running, unknown), a word, and a sentence of detail."""

    kind: str  # ok | failed | running | unknown: the badge's colour
    word: str  # finished | stopped early | diverged | failed | interrupted | running | killed? | unknown
    detail: str  # a sentence: why it stopped, its error, who is training it


@dataclass
class Doctor:
    """The training doctor's view of a run: `aetrain.doctor`'s rules on its metrics and diagnostics."""

    verdict: str
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)  # what it could not judge, and why


@dataclass
class Run:
    """One run dir, read."""

    path: Path  # resolved
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    overrides: list[str]  # as typed when the run started (.hydra/overrides.yaml); [] when unknown
    resumes: list[list[str]]  # the overrides of each later invocation that continued it (.hydra/resume-N/)
    config: Config | None  # .hydra/config.yaml, typed; None when missing or unreadable
    checkpoint: dict[str, Any]  # facts from last.pt/best.pt: aetrain_version, torch_version, shape; {} without one
    status: Standing

    @property
    def title(self) -> str:
        model = self.summary.get("model") or (self.config.model.name if self.config else None)
        data = self.summary.get("data") or (self.config.data.name if self.config else None)
        return f"{model} on {data}" if model and data else self.path.name

    @property
    def objective(self) -> float:
        """The best validation loss, NaN when the run has none."""
        best = self.summary.get("best_val_loss")
        if isinstance(best, (int, float)) and self.summary.get("status") is not None:
            return float(best)
        losses = [v for v in (_float(r.get("val/loss")) for r in self.metrics) if math.isfinite(v)]
        return min(losses, default=math.nan)

    @property
    def epochs(self) -> int | None:
        epochs = self.summary.get("epochs")
        return epochs if isinstance(epochs, int) else (len(self.metrics) if self.metrics else None)

    @property
    def wall_time_s(self) -> float | None:
        wall = self.summary.get("wall_time_s")
        if isinstance(wall, (int, float)):
            return float(wall)
        times = [_float(r.get("epoch_time_s")) for r in self.metrics]
        return sum(t for t in times if math.isfinite(t)) if self.metrics else None


def is_run_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in (SUMMARY, METRICS, f"{HYDRA}/config.yaml"))


def read_run(path: Path) -> Run:
    """The run in `path`; ConfigError when its metrics.csv is not a metrics table."""
    path = path.resolve()
    try:
        metrics = read_metrics(path / METRICS)
    except (ValueError, OSError) as e:
        raise ConfigError(f"{path}: {e}") from None
    summary = read_summary(path)
    overrides = read_overrides(path / HYDRA / "overrides.yaml")
    resumes = [read_overrides(p / "overrides.yaml") for p in _resume_dirs(path / HYDRA)]
    config = read_config(path / HYDRA / "config.yaml")
    return Run(path, summary, metrics, overrides, resumes, config, checkpoint_facts(path),
               status_of(path, summary, metrics))


def read_overrides(path: Path) -> list[str]:
    """A Hydra overrides.yaml: the list of `key=value` typed; [] when missing or not such a list."""
    loaded = _yaml(path)
    return [str(o) for o in loaded] if isinstance(loaded, list) else []


def read_config(path: Path) -> Config | None:
    """A run's .hydra/config.yaml as a typed Config; None when missing or not an aetrain config."""
    loaded = _yaml(path)
    if not isinstance(loaded, dict):
        return None
    try:
        return from_json(json.dumps(loaded))
    except (ValueError, TypeError, AttributeError, ConfigError):
        return None


def _yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml's when built
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def _resume_dirs(hydra_dir: Path) -> list[Path]:
    """.hydra/resume-N/ in order of N (as the train command names them)."""
    found = [(int(p.name[7:]), p) for p in hydra_dir.glob("resume-*") if p.is_dir() and p.name[7:].isdigit()]
    return [p for _, p in sorted(found)]


def checkpoint_facts(run_dir: Path) -> dict[str, Any]:
    """What the run's checkpoint (last.pt, else best.pt) says beyond its config: the aetrain and torch versions
    that wrote it, the shape of one sample, the epoch it holds; {} without a readable one."""
    for name in (LAST, BEST):
        path = checkpoint_dir(run_dir) / name
        if not path.is_file():
            continue
        from aetrain import checkpoint  # torch: only for a run that has a checkpoint
        from aetrain.errors import CheckpointError

        try:
            ckpt = checkpoint.load(path)
            shape = tuple(checkpoint.spec_from_checkpoint(ckpt).shape)
        except CheckpointError:
            continue
        state = ckpt.get("state") if isinstance(ckpt.get("state"), dict) else {}
        return {"file": f"{checkpoint_dir(run_dir).name}/{name}", "shape": shape,
                "aetrain_version": str(ckpt.get("aetrain_version") or "?"),
                "torch_version": str(ckpt.get("torch_version") or "?"), "epoch": state.get("epoch")}
    return {}


def status_of(run_dir: Path, summary: dict[str, Any], metrics: list[dict[str, Any]]) -> Standing:
    """How the run stands, from summary.json (and, for a run that says it is running, its lock file)."""
    status, ended = summary.get("status"), summary.get("ended")
    epochs, of = summary.get("epochs", len(metrics)), summary.get("max_epochs")
    count = f"{epochs} of {of} epochs" if of else f"{epochs} epoch{'' if epochs == 1 else 's'}"
    if status == "running":
        holder = lock_holder(run_dir)
        if holder:
            return Standing("running", "running", f"training now ({holder}), {count} so far; this page shows "
                                                "them and is not updated by itself: run aetrain report again")
        return Standing("failed", "killed?", f"summary.json says running, but no process holds the run dir: it was "
                                           f"killed (kill -9, out of memory?) after {count}")
    if status in ("ok", "failed"):
        key = ended if ended in ENDINGS else status
        kind, word = ENDINGS[key]
        if key == "ok":
            return Standing(kind, word, f"{count}")
        if key == "stopped_early":
            return Standing(kind, word, f"{summary.get('stop_reason') or 'before trainer.max_epochs'}; {count}")
        return Standing(kind, word, f"after {count}: {summary.get('error') or 'no reason recorded'}")
    if metrics:
        return Standing("unknown", "unknown", f"no summary.json (a run from before it existed): {len(metrics)} "
                                            f"epoch{'' if len(metrics) == 1 else 's'} in metrics.csv")
    return Standing("unknown", "unknown", "no result: nothing was trained")


def lock_holder(run_dir: Path) -> str | None:
    """`pid 4242 since 2026-11-23 10:00:00` when a live process on this host holds the run dir; else None.
    (A lock named by a process on another host cannot be checked from here: it counts as held.)"""
    try:
        text = (run_dir / LOCK).read_text().split()
    except OSError:
        return None
    # "pid <pid> on <host> since <date> <time>", as aetrain.rundir.claimed writes it
    if len(text) < 4 or text[0] != "pid" or not text[1].isdigit():
        return None
    pid, host, since = int(text[1]), text[3], " ".join(text[5:7])
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, someone else's
    return f"pid {pid} on {host} since {since}"


# --- what was run --------------------------------------------------------------------------------------

def command(overrides: list[str], *extra: str, sweep: bool = False) -> str:
    """`aetrain <overrides...>` as a shell line (each argument quoted where the shell needs it)."""
    return " ".join(["aetrain", *(["-m"] if sweep else []), *(shlex.quote(o) for o in [*overrides, *extra])])


def config_differences(cfg: Config) -> list[tuple[str, str, str]]:
    """(key, value, default) for every key whose value differs from its default: a group whose choice is not
    the default one (`model`: vae, dense_ae), then each key that differs from its choice's defaults."""
    out = []
    for f in dataclasses.fields(Config):
        section = getattr(cfg, f.name)
        if f.name in CHOICES:
            default_name = getattr(Config(), f.name).name
            if section.name != default_name:
                out.append((f.name, section.name, default_name))
            default = default_choice(f.name, section.name)
        else:
            default = getattr(Config(), f.name)
        if not dataclasses.is_dataclass(section):  # a plain key of the config's top (plugins)
            out += [(f.name, typed(section), typed(default))] if section != default else []
            continue
        flat, base = _flat(dataclasses.asdict(section), f.name), _flat(dataclasses.asdict(default), f.name)
        out += [(key, typed(value), typed(base.get(key))) for key, value in flat.items()
                if key.rpartition(".")[2] != "name" and value != base.get(key)]
    return out


def _flat(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}.{key}"))
        else:
            out[f"{prefix}.{key}"] = value
    return out


# --- pictures ------------------------------------------------------------------------------------------

def picture_folders(run: Run) -> list[str]:
    """The folders of per-epoch pictures: reconstructions/ and the family's galleries (a VAE's samples/)."""
    galleries = run.summary.get("galleries")
    names = [RECONSTRUCTIONS, *(sorted(galleries) if isinstance(galleries, dict) else ["samples"])]
    return [n for n in dict.fromkeys(names) if pictures(run.path / n)]


def pictures(folder: Path) -> dict[int, Path]:
    """epoch -> picture file of a folder of `epoch_NNN.png` files, in epoch order."""
    found = {e: p for p in folder.glob("epoch_*.png") if (e := picture_epoch(p)) is not None}
    return dict(sorted(found.items()))


def latest_grid(run: Run) -> tuple[int, Path] | None:
    """The run's latest reconstruction picture and its epoch."""
    found = pictures(run.path / RECONSTRUCTIONS)
    return next(reversed(found.items()), None) if found else None


# --- the training doctor -------------------------------------------------------------------------------

def doctor(run: Run) -> Doctor | None:
    """The doctor's verdict and findings on the run, as `aetrain doctor` gives them; None without metrics."""
    try:
        rows = read_diagnostics(run.path / DIAGNOSTICS)
    except (ValueError, OSError):
        rows = []
    if not run.metrics and not rows:
        return None
    notes = []
    shape = run.checkpoint.get("shape")
    if run.config is None:
        notes.append("no .hydra/config.yaml: rules that need the config (identity_mapping, suggestions) are generic")
    elif shape is None:
        notes.append("no readable checkpoint: the input's size is unknown, so identity_mapping judges by the "
                     "reconstruction check only")
    facts = Facts.of(run.config, shape) if run.config is not None else Facts()
    trace = Trace()
    for record in run.metrics:
        trace.add_epoch(record)
    trace.add_rows(rows)
    ended = run.summary.get("ended")
    trace.status = ended if isinstance(ended, str) else None
    if trace.status in ("diverged", "failed", "interrupted"):
        trace.failed_epoch = int(run.summary.get("epochs") or len(run.metrics)) + 1
    findings = diagnose(trace, facts)
    if not rows:
        notes.append(f"no {DIAGNOSTICS} (diagnostics.enabled=false, or a run from before diagnostics): judged from "
                     f"{METRICS} alone")
    return Doctor(verdict(trace, findings), findings, notes)


# --- after training: eval, score, encode, export --------------------------------------------------------

def after_training(run_dir: Path) -> dict[str, dict[str, Any]]:
    """What `aetrain eval`, `score` and `export` wrote into their default folders: {command: its JSON}."""
    out = {}
    for name, file in ((EVAL, "metrics.json"), (SCORE, "metrics.json"), (EXPORT, EXPORT_INFO)):
        try:
            data = json.loads((run_dir / name / file).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            out[name] = data
    return out


AFTER_PICTURES = {  # the pictures of the commands after training, in the order shown
    EVAL: ("errors.png", "worst.png"),
    SCORE: ("roc.png", "scores.png"),
    ENCODE: ("codes.png",),
}
DOCTOR_PICTURE = DIAGNOSTICS_PLOT  # aetrain doctor's per-layer heatmaps, when it was run


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
