"""A run directory's files: their names, and readers of metrics.csv and summary.json.

Torch-free and Hydra-free, so sweeps, resume, the outputs and every command share one spelling
of each file name and one parser of each file. What a run writes is described in the README
("What a run writes"); the writers live in `aetrain.train` and `aetrain.train.outputs`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from aetrain.errors import ConfigError

try:
    import fcntl
except ImportError:  # not POSIX: the lock file's existence is the claim
    fcntl = None  # type: ignore[assignment]

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

# The commands after training, each writing into its own folder of the run dir (or `<command>.out`).
EVAL = "eval"  # aetrain eval
EVAL_FILES = ("metrics.json", "per_sample.csv", "errors.png", "worst.png")
ENCODE = "encode"  # aetrain encode
ENCODE_FILES = ("codes.npy", "indices.npy", "labels.npy", "codes.png")
SCORE = "score"  # aetrain score
SCORE_FILES = ("metrics.json", "scores.csv", "roc.png", "scores.png")
EXPORT = "export"  # aetrain export: <part>.onnx | <part>.torchscript.pt | <part>.pt2 for each part, and:
EXPORT_PARTS = ("model", "encoder", "decoder")
EXPORT_INFO = "export.json"  # inputs, outputs, units and the check's differences
LOCK = ".aetrain.lock"  # held by the process training into the run dir (see `claimed`); removed when it ends
DIAGNOSTICS = "diagnostics.csv"  # the training doctor's per-layer statistics, one row per layer per sampled step
DOCTOR = "doctor.json"  # `aetrain doctor`'s findings
DIAGNOSTICS_PLOT = "diagnostics.png"  # `aetrain doctor`'s per-layer picture
# tensorboard/diag/: the doctor's diag/ scalars, a TensorBoard run of their own (in the run's own directory, the
# resume marker of one writer would make TensorBoard drop the other's later points)
DIAG_TENSORBOARD = "diag"
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
    and a summary.json without a run id (run_id not a string counts as None). Anything else (a copy kept in a folder of one's own, or put
    into another run's checkpoints/) is not in its run dir: continuing it must not write there.
    """
    p = Path(path)
    if not p.is_dir() and p.parent.name != CHECKPOINTS:
        return None
    run_dir = run_dir_of(p)
    found = read_summary(run_dir).get("run_id")
    if isinstance(run_id, str):
        return run_dir if found == run_id else None
    return run_dir if found is None and (run_dir / HYDRA / "config.yaml").is_file() else None


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


class RunDirTaken(ConfigError):
    """The run dir holds another run, or another live process is training into it: nothing may be written there."""


class RunDirInUse(RunDirTaken):
    """Another live process is training into the run dir."""


@contextlib.contextmanager
def claimed(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process while the block runs: a second aetrain process asking for the same
    dir meanwhile gets RunDirInUse, naming the holder.

    The claim is an exclusive `flock` on run_dir/.aetrain.lock, which the file then names (pid, host,
    since when). The kernel drops a flock when its process ends, however it ends (kill -9, out of memory),
    so a lock file a killed run left behind never blocks anyone: only a live process holds a claim. Where
    there is no flock (not POSIX) the file's existence is the claim, and one left by a killed run must be
    deleted by hand. The file is removed when the block ends, and so is the run dir if this made it and
    it is empty then (a run refused before writing anything leaves nothing behind).
    """
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    fd = _lock(path, run_dir)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now():%Y-%m-%d %H:%M:%S}\n"
                 .encode())
        yield
    finally:
        with contextlib.suppress(OSError):  # a dir made read-only meanwhile keeps the file: it no longer blocks
            path.unlink(missing_ok=True)  # before the lock is let go, so a waiting process finds no stale inode
        os.close(fd)
        if made:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only when empty


def _lock(path: Path, run_dir: Path) -> int:
    while True:
        if fcntl is None:
            try:
                return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raise RunDirInUse(f"hydra.run.dir={run_dir} is in use by another aetrain process ({_holder(path)}); "
                                  f"if none is running, delete {path}") from None
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunDirInUse(f"hydra.run.dir={run_dir} is in use by another aetrain process ({_holder(path)}); "
                              "wait for it to end or choose another hydra.run.dir") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed the file between our open and our lock: lock the file there now


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"
