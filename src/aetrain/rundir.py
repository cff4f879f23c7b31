"""A run directory: its files' names, readers of metrics.csv and summary.json, and its lifecycle (`RunDir`).

Torch-free and Hydra-free, so sweeps, resume, the outputs and every command share one spelling
of each file name, one parser of each file, and one way to make, hold and close a run dir,
whether the CLI, a sweep's launcher or a Python script asks. What a run writes is described in
the README ("What a run writes"); the writers of metrics and pictures live in `aetrain.train`.

A run dir's life (each step exists once, here):
- `RunDir.allocate(base)`: a new dir, `base` or `base_2`, `base_3`... (created atomically, so two
  runs started in the same second get a dir each); or `RunDir(path)` for a dir the user named;
- `claimed()`: this process holds it while it trains (a second process is refused);
- `refuse_taken()`: a fresh run never writes over what another run left there, and no run writes into a
  folder that holds anything but a run (`refuse_foreign()`: a folder of one's own, the working dir);
- `record(invocation)`: the composed config and the overrides typed, as text in .hydra/ (a
  resumed run adds .hydra/resume-N/), read back by `saved_overrides()` and `config()`;
- `write_summary()`: summary.json, atomically; its `status` and `ended` say a `Status`;
- `record_failure(error)`: a run (a sweep's job) that failed says why in summary.json;
- `release()`: a run that ended before writing anything leaves no dir behind.

A sweep's dir: `job_dirs` finds its jobs; `resuming` / `prepare_resume` say what hydra.launcher.resume=true
does with each (kept, continued, started again, or refused while a live process trains there), under either
launcher.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import json
import logging
import math
import os
import shutil
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aetrain.atomic import write_atomic
from aetrain.errors import ConfigError

if TYPE_CHECKING:
    from aetrain.config import Config

try:
    import fcntl
except ImportError:  # not POSIX: the lock file's existence is the claim
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

METRICS = "metrics.csv"
SUMMARY = "summary.json"
TRAIN_LOG = "train.log"
LOSS_CURVE = "loss_curve.png"


def loss_curve_vector(fmt: str) -> str:
    """loss_curve.svg or loss_curve.pdf: the loss curve again, as vector graphics (outputs.figure_format)."""
    return f"loss_curve.{fmt}"


RECONSTRUCTIONS = "reconstructions"  # reconstructions/epoch_NNN.png
TENSORBOARD = "tensorboard"
HYDRA = ".hydra"  # the composed config, the overrides typed, Hydra's own config
CHECKPOINTS = "checkpoints"
LAST, BEST = "last.pt", "best.pt"
SPLIT = "split.json"  # the source indices of the train/val/test samples, written when training starts

# what a run writes before its first last.pt, train.log aside: `RunDir.start_over` clears it
FIRST_ATTEMPT = (SUMMARY, METRICS, "diagnostics.csv", SPLIT, LOSS_CURVE, HYDRA, CHECKPOINTS, TENSORBOARD,
                 RECONSTRUCTIONS, "samples", "report.html")

# The commands after training, each writing into its own folder of the run dir (or `<command>.out`).
EVAL = "eval"  # aetrain eval
EVAL_FILES = ("metrics.json", "per_sample.csv", "errors.png", "worst.png")
ENCODE = "encode"  # aetrain encode
ENCODE_FILES = ("codes.npy", "indices.npy", "labels.npy", "codes.png")
SCORE = "score"  # aetrain score
SCORE_FILES = ("metrics.json", "scores.csv", "roc.png", "scores.png")
EXPORT = "export"  # aetrain export: <part><suffix of the format> for each part, and export.json
EXPORT_PARTS = ("model", "encoder", "decoder")
EXPORT_SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported_program": ".pt2"}  # format -> suffix
EXPORT_INFO = "export.json"  # inputs, outputs, units and the check's differences
EXPORT_FILES = (*(f"{part}{suffix}" for suffix in EXPORT_SUFFIXES.values() for part in EXPORT_PARTS), EXPORT_INFO)
COMMAND_FILES = {EVAL: EVAL_FILES, ENCODE: ENCODE_FILES, SCORE: SCORE_FILES, EXPORT: EXPORT_FILES}  # what each writes
LOCK = ".aetrain.lock"  # held by the process training into the run dir (see `RunDir.claimed`); removed when it ends
DIAGNOSTICS = "diagnostics.csv"  # the training doctor's per-layer statistics, one row per layer per sampled step
DOCTOR = "doctor.json"  # `aetrain doctor`'s findings
DIAGNOSTICS_PLOT = "diagnostics.png"  # `aetrain doctor`'s per-layer picture
# tensorboard/diag/: the doctor's diag/ scalars, a TensorBoard run of their own (in the run's own directory, the
# resume marker of one writer would make TensorBoard drop the other's later points)
DIAG_TENSORBOARD = "diag"
# a sweep dir's own files (aetrain.commands.sweep writes them; the report reads them)
SWEEP_SUMMARY = "sweep_summary.csv"
SWEEP_MARKER = ".aetrain-sweep"  # created exclusively when a sweep starts: two sweeps never share a dir
MULTIRUN = "multirun.yaml"  # Hydra's record of the sweep: its config and the overrides as typed
LR_FIND = "lr_find"  # `aetrain lr_find`'s run dirs: outputs/lr_find/<date>/<time>/
LR_FIND_FILES = ("lr_find.csv", "lr_find.png", "lr_find.json")  # per step: lr, loss; the plot; the suggestion
# diagnostics.csv's columns; a row fills those of its kind (a layer with parameters, an activation, the code,
# the reconstruction check) and leaves the others empty
DIAGNOSTICS_COLUMNS = ("step", "epoch", "layer", "kind", "grad_norm", "weight_norm", "update_ratio", "dead_share",
                       "saturated_share", "code_mean_abs", "code_unit_var", "data_error", "noise_error", "hf_ratio",
                       "code_unit_effect")


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS


def picture_name(epoch: int) -> str:
    """The file of an epoch's picture inside its folder (reconstructions/, samples/, ...)."""
    return f"epoch_{epoch:03d}.png"


