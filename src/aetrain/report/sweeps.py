"""What a sweep dir says, gathered for its page: the jobs, the keys they swept, how seeds spread, what the
doctor found in several jobs, Optuna's progress and fused groups.

Read from the files a sweep writes (README "Sweeps"): each job's run dir (as `aetrain.report.runs` reads a
run), the sweep's `multirun.yaml` (the command as typed), and Optuna's `optimization_results.yaml`. The
jobs' dirs are `aetrain.rundir.job_dirs` (the walk the sweep's summary takes); each job's status follows
`aetrain.commands.sweep.read_job`, re-read from the same files here so the page never needs the commands.

Seed-aware comparison: jobs whose overrides differ only in `trainer.seed` are one *setting*. A setting's
objective is the mean ± sd (sample standard deviation) over its seeds; a setting is *within the seed spread*
of the best one (lowest mean) when their ranges mean ± sd overlap: `|mean - best mean| <= sd + best sd`,
i.e. with these seeds the two cannot be told apart.
"""

from __future__ import annotations

import math
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aetrain.doctor import Finding
from aetrain.report.runs import Doctor, Run, doctor, lock_holder, read_run
from aetrain.rundir import HYDRA, MULTIRUN, SWEEP_MARKER, SWEEP_SUMMARY, fused_group, job_dirs

SEED = "trainer.seed"
OPTUNA_RESULTS = "optimization_results.yaml"  # Hydra's Optuna sweeper: the best parameters and value
RESUME_KEY = "hydra.launcher.resume"
DROPPED_IN_COMMANDS = ("hydra.sweep.dir", "hydra.mode", "hydra.run.dir", RESUME_KEY)  # a new command needs a new
# dir, and is not a resume of this one


@dataclass
class Job:
    """One job of a sweep: its run, its number, its swept values, and how it ended."""

    num: int  # hydra.job.num
    run: Run
    rel: str  # its dir relative to the sweep dir ("3")
    status: str  # ok | failed | running
    error: str  # one line; "" when ok
    values: dict[str, str] = field(default_factory=dict)  # swept key -> value as the job's overrides give it
    group: str | None = None  # the fused group it trained in (hydra/launcher=fused), None when not fused
    doctor: Doctor | None = None

    @property
    def objective(self) -> float:
        return self.run.objective if self.status == "ok" else math.nan

    @property
    def ranked(self) -> bool:
        return math.isfinite(self.objective)

    @property
    def setting(self) -> tuple[tuple[str, str], ...]:
        """The swept values other than the seed: what jobs repeated with other seeds share."""
        return tuple((k, v) for k, v in self.values.items() if k != SEED)


@dataclass
class Setting:
    """Jobs that differ only in trainer.seed, and their objective over the seeds."""

    values: tuple[tuple[str, str], ...]
    jobs: list[Job]
    mean: float
    sd: float  # sample standard deviation over the seeds; NaN with one seed
    within: bool | None = None  # within the seed spread of the best setting; None for the best or one seed

    @property
    def seeds(self) -> int:
        return len(self.jobs)


@dataclass
class FollowUp:
    """One finding of the doctor in several jobs, said once, with a sweep command to try its suggestion."""

    code: str
    jobs: list[Job]
    message: str  # one job's message, as an example
    suggestion: str  # the override(s) the command tries (the doctor's most direct suggestion)
    command: str
    alternatives: list[str]  # the doctor's other suggestions


@dataclass
class Sweep:
    path: Path
    jobs: list[Job]  # best objective first; failed and running jobs last, by number
    keys: list[str]  # swept keys, in the order typed
    shared: list[str]  # overrides every job shares
    typed: list[str]  # the sweep's overrides as typed (multirun.yaml), hydra's first; [] when unknown
    optuna: bool
    optuna_best: dict[str, Any]  # optimization_results.yaml; {} when none

    @property
    def best(self) -> Job | None:
        return self.jobs[0] if self.jobs and self.jobs[0].ranked else None

    @property
    def grouped(self) -> bool:
        return any(j.group is not None for j in self.jobs)


def is_sweep_dir(path: Path) -> bool:
    """A dir a sweep ran in: Hydra's multirun.yaml, aetrain's marker or summary (a folder that merely holds
    runs is not one)."""
    return any((path / name).is_file() for name in (MULTIRUN, SWEEP_MARKER, SWEEP_SUMMARY))


