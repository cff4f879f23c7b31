"""A run directory's files: their names, and readers of metrics.csv and summary.json.

Torch-free and Hydra-free, so sweeps, resume, the outputs and every command share one spelling
of each file name and one parser of each file. What a run writes is described in the README
("What a run writes"); the writers live in `aetrain.train` and `aetrain.train.outputs`.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

METRICS = "metrics.csv"
SUMMARY = "summary.json"
TRAIN_LOG = "train.log"
LOSS_CURVE = "loss_curve.png"
RECONSTRUCTIONS = "reconstructions"  # reconstructions/epoch_NNN.png
TENSORBOARD = "tensorboard"
HYDRA = ".hydra"  # the composed config, the overrides typed, Hydra's own config
CHECKPOINTS = "checkpoints"
LAST, BEST = "last.pt", "best.pt"
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


def number(text: str | None) -> float | int:
    """A metrics.csv cell as a number: int for counts, float otherwise, NaN for an empty cell."""
    if text is None or text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.csv's rows with numeric cells (a missing file: no rows). Raises ValueError for a file
    that is not a metrics table (no `epoch` column)."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except FileNotFoundError:
        return []
    if "epoch" not in columns:
        raise ValueError(f"{path}: not an aetrain metrics table (no 'epoch' column)")
    return [{k: number(v) for k, v in row.items() if k is not None} for row in rows]


def read_diagnostics(path: Path) -> list[dict[str, Any]]:
    """diagnostics.csv's rows with numeric cells (`code_unit_var`, `code_unit_effect`: lists of floats), empty
    cells left out; a missing file: no rows. Raises ValueError for a file that is not a diagnostics table."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except FileNotFoundError:
        return []
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