def picture_epoch(path: Path) -> int | None:
    """The epoch a picture file was drawn at, or None for a file not named by `picture_name`."""
    stem = path.stem
    return int(stem[6:]) if stem.startswith("epoch_") and stem[6:].isdigit() else None


def latest_picture(folder: Path, *, up_to: float = math.inf) -> Path | None:
    """The picture of the latest epoch (not after `up_to`) in `folder`, or None."""
    found = [(e, p) for p in folder.glob("epoch_*.png") if (e := picture_epoch(p)) is not None and e <= up_to]
    return max(found)[1] if found else None


def run_dir_of(path: str | Path) -> Path:
    """The run directory a checkpoint file (or run dir) belongs to: checkpoints/x.pt -> its run dir."""
    p = Path(path)
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == CHECKPOINTS else p.parent


def own_run_dir(path: str | Path, run_id: Any) -> Path | None:
    """The run dir that a checkpoint (`path`: the file, or a run dir) was written in, or None when it lies elsewhere.

    `<dir>` is the checkpoint's own run when the checkpoint is `<dir>/checkpoints/<name>.pt` (or `<dir>`
    itself was given) and `<dir>/summary.json` names the run the checkpoint belongs to (`run_id`). A
    checkpoint from before run ids (run_id None) belongs to such a `<dir>` when it has `.hydra/config.yaml`
    and a summary.json without a run id (run_id not a string counts as None). Anything else (a copy kept in a
    folder of one's own, or put into another run's checkpoints/) is not in its run dir: continuing it must not
    write there. A damaged `<dir>/summary.json` is a ConfigError naming it (never read as "elsewhere").
    """
    p = Path(path)
    if not p.is_dir() and p.parent.name != CHECKPOINTS:
        return None
    run_dir = run_dir_of(p)
    found = _summary_for_resume(run_dir, path, run_id).get("run_id")
    if isinstance(run_id, str):
        return run_dir if found == run_id else None
    return run_dir if found is None and (run_dir / HYDRA / "config.yaml").is_file() else None