def read_sweep(path: Path) -> Sweep:
    path = path.resolve()
    jobs = [_read_job(d, path) for d in job_dirs(path)]
    keys, shared = swept_keys([j.run.overrides for j in jobs])
    for job in jobs:
        given = dict(_split(o) for o in job.run.overrides)
        job.values = {k: given[k] for k in keys if k in given}
    jobs.sort(key=lambda j: (not j.ranked, j.objective if j.ranked else 0.0, j.num))
    multirun = _yaml(path / MULTIRUN)
    if multirun is None and jobs:  # Optuna's sweeper writes no multirun.yaml: the first job's hydra.yaml says as much
        multirun = _yaml(min(jobs, key=lambda j: j.num).run.path / HYDRA / "hydra.yaml")
        found = _get(multirun, "hydra", "overrides")
        if isinstance(found, dict):  # its task overrides are its own values: the sweep's are the shared ones
            values = {k: list(dict.fromkeys(j.values[k] for j in sorted(jobs, key=lambda j: j.num) if k in j.values))
                      for k in keys}
            sampled = "optuna" in str(_get(multirun, "hydra", "sweeper", "_target_") or "")
            found["task"] = [*shared, *([] if sampled else [f"{k}={','.join(v)}" for k, v in values.items()])]
    overrides = _get(multirun, "hydra", "overrides") or {}
    typed = [str(o) for o in (overrides.get("hydra") or []) + (overrides.get("task") or [])] \
        if isinstance(overrides, dict) else []
    sweeper = str(_get(multirun, "hydra", "sweeper", "_target_") or "")
    results = _yaml(path / OPTUNA_RESULTS)
    optuna = "optuna" in sweeper or isinstance(results, dict) or any("hparams_search=optuna" == o for o in typed)
    return Sweep(path, jobs, keys, shared, typed, optuna, results if isinstance(results, dict) else {})


def _read_job(run_dir: Path, sweep_dir: Path) -> Job:
    run = read_run(run_dir)
    num = _job_num(run_dir)
    s = run.summary
    status, error = "failed", ""
    if s.get("status") in ("ok", "failed"):
        status, error = s["status"], _one_line(s.get("error") or "")
    elif s.get("status") == "running":
        if lock_holder(run.path):
            status, error = "running", ""
        else:
            error = "did not finish: its process ended during training (killed, or out of memory?)"
    elif run.metrics:
        status = "ok"  # a run from before summary.json: metrics.csv is all there is
    else:
        error = "no result: the job ended before training started"
    if status == "failed" and not error:
        error = "failed (no reason recorded)"
    job = Job(num, run, run_dir.relative_to(sweep_dir).as_posix(), status, error, group=fused_group(s))
    job.doctor = doctor(run)
    return job


def _job_num(run_dir: Path) -> int:
    num = _get(_yaml(run_dir / HYDRA / "hydra.yaml"), "hydra", "job", "num")
    if isinstance(num, int):
        return num
    return int(run_dir.name) if run_dir.name.isdigit() else -1


def swept_keys(overrides: list[list[str]]) -> tuple[list[str], list[str]]:
    """The keys whose values differ between jobs (or that some jobs lack), in the order typed; and the
    overrides every job shares."""
    if not overrides:
        return [], []
    parsed = [dict(_split(o) for o in job) for job in overrides]
    order = list(dict.fromkeys(k for job in parsed for k in job))
    keys = [k for k in order if len({job.get(k) for job in parsed}) > 1] if len(parsed) > 1 else []
    shared = [o for o in overrides[0] if _split(o)[0] not in keys]
    return keys, shared


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key, value


def number(value: str | None) -> float | None:
    """A swept value as a number (for axes and sorting), or None when it is not one."""
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def short(value: str) -> str:
    """`0.0012520653814999472` as `0.001252` (Optuna's draws); other values as they are."""
    x = number(value)
    return f"{x:.4g}" if x is not None and len(value) > 8 else value


def label(values: dict[str, str] | tuple[tuple[str, str], ...]) -> str:
    """`lr=0.001 latent_dim=8`: swept values under the last part of their key."""
    items = values.items() if isinstance(values, dict) else values
    return " ".join(f"{k.rpartition('.')[2]}={short(v)}" for k, v in items) or "(no overrides)"


# --- seeds -----------------------------------------------------------------------------------------------

