"""Checkpoints as data: the format, safe reading, and the model a checkpoint holds.

A checkpoint is a dict of tensors and plain Python types read with
`torch.load(weights_only=True)`, so loading never runs code from the file. What training writes
into it (and how a run continues from one) is `aetrain.train.checkpoint`; this module is what
`aetrain.load_model` and the commands that use a trained model need, without the trainer.

Format versions: 2 (this one) stores each config group in the shape of its choice; 1 (aetrain
0.1's first releases) had one flat shape per group. Both load as models; only 2 can be resumed.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aetrain.config import Config, DataConfig, from_json
from aetrain.data.spec import DataSpec
from aetrain.errors import CheckpointError, ConfigError
from aetrain.plugins import PluginError
from aetrain.rundir import LAST, checkpoint_dir

if TYPE_CHECKING:
    from aetrain.models import Autoencoder

FORMAT = "aetrain.checkpoint"
FORMAT_VERSION = 2


def resolve(path: str | Path, prefer: tuple[str, ...]) -> Path:
    """A checkpoint file, or the first of `prefer` that exists in a run dir's checkpoints/."""
    p = Path(path)
    if p.is_dir():
        for name in prefer:
            if (checkpoint_dir(p) / name).is_file():
                return checkpoint_dir(p) / name
        raise CheckpointError(f"{path}: no checkpoint in {checkpoint_dir(p)} (looked for {', '.join(prefer)})")
    if not p.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    return p


def _unreadable(path: Path, error: Exception | None) -> str:
    """Why torch could not read `path`, in the user's terms: empty, not a torch file at all (a CSV, a PNG: torch
    writes a zip archive, or before 1.6 a pickle), or a torch file that is truncated or damaged (torch's words;
    `error` None: a pickle torch's safe loader turned away)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:  # no permission to read it, a file that went away
        return f"cannot read it: {e.strerror or e}"
    if not head:
        return "the file is empty"
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        return "not a torch file: torch saves a zip archive, or before torch 1.6 a pickle, and this is neither"
    if error is None:
        return "a pickle that is not a torch checkpoint, or a damaged one"
    said = str(error).strip().split("\n")[0].split(". ")[0]  # torch's first sentence; the rest is advice
    return f"truncated or damaged: {said or type(error).__name__}"


def load(path: str | Path, *, prefer: tuple[str, ...] = (LAST,), mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint file (or a run dir's) safely; every failure is a one-line CheckpointError. `mmap`: map
    the tensors instead of reading them (for a look at the plain data, such as `run_id`)."""
    p = resolve(path, prefer)
    try:
        # torch maps only its zip format; an older or foreign file is read (and refused) as it would be
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(p))
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch names the global it refused
        if found:  # the file asks to import and call something: that is how pickles run code
            raise CheckpointError(
                f"{p}: refused to load: it references the Python object {found.group(1)}, and loading it would "
                "need arbitrary unpickling, which can run code; aetrain checkpoints hold only tensors and plain data"
            ) from None
        raise CheckpointError(f"{p}: not a readable checkpoint ({_unreadable(p, None)})") from None
    except Exception as e:  # empty, truncated, or not a torch file at all
        raise CheckpointError(f"{p}: not a readable checkpoint ({_unreadable(p, e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not an aetrain checkpoint (a torch file without the '{FORMAT}' marker)")
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{p}: damaged aetrain checkpoint: format_version {version!r} is not a version number")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{p}: written by a newer aetrain ({ckpt.get('aetrain_version')}, checkpoint format "
                              f"{version}); upgrade aetrain to read it")
    ckpt["path"] = str(p)
    return ckpt


def run_id(path: str | Path) -> str | None:
    """The id of the run a checkpoint (file or run dir) belongs to, read without reading its tensors (a resume
    asks it before it loads the checkpoint to continue from); None for a checkpoint from before run ids."""
    found = load(path, mmap=True).get("run_id")
    return found if isinstance(found, str) else None


DATA_PATH_KEYS = ("path", "labels", "root")  # the data keys naming files or folders, relative to where aetrain ran


def resolved_data_paths(cfg: DataConfig) -> dict[str, str]:
    """The data's files and folders as absolute paths (key -> path): what a checkpoint stores beside the config,
    which keeps them as typed, so that the run's data is found from any working directory."""
    return {key: os.path.abspath(value) for key in DATA_PATH_KEYS if isinstance(value := getattr(cfg, key, None), str)}


def stored_data_paths(ckpt: dict[str, Any]) -> dict[str, str]:
    """The absolute paths a checkpoint stored for its data's keys ({} for one written before aetrain stored them)."""
    paths = ckpt.get("data_paths")
    return {k: v for k, v in paths.items() if k in DATA_PATH_KEYS and isinstance(v, str)} if isinstance(paths, dict) \
        else {}