def _summary_for_resume(run_dir: Path, path: str | Path, run_id: Any) -> dict[str, Any]:
    """summary.json as a dict ({} when there is none) for deciding whether a checkpoint may continue in its dir.
    A damaged one is a ConfigError naming it: read as missing, the run would silently continue elsewhere."""
    summary = run_dir / SUMMARY
    try:
        data = json.loads(summary.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        data, reason = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    else:
        reason = f"a JSON {type(data).__name__}, not an object"
    if isinstance(data, dict):
        return data
    fix = f'replace it with {{"run_id": "{run_id}"}}' if isinstance(run_id, str) else "repair it"
    raise ConfigError(f"{summary} is damaged ({reason}); it says which run the dir holds, so a resume of {path} "
                      f"cannot tell whether to continue there: {fix} to continue the run in its dir, or move it away "
                      f"to continue in a new run dir without the earlier epochs' metrics")


def number(text: str | None) -> float | int:
    """A metrics.csv cell as a number: int for counts, float otherwise, NaN for an empty cell."""
    if text is None or text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


# diagnostics.csv has a number per code unit in one cell: ~10 characters x latent_dim, beyond csv's 128 kB default
CSV_FIELD_LIMIT = 2**30


def _read_table(path: Path) -> tuple[list[dict[str, str]], list[str]] | None:
    """A CSV file's rows (as dicts) and columns; None when there is no such file."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            return list(reader), list(reader.fieldnames or [])
    except FileNotFoundError:
        return None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.csv's rows with numeric cells (a missing file: no rows). Raises ValueError for a file
    that is not a metrics table (no `epoch` column)."""
    table = _read_table(path)
    if table is None:
        return []
    rows, columns = table
    if "epoch" not in columns:
        raise ValueError(f"{path}: not an aetrain metrics table (no 'epoch' column)")
    return [{k: number(v) for k, v in row.items() if k is not None} for row in rows]


def split_record(num_samples: int, splits: dict[str, list[int]], data: dict[str, Any]) -> str:
    """split.json's text: `data` (the data config), `num_samples` in the source, and each split's indices."""
    return json.dumps({"data": data, "num_samples": num_samples, **splits}, separators=(",", ":")) + "\n"


def read_split(run_dir: Path) -> dict[str, Any] | None:
    """split.json as a dict (keys data, num_samples, train, val, test), or None when the run has none."""
    try:
        data = json.loads((run_dir / SPLIT).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and all(k in data for k in ("num_samples", "train", "val", "test")) else None


def read_diagnostics(path: Path) -> list[dict[str, Any]]:
    """diagnostics.csv's rows with numeric cells (`code_unit_var`, `code_unit_effect`: lists of floats), empty
    cells left out; a missing file: no rows. Raises ValueError for a file that is not a diagnostics table."""
    table = _read_table(path)
    if table is None:
        return []
    rows, columns = table
    if not {"step", "layer"} <= set(columns):
        raise ValueError(f"{path}: not an aetrain diagnostics table (no 'step' and 'layer' columns)")
    out = []
    for row in rows:
        parsed: dict[str, Any] = {}
        for key, text in row.items():
            if key is None or text in (None, ""):
                continue
            if key in ("layer", "kind"):
                parsed[key] = text or ""
            elif key in ("code_unit_var", "code_unit_effect"):
                parsed[key] = [float(v) for v in text.split()]
            else:
                parsed[key] = number(text)
        out.append(parsed)
    return out


def read_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json as a dict; {} when it is missing or unreadable."""
    try:
        data = json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def fused_group(summary: dict[str, Any]) -> str | None:
    """The fused group a run trained in (hydra/launcher=fused), from its summary.json's `group`: an object with an
    `id` (as a fused member writes it), or a plain name or number; None for a run trained alone."""
    group = summary.get("group")
    if isinstance(group, dict):
        group = group.get("id", group.get("name"))
    return None if group is None or isinstance(group, (dict, list)) else str(group)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The run dirs of a sweep's jobs, sorted: every dir with a `.hydra/overrides.yaml` up to three levels down
    (wherever hydra.sweep.subdir put it), and numbered dirs without one (a job that ended before it wrote
    anything). Not deeper: a sweep dir pointed at a big tree must not be searched to the bottom. One walk for
    the sweep's summary (`aetrain.commands.sweep`), its resume and its report page (`aetrain.report`)."""
    found = {p.parent.parent for depth in (1, 2, 3) for p in sweep_dir.glob("*/" * depth + f"{HYDRA}/overrides.yaml")}
    if sweep_dir.is_dir():
        found |= {p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()}
    return sorted(found)


class Status(str, Enum):
    """How a run stands or ended: one vocabulary for the engine, summary.json, the sweep table and the doctor."""

    RUNNING = "running"  # training, or killed without a word (nothing else wrote the end)
    OK = "ok"  # trained to trainer.max_epochs
    STOPPED_EARLY = "stopped_early"  # early stopping ended it: a result like ok
    INTERRUPTED = "interrupted"  # a signal stopped it after it saved last.pt: resume it
    DIVERGED = "diverged"  # a non-finite loss stopped it
    FAILED = "failed"  # an error stopped it, or it failed before training started

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def is_result(self) -> bool:
        """The run finished and its numbers are a result."""
        return self in (Status.OK, Status.STOPPED_EARLY)

    @property
    def outcome(self) -> str:
        """summary.json's `status`: running | ok | failed (its `ended` holds the status itself)."""
        return "running" if self is Status.RUNNING else "ok" if self.is_result else "failed"

    @classmethod
    def of(cls, summary: dict[str, Any]) -> Status | None:
        """The status a summary.json says; None when it says none. Its `ended`, unless its `status` says failed
        over a result (a failure recorded after the run ended); without `ended` (written before it existed, or
        by a job that failed before training), its `status`: ok, failed or running."""
        ended = summary.get("ended")
        status = cls._parse(ended) if isinstance(ended, str) else None
        coarse = summary.get("status")
        if coarse == "failed" and (status is None or status.is_result):
            return cls.FAILED
        return status or (cls._parse(coarse) if coarse in ("ok", "failed", "running") else None)

    @classmethod
    def _parse(cls, value: str) -> Status | None:
        try:
            return cls(value)
        except ValueError:
            return None


@dataclass(frozen=True)
class Invocation:
    """What was run, as text for the run dir's .hydra/: the composed config (YAML), the overrides as typed, and
    Hydra's own config (YAML) when Hydra composed it."""

    config_yaml: str
    overrides: tuple[str, ...] = ()
    hydra_yaml: str | None = None

    @classmethod
    def of(cls, cfg: Config, overrides: tuple[str, ...] = ()) -> Invocation:
        """What was run, from a typed config (a run started from Python, not composed by Hydra)."""
        import yaml

        return cls(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True), tuple(overrides))


class RunDirTaken(ConfigError):
    """The run dir holds another run, or another live process is training into it: nothing may be written there."""


class RunDirInUse(RunDirTaken):
    """Another live process is training into the run dir."""


def cannot_create(error: OSError, key: str) -> str:
    """The one line for an output dir that cannot be made, naming the setting that chooses another (`key`) and,
    when a file stands where a folder must go (`outputs`, the dir itself), that file."""
    path = Path(error.filename)
    blocker = next((p for p in (*reversed(path.parents), path) if p.exists() and not p.is_dir()), None)
    reason = f"the file {blocker} is in the way" if blocker is not None else error.strerror
    return f"cannot create the output dir {path}: {reason}; choose another with {key}=DIR"


def check_dir_name(text: str, key: str) -> None:
    """ConfigError for an empty dir name (`hydra.run.dir=`, an unset `$VAR`): it would name the working dir."""
    if not text.strip():
        raise ConfigError(f"{key}={text} is empty: name the dir ({key}=DIR), or leave {key} out for a new dir under "
                          "outputs/")


class RunDir:
    """One run's directory and its lifecycle (see the module docstring). `key` is the setting the user chooses
    it with (`hydra.run.dir`; a sweep's job dir: `hydra.sweep.dir`), which every message names."""

    def __init__(self, path: str | Path, *, key: str = "hydra.run.dir", made: tuple[Path, ...] = ()) -> None:
        check_dir_name(str(path), key)  # Path("") is the working dir
        self.path = Path(path)
        self.key = key
        self.made = made  # the dirs `allocate` created (this one first, then its parents): `release` may remove them

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @classmethod
    def allocate(cls, base: str | Path, *, key: str = "hydra.run.dir") -> RunDir:
        """A new run dir: `base`, or the first of `base_2`, `base_3`, ... that does not exist yet, created here.

        mkdir is atomic: of two processes asking for one name, one gets it, so two runs started in the same
        second (a default name has one-second resolution) get a dir each. Raises ConfigError (naming `key`)
        when it cannot be created."""
        base = Path(base)
        parents = [p for p in base.parents if not p.exists()]  # deepest first
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            for n in itertools.count(1):
                candidate = base if n == 1 else base.with_name(f"{base.name}_{n}")
                try:
                    candidate.mkdir()
                except FileExistsError:
                    continue
                return cls(candidate, key=key, made=(candidate, *parents))
        except OSError as e:
            raise ConfigError(cannot_create(e, key)) from None
        raise AssertionError("unreachable")

    # --- holding the dir -----------------------------------------------------------------------

    @contextlib.contextmanager
    def claimed(self) -> Iterator[RunDir]:
        """Hold the dir for this process while the block runs: a second aetrain process asking for it meanwhile
        gets RunDirInUse, naming the holder.

        The claim is an exclusive `flock` on <dir>/.aetrain.lock, which the file then names (pid, host,
        since when). The kernel drops a flock when its process ends, however it ends (kill -9, out of memory),
        so a lock file a killed run left behind never blocks anyone: only a live process holds a claim. Where
        there is no flock (not POSIX) the file's existence is the claim, and one left by a killed run must be
        deleted by hand. The file is removed when the block ends, and so is the dir if the claim made it and
        it is empty then (a run refused before writing anything leaves nothing behind).
        """
        made = not self.path.exists()
        self.make()
        path = self.path / LOCK
        fd = self._lock(path)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now():%Y-%m-%d %H:%M:%S}\n"
                     .encode())
            yield self
        finally:
            with contextlib.suppress(OSError):  # a dir made read-only meanwhile keeps the file: it no longer blocks
                path.unlink(missing_ok=True)  # before the lock is let go, so a waiting process finds no stale inode
            os.close(fd)
            if made:
                with contextlib.suppress(OSError):
                    self.path.rmdir()  # only when empty

    def make(self) -> None:
        """Create the dir (and its parents) if missing; ConfigError (naming the key, and a file in the way) when it
        cannot be made."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(cannot_create(e, self.key)) from None

    def _lock(self, path: Path) -> int:
        while True:
            if fcntl is None:
                try:
                    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    raise RunDirInUse(f"{self.key}={self.path} is in use by another aetrain process "
                                      f"({_holder(path)}); if none is running, delete {path}") from None
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RunDirInUse(_in_use_message(self.key, self.path, _holder(path))) from None
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder removed the file between our open and our lock: lock the file there now

    def mark(self, name: str, text: str) -> bool:
        """Create the file `name` in the dir (made when missing) exclusively, holding `text`: True when this call
        created it, False when it was there already (of two processes marking one dir at once, one gets True). A
        sweep marks its dir so. ConfigError (naming the key) when the dir cannot be made."""
        self.make()
        try:
            fd = os.open(self.path / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise ConfigError(cannot_create(e, self.key)) from None
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True

    def holding(self) -> str | None:
        """What in the dir shows that a run (or a range test) wrote there: the first such file, or None."""
        found = [name for name in (METRICS, SUMMARY, f"{HYDRA}/config.yaml", *LR_FIND_FILES)
                 if (self.path / name).exists()]
        ckpts = checkpoint_dir(self.path)
        found += [f"{CHECKPOINTS}/{p.name}" for p in sorted(ckpts.iterdir())[:1]] if ckpts.is_dir() else []
        return found[0] if found else None

    def refuse_taken(self, *, what: str = "a run", resumable: bool = True) -> None:
        """A fresh run never writes over what a run left in the dir: RunDirTaken naming what is there, and how to
        continue it (`resumable`: it is a training run's dir, `trainer.resume` continues it). Nor into a dir that
        holds anything else (`refuse_foreign`)."""
        found = self.holding()
        if found:
            advice = f"continue it with trainer.resume={self.path} or " if resumable else ""
            raise RunDirTaken(f"{self.key}={self.path} already holds {what} ({found}); {advice}choose another "
                              f"{self.key}")
        self.refuse_foreign()

    def refuse_foreign(self) -> None:
        """A run writes only into a new dir, an empty one, or a run's own: RunDirTaken naming what a dir that holds
        files but no run (a folder of one's own, the working dir) holds; nothing there is written or appended to.
        A dir that holds a run passes here (a resume continues it; `refuse_taken` refuses a fresh run there), and
        so does one that holds only a train.log: an attempt that ended before its first result (`start_over`)."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(cannot_create(FileExistsError(17, "File exists", str(self.path)), self.key))
        if self.holding() is not None:
            return
        found = self.contents()
        if found and found != [TRAIN_LOG]:  # a log alone: an attempt that ended before its first result (continued)
            holder = self.in_use()
            if holder is not None:  # a run that has not written its first results yet
                raise RunDirInUse(_in_use_message(self.key, self.path, holder))
            listed = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
            raise RunDirTaken(f"{self.key}={self.path} is not empty and holds no aetrain run ({listed}): a run "
                              f"writes only into a new or empty dir; choose another {self.key}")

    def in_use(self) -> str | None:
        """Who holds the dir (`pid 4242 on host since ...`) while a live aetrain process trains there, else None.
        Only looks: creates no file, takes no claim."""
        path = self.path / LOCK
        if fcntl is None:
            return _holder(path) if path.exists() else None
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # let go at once (the close): only a live holder blocks it
        except OSError:
            return _holder(path)
        finally:
            os.close(fd)
        return None

    def start_over(self) -> list[str]:
        """Clear what an attempt that never saved a checkpoint wrote (its process killed in its first epoch, or a
        failure before it), so the job can start again in its dir; its train.log stays, the new attempt's lines
        follow. Under the dir's claim: a dir a live process trains into is refused (RunDirInUse), never cleared.
        Returns the names cleared. A dir with a checkpoint is left as it is (it is continued, not started over)."""
        if not self.path.is_dir() or (checkpoint_dir(self.path) / LAST).exists():
            return []
        with self.claimed():
            cleared = [name for name in FIRST_ATTEMPT if (self.path / name).exists()]
            for name in cleared:
                path = self.path / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        return cleared

    def contents(self) -> list[str]:
        """What the dir holds, sorted (a folder's name ends in /); [] when it is missing or empty. A lock file
        that a run killed before writing anything left behind does not count."""
        try:
            entries = sorted(self.path.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [f"{p.name}/" if p.is_dir() else p.name for p in entries if p.name != LOCK]

    def release(self) -> None:
        """Remove the dir if it is empty (a run that ended before writing anything), and the parents `allocate`
        made for it once they are empty too. Nothing that holds a file is ever removed."""
        for path in self.made or (self.path,):
            try:
                path.rmdir()
            except FileNotFoundError:  # released already (the processes of a data-parallel run release it too)
                continue
            except OSError:
                return

    # --- what was run ----------------------------------------------------------------------------

    def record(self, invocation: Invocation) -> Path:
        """Write what was run into .hydra/ (config.yaml, overrides.yaml, hydra.yaml); a continuation of a run that
        has them writes .hydra/resume-N/ and keeps the original. Returns the folder written."""
        import yaml

        out = self.path / HYDRA
        if (out / "config.yaml").exists():
            done = self._resumes()
            out = out / f"resume-{int(done[-1].name[7:]) + 1 if done else 1}"
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "config.yaml", invocation.config_yaml)
        if invocation.hydra_yaml is not None:
            write_atomic(out / "hydra.yaml", invocation.hydra_yaml)
        write_atomic(out / "overrides.yaml", yaml.safe_dump(list(invocation.overrides), allow_unicode=True,
                                                            default_flow_style=False))
        return out

    def _resumes(self) -> list[Path]:
        """The dir's .hydra/resume-N/ folders in order of N; folders named otherwise (a user's `resume-old/`) are
        not among them."""
        hydra_dir = self.path / HYDRA
        found = [(int(p.name[7:]), p) for p in hydra_dir.glob("resume-*") if p.is_dir() and p.name[7:].isdigit()]
        return [p for _, p in sorted(found)]

    def saved_overrides(self, *, latest: bool = True) -> list[str]:
        """The overrides the run was started with (`latest`: or last resumed with), as Hydra saved them: a YAML
        list of strings; [] when there are none. ConfigError for a damaged file."""
        import yaml

        files = [p / "overrides.yaml" for p in self._resumes() if (p / "overrides.yaml").is_file()] if latest else []
        path = (files or [self.path / HYDRA / "overrides.yaml"])[-1]
        if not path.is_file():
            return []
        try:
            loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader())
        except (yaml.YAMLError, OSError, UnicodeDecodeError):  # the file is damaged, whichever way
            loaded = None
        if not isinstance(loaded, list) or not all(isinstance(o, str) for o in loaded):
            raise ConfigError(f"{path}: not a list of overrides (key=value lines, as Hydra writes them); a resume "
                              "composes the run's config from it: repair it, or delete it and give the run's "
                              "overrides on the command line")
        return loaded

    def config(self) -> Config | None:
        """The run's composed config (.hydra/config.yaml), typed; None when it has none. ConfigError when it is
        not an aetrain config; PluginError when its model is one of your own that cannot be registered here."""
        import yaml

        from aetrain.config import from_json
        from aetrain.plugins import PluginError

        path = self.path / HYDRA / "config.yaml"
        if not path.is_file():
            return None
        try:
            return from_json(json.dumps(yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader())))
        except PluginError:  # the run's model is one of your own, and its code is not here: say so as it is
            raise
        except (yaml.YAMLError, OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError, ConfigError) as e:
            raise ConfigError(f"{path}: not a readable aetrain config ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None

    def refuse_edits(self, config: dict[str, Any], overrides: Sequence[str]) -> None:
        """A resume composes the run's config from its recorded overrides, not from .hydra/config.yaml: ConfigError
        when that file (the newest: .hydra/resume-N/config.yaml after a resume) says otherwise than `config` (the
        resume's, as plain data) for a key that `overrides` (the resume's, the run's own among them) does not set
        anew, which is an edit of the file that would go unused. The line names each such key and the overrides
        that take the file's values. A file that cannot be read is left to the resume's own checks."""
        import yaml

        path = next((d / "config.yaml" for d in (*reversed(self._resumes()), self.path / HYDRA)
                     if (d / "config.yaml").is_file()), None)
        try:
            recorded = yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader()) if path else None
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return
        if not isinstance(recorded, dict):
            return
        key = lambda o: o.partition("=")[0].lstrip("+~")  # noqa: E731
        try:
            saved = {key(o): o for o in self.saved_overrides()}  # the last of a key's overrides is the one that holds
        except ConfigError:
            saved = {}
        anew = {key(o) for o in overrides if saved.get(key(o)) != o} | {"trainer.resume"}
        now, then = _flat(config), _flat(recorded)
        edits = [(key, then[key], value) for key, value in now.items()
                 if key in then and not _same(then[key], value) and not _covered(key, anew)]
        if edits:
            said = "; ".join(f"{k}: {_text(a)} in the file, {_text(b)} composed" for k, a, b in edits)
            raise ConfigError(f"{path} differs from the config the run's overrides compose ({said}): a resume "
                              "composes it from .hydra/overrides.yaml, so an edit of config.yaml would go unused; to "
                              f"use the file's values add {' '.join(_override(k, a) for k, a, _ in edits)}, or undo "
                              "the edit to keep the run's")

    def job_num(self) -> int | None:
        """The job number Hydra gave the run in a sweep (.hydra/hydra.yaml), or None."""
        import yaml

        try:
            hydra = yaml.load((self.path / HYDRA / "hydra.yaml").read_text(encoding="utf-8"), Loader=_yaml_loader())
            num = hydra["hydra"]["job"]["num"]
        except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
            return None
        return num if isinstance(num, int) and not isinstance(num, bool) else None

    # --- how it ended ----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """summary.json as a dict; {} when it is missing or unreadable."""
        return read_summary(self.path)

    def status(self) -> Status | None:
        """How the run stands or ended, as its summary.json says; None without one."""
        return Status.of(self.summary())

    def write_summary(self, summary: dict[str, Any], *, final: bool = False) -> None:
        """Write summary.json atomically (a sweep's table or a watching script never sees half a file). A `final`
        one (how the run ended) is written in place when the dir takes no new file (made read-only meanwhile):
        better a final status than "running" forever."""
        text = json.dumps(summary, indent=2, default=str) + "\n"
        path = self.path / SUMMARY
        try:
            write_atomic(path, text)
        except OSError:
            if not final:
                raise
            with open(path, "w") as f:
                f.write(text)

    def record_failure(self, error: str) -> None:
        """Mark the run failed in its summary.json, saying why (`error`, one line), and keep whatever the run wrote
        there (its `ended`, when it got that far, still says how training ended: `Status.of` reads both)."""
        summary = self.summary()
        summary.update(status=Status.FAILED.outcome, error=error)
        self.write_summary(summary, final=True)