def settings(sweep: Sweep) -> list[Setting]:
    """The settings of a sweep that repeated some setting with several seeds, best mean first; [] otherwise."""
    if SEED not in sweep.keys:
        return []
    by: dict[tuple[tuple[str, str], ...], list[Job]] = {}
    for job in sweep.jobs:
        if job.ranked:
            by.setdefault(job.setting, []).append(job)
    found = []
    for values, jobs in by.items():
        objectives = [j.objective for j in jobs]
        sd = statistics.stdev(objectives) if len(objectives) > 1 else math.nan
        found.append(Setting(values, sorted(jobs, key=lambda j: j.num), statistics.fmean(objectives), sd))
    if not any(s.seeds > 1 for s in found):
        return []
    found.sort(key=lambda s: (s.mean, s.values))
    best = next(s for s in found if s.seeds > 1)
    for s in found:
        if s is not best and s.seeds > 1:
            s.within = abs(s.mean - best.mean) <= s.sd + best.sd
    found.remove(best)
    return [best, *found]


# --- the doctor's follow-up -------------------------------------------------------------------------------

def follow_ups(sweep: Sweep, *, least: int = 2) -> list[FollowUp]:
    """Each finding the doctor made in `least` jobs or more, once, with a command that tries its most direct
    suggestion on those jobs: for a grid, the swept keys restricted to the values of the jobs it was found in;
    for Optuna, the same search. The suggested keys replace the swept or shared ones."""
    by: dict[str, list[tuple[Job, Finding]]] = {}
    for job in sorted(sweep.jobs, key=lambda j: j.num):
        for finding in job.doctor.findings if job.doctor else []:
            by.setdefault(finding.code, []).append((job, finding))
    out = []
    for code, found in by.items():
        if len(found) < least:
            continue
        jobs = [j for j, _ in found]
        first = [next(s for s in f.suggestion if is_overrides(s)) for _, f in found
                 if any(map(is_overrides, f.suggestion))]
        if not first:
            continue
        suggested: dict[str, list[str]] = {}
        for text in first:
            for override in shlex.split(text):
                key, value = _split(override)
                suggested.setdefault(key, [])
                if value not in suggested[key]:
                    suggested[key].append(value)
        command = sweep_command(sweep, jobs, suggested)
        example = found[0][1]
        alternatives = list(dict.fromkeys(s for _, f in found for s in f.suggestion[1:]))
        out.append(FollowUp(code, jobs, example.message, " ".join(f"{k}={','.join(v)}" for k, v in suggested.items()),
                            command, alternatives))
    return sorted(out, key=lambda f: (-len(f.jobs), f.code))


def is_overrides(suggestion: str) -> bool:
    """Whether a suggestion of the doctor is overrides to add (`optimizer.lr=0.003 model.init=...`), not a
    command of its own (`aetrain lr_find`)."""
    words = shlex.split(suggestion)
    return bool(words) and all("=" in w for w in words)


def sweep_command(sweep: Sweep, jobs: list[Job], suggested: dict[str, list[str]]) -> str:
    """`aetrain -m ...`: the sweep again on `jobs`, with `suggested` (key -> values) set."""
    if sweep.optuna and sweep.typed:  # the same search, with the suggestion fixed (several values: a choice)
        base = [o for o in sweep.typed if _split(o)[0] not in (*DROPPED_IN_COMMANDS, *suggested)]
    else:
        base = [o for o in sweep.shared if _split(o)[0] not in suggested]
        for key in sweep.keys:
            if key in suggested:
                continue
            values = list(dict.fromkeys(j.values[key] for j in sorted(jobs, key=lambda j: j.num) if key in j.values))
            if values:
                base.append(f"{key}={','.join(values)}")
    return " ".join(["aetrain", "-m", *(shlex.quote(o) for o in base),
                     *(shlex.quote(f"{k}={','.join(v)}") for k, v in suggested.items())])


def typed_command(sweep: Sweep) -> str | None:
    """The command that ran the sweep, as typed (from multirun.yaml); of a resumed sweep, the sweep it continued
    (without `hydra.launcher.resume` and the `hydra.sweep.dir` a resume names)."""
    if not sweep.typed:
        return None
    resumed = any(_split(o)[0] == RESUME_KEY for o in sweep.typed)
    dropped = ("hydra.mode", RESUME_KEY, *(("hydra.sweep.dir",) if resumed else ()))
    return " ".join(["aetrain", "-m", *(shlex.quote(o) for o in sweep.typed if _split(o)[0] not in dropped)])


# --- helpers ---------------------------------------------------------------------------------------------

def _yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml's when built
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())