def data_paths_at(path: str | Path) -> dict[str, str]:
    """The absolute data paths a checkpoint (file or run dir: its last.pt) stored, read without its tensors."""
    return stored_data_paths(load(path, mmap=True))


def run_data(ckpt: dict[str, Any]) -> DataConfig:
    """The data config a checkpoint was trained with, its paths resolved as they were when it trained."""
    data = config_of(ckpt).data
    paths = {k: v for k, v in stored_data_paths(ckpt).items() if hasattr(data, k)}
    return dataclasses.replace(data, **paths)


def behind_its_run(ckpt: dict[str, Any], run_dir: Path) -> tuple[str, str] | None:
    """Whether the run in `run_dir` (the checkpoint's own, see `aetrain.rundir.own_run_dir`) went on after the
    checkpoint `ckpt` (a best.pt, a top-k file): None when `ckpt` is the run's newest, as far as its last.pt says
    (also when the run has no last.pt); else both points in words, (`epoch 5`, `epoch 20`), for the line that says
    why it is not continued in place: that would overwrite the later epochs' checkpoints and metrics."""
    last = checkpoint_dir(run_dir) / LAST
    if not last.is_file() or Path(ckpt["path"]).resolve() == last.resolve():
        return None
    try:
        newest = load(last, mmap=True)["state"]
        here = ckpt["state"]
        if newest["step"] <= here["step"]:
            return None
        return _point(here), _point(newest)
    except (CheckpointError, KeyError, TypeError):
        return None  # a last.pt that cannot be read says nothing against continuing in place


def _point(state: dict[str, Any]) -> str:
    """`epoch 5` at an epoch boundary, `step 130 (in epoch 6)` inside one."""
    if state.get("step_in_epoch"):
        return f"step {state['step']} (in epoch {state['epoch'] + 1})"
    return f"epoch {state['epoch']}"


def config_of(ckpt: dict[str, Any]) -> Config:
    """The config a checkpoint was trained with; CheckpointError when it is missing or damaged."""
    text = ckpt.get("config")
    if not isinstance(text, str):
        raise CheckpointError(f"{ckpt['path']}: damaged aetrain checkpoint: it holds no config")
    try:
        return from_json(text)
    except PluginError as e:  # a model of your own whose code is not here: not damage
        raise CheckpointError(f"{ckpt['path']}: {e}") from None
    except (ValueError, TypeError, AttributeError, ConfigError) as e:
        raise CheckpointError(f"{ckpt['path']}: damaged aetrain checkpoint: its config cannot be read "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def spec_from_checkpoint(ckpt: dict[str, Any]) -> DataSpec:
    """The data description a checkpoint holds; CheckpointError when it is missing, incomplete or of the wrong kind."""
    try:
        s = ckpt["data_spec"]
        shape = tuple(s["shape"])
        if not shape or not all(isinstance(n, int) and n >= 1 for n in shape):
            raise ValueError(f"sample shape {s['shape']!r}")
        if not all(isinstance(s[k], torch.Tensor) and s[k].is_floating_point() for k in ("shift", "scale")):
            raise TypeError("its scaling (shift, scale) is not a pair of float tensors")
        return DataSpec(str(s["name"]), shape, bool(s["unit_interval"]), s["shift"], s["scale"], float(s["low"]),
                        float(s["high"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt['path']}: damaged aetrain checkpoint: its data description is incomplete "
                              f"({type(e).__name__}: {e})") from None


def model_from_checkpoint(ckpt: dict[str, Any]) -> Autoencoder:
    """Rebuild the model a checkpoint was trained with and load its weights; eval mode, CPU."""
    from aetrain.models import build_model

    cfg = config_of(ckpt)
    try:
        model = build_model(cfg.model, spec_from_checkpoint(ckpt))
    except ConfigError as e:
        raise CheckpointError(f"{ckpt['path']}: its config does not build a model: {e}") from None
    load_weights(model, ckpt)
    return model.eval()


def load_weights(model: torch.nn.Module, ckpt: dict[str, Any], *,
                 target: str = "the architecture its config describes") -> None:
    """Put the checkpoint's weights into `model`; a mismatch is a CheckpointError naming the first difference
    (`target` says what they had to fit)."""
    weights = ckpt.get("model")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{ckpt['path']}: damaged aetrain checkpoint: it holds no model weights")
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e).splitlines()[0])
        raise CheckpointError(f"{ckpt['path']}: its weights do not fit {target} ({first})") from None