# --- resuming a sweep ------------------------------------------------------------------------

FINISHED, CONTINUE, START = "finished", "continue", "start"  # what resuming a sweep does with one of its jobs


def resuming(sweep_dir: Path, run_dir: Path) -> str:
    """What resuming the sweep in `sweep_dir` (hydra.launcher.resume=true, under hydra/launcher=plain or fused) does
    with its job in `run_dir`: the one rule both launchers follow (README, "Finishing an interrupted sweep").
    Only looks: a launcher asks it of every job before any runs, so a refusal comes before anything is touched.

    - RunDirInUse (one line) when a live process trains there: that sweep is still running;
    - FINISHED: it ended ok or stopped early: its result is kept, not trained again, its dir not touched;
    - CONTINUE: it has a last.pt (interrupted, killed after its first checkpoint, failed or diverged with one):
      continued from it, exactly as trainer.resume would;
    - START: it never started, or its attempt saved no checkpoint: it starts again in its dir, once
      `prepare_resume` has cleared what that attempt wrote."""
    job = RunDir(run_dir, key="hydra.sweep.dir")
    holder = job.in_use()
    if holder is not None:
        raise RunDirInUse(f"hydra.sweep.dir={sweep_dir}: {run_dir} is in use by another aetrain process ({holder}): "
                          "wait for that sweep to end before resuming it")
    status = job.status()
    if status is not None and status.is_result:
        return FINISHED
    return CONTINUE if (checkpoint_dir(run_dir) / LAST).is_file() else START


def prepare_resume(sweep_dir: Path, run_dir: Path) -> str:
    """`resuming`, acted on as the job's turn comes: a job that starts again has what its attempt wrote cleared
    first (`RunDir.start_over`: train.log kept, a line in it says what went)."""
    what = resuming(sweep_dir, run_dir)
    if what == START:
        cleared = RunDir(run_dir, key="hydra.sweep.dir").start_over()
        if cleared:
            log.info("%s: no last.pt to continue from (its process ended before its first checkpoint, or it failed): "
                     "starts again (cleared %s; train.log kept)", run_dir, ", ".join(cleared))
    return what


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _covered(key: str, given: set[str]) -> bool:
    """Whether an override of one of `given` sets `key`: the key itself, or its group's choice (`model=`)."""
    return any(key == g or key.startswith(f"{g}.") for g in given)


def _text(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value, separators=(",", ":")).strip('"')


def _override(key: str, value: Any) -> str:
    """The override that sets `key` to `value`: `trainer.max_epochs=30`; a group's name is its choice, `model=vae`."""
    group, _, leaf = key.rpartition(".")
    return f"{group}={value}" if leaf == "name" and "." not in group else f"{key}={_text(value)}"


def _yaml_loader() -> type:
    """PyYAML's safe loader reading numbers as YAML 1.2 and OmegaConf do: `1e-08` is a float, not a string."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"""^(?:
        [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))
    return Loader


def _in_use_message(key: str, path: Path, holder: str) -> str:
    return f"{key}={path} is in use by another aetrain process ({holder}); wait for it to end or choose another {key}"


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"
