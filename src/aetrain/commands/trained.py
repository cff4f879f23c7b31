"""What the commands after training share: the trained run, the samples they work on, and their outputs.

A command takes a run dir (its best.pt, else last.pt) or a checkpoint file, and a data config: the
run's own (from its checkpoint) unless the command line gave data overrides. Samples are handed to
the model in *model units*: the data as its source gives it (data units), scaled by the scaling the
model stored when it was trained, never by statistics of the data being evaluated.

Everything that can fail on user input (no checkpoint, data that does not fit the model, a split
the run does not have) fails before anything is written. A command's files are written together at
the end, each atomically, into its folder of the run dir; files of an earlier call of the same
command that this call does not produce (a ROC curve of labelled data) are removed, so the folder
always describes one call.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aetrain.atomic import write_atomic
from aetrain.checkpoint import config_of, load, model_from_checkpoint, spec_from_checkpoint
from aetrain.commands.train import resolve_device
from aetrain.config import SPLITS, Config, DataConfig, validate_data
from aetrain.data import Source, Split, class_indices, load_source, split_samples
from aetrain.data.batches import eval_batches
from aetrain.data.spec import DataSpec
from aetrain.errors import ConfigError, DataError
from aetrain.models import Autoencoder
from aetrain.rundir import BEST, LAST, read_split, run_dir_of

log = logging.getLogger(__name__)

BATCH = 1024  # samples per forward pass: no gradients to hold
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test", "all": "every"}
# keys that change how data is read, not which samples it holds: data given with only these changed is the run's own
LOADING_KEYS = ("batch_size", "num_workers", "download")


@dataclass
class Trained:
    """A trained model and what it was trained with."""

    checkpoint: Path
    run_dir: Path
    cfg: Config
    spec: DataSpec
    model: Autoencoder  # eval mode, on `device`
    epoch: int
    device: torch.device

    @property
    def description(self) -> str:
        return f"{self.cfg.model.name}, latent {self.cfg.model.latent_dim}, {self.checkpoint.name} of epoch {self.epoch}"

    @property
    def is_image(self) -> bool:
        return self.spec.is_image

    @property
    def units(self) -> str:
        """The units every error is measured in, for metrics files."""
        if self.spec.unit_interval:
            scaled = " (the file's values / 255)" if float(self.spec.scale) != 1.0 else ""
            return f"model units: values in [0, 1]{scaled}"
        return "model units: standardized with the training split's mean and standard deviation"

    @property
    def short_units(self) -> str:
        """The same, for axis labels."""
        return "values in [0, 1]" if self.spec.unit_interval else "standardized units"

    @torch.no_grad()
    def to_model_units(self, x: torch.Tensor) -> torch.Tensor:
        """Data units -> model units, on the CPU, with the scaling the model stored when it was trained."""
        scaling = copy.deepcopy(self.model.scaling).cpu()
        return scaling(x.float()).contiguous()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (n, latent_dim), reconstructions (n, *shape)) of model-unit samples, on the CPU."""
        codes, recons = [], []
        for chunk in x.split(BATCH):
            z, x_hat = self.model(chunk.to(self.device))[:2]  # (b, *shape) -> (b, latent_dim), (b, *shape)
            codes.append(z.float().cpu())
            recons.append(x_hat.float().cpu())
        if not codes:
            return torch.empty(0, self.cfg.model.latent_dim), torch.empty(0, *self.spec.shape)
        return torch.cat(codes), torch.cat(recons)


def open_run(path: str | Path, device: str = "cpu", device_key: str = "device") -> Trained:
    """The model at `path` (a run dir: best.pt, else last.pt; or a checkpoint file), in eval mode on `device`
    (the command's key `device_key`, for messages)."""
    ckpt = load(path, prefer=(BEST, LAST))
    try:
        where = resolve_device(device)
    except ConfigError as e:
        raise ConfigError(str(e).replace("trainer.device", device_key)) from None
    model = model_from_checkpoint(ckpt).to(where)
    checkpoint = Path(ckpt["path"])
    epoch = ckpt.get("state", {}).get("epoch", 0) if isinstance(ckpt.get("state"), dict) else 0
    return Trained(checkpoint, run_dir_of(checkpoint), config_of(ckpt), spec_from_checkpoint(ckpt), model, epoch,
                   where)


@dataclass
class Samples:
    """Samples a command works on, in model units, with where they come from."""

    x: torch.Tensor  # (n, *shape) model units, float32, CPU
    index: np.ndarray  # (n,) int64: each sample's index in its source (the indices of split.json)
    role: np.ndarray | None  # (n,) str: train | val | test | excluded (a class not trained on); None for other data
    labels: np.ndarray | None  # (n,) int64, or None for unlabelled data
    description: str  # "359 validation samples of digits"
    class_names: tuple[str, ...] | None = None  # the name of each label (an image folder's subfolders); None = numbers

    def __len__(self) -> int:
        return len(self.index)

    def subset(self, keep: np.ndarray) -> Samples:
        """The samples where the boolean mask `keep` is true."""
        mask = torch.from_numpy(keep)
        return Samples(self.x[mask], self.index[keep], None if self.role is None else self.role[keep],
                       None if self.labels is None else self.labels[keep], self.description, self.class_names)

    def label_name(self, label: int) -> str:
        """A label as people know it: "3", or "3 (cat)" where the labels have names."""
        names = self.class_names
        return f"{label} ({names[label]})" if names is not None and 0 <= label < len(names) else str(label)


class RunData:
    """A dataset as a command sees it: checked against the model, split as the run split its data."""

    def __init__(self, trained: Trained, cfg: DataConfig, *, own: bool) -> None:
        validate_data(cfg)
        self.trained, self.cfg, self.own = trained, cfg, own
        self.source: Source = load_source(cfg)
        self._check_shape()
        self._split: Split | None = None
        if own:
            self._check_against_saved_split()

    @property
    def split(self) -> Split:
        """The split, computed when first needed: every sample of other data needs none (nor its labels)."""
        if self._split is None:
            self._split = split_samples(self.cfg, self.source)
        return self._split

    @classmethod
    def of(cls, trained: Trained, data: DataConfig | None) -> RunData:
        """The run's own data (None, or a config that differs from it only in how data is read), or other data."""
        own = data is None or same_samples(data, trained.cfg.data)
        return cls(trained, trained.cfg.data if data is None else data, own=own)

    @property
    def name(self) -> str:
        return f"{self.cfg.name}" + (f" ({self.cfg.path})" if getattr(self.cfg, "path", None) else "")

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The labels' names: as the run stored them (split.json) for its own data, else as the source gives them
        (an image folder's subfolders); None where labels are just numbers. Runs from before names were stored
        get the source's."""
        saved = read_split(self.trained.run_dir) if self.own else None
        names = saved.get("class_names") if saved is not None else None
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return tuple(names)
        return self.source.class_names

    def _check_shape(self) -> None:
        spec, shape = self.trained.spec, tuple(self.source.shape)
        if shape == spec.shape:
            return
        kind = lambda s: (f"{s[0]}-channel {s[1]}x{s[2]} images" if len(s) == 3  # noqa: E731
                          else f"rows of {s[0]} features" if len(s) == 1 else f"samples of shape {s}")
        raise DataError(f"data={self.name}: {kind(shape)} {shape}; this model ({self.trained.cfg.model.name}, trained "
                        f"on {spec.name}) takes {kind(spec.shape)} {tuple(spec.shape)}")

    def _check_against_saved_split(self) -> None:
        """The run's split.json, when it has one, must list the split recomputed now: else the data changed, or
        split.json was edited. The error says what differs: the counts, and which samples changed split."""
        saved = read_split(self.trained.run_dir)
        if saved is None:
            return
        s = self.split
        now = {"train": s.train.tolist(), "val": s.val.tolist(), "test": s.test.tolist()}
        if saved["num_samples"] != s.num_samples or any(saved[k] != now[k] for k in now):
            raise DataError(f"data={self.name}: the split recomputed from the data differs from the run's split.json: "
                            f"{split_difference(saved, s.num_samples, now)}; the data is not what the run was "
                            "trained on, or split.json was edited")

    def roles(self) -> np.ndarray:
        """(num_samples,) str: each source sample's part in the run: train, val, test, or excluded."""
        roles = np.full(self.split.num_samples, "excluded", dtype=object)
        for name in ("train", "val", "test"):
            roles[getattr(self.split, name).numpy()] = name
        return roles

    def indices(self, split: str) -> torch.Tensor:
        """Source indices of a split: train, val, test, or all: every sample of the run's own data (of every class:
        its data.classes said what to train on), or of other data the samples of its data.classes (null: every one)."""
        if split == "all":
            return torch.arange(len(self.source.samples)) if self.own else class_indices(self.cfg, self.source)
        if split not in ("train", "val", "test"):
            raise ConfigError(f"split={split!r} is not one of: {', '.join(s for s in SPLITS if s != 'auto')}")
        idx = getattr(self.split, split)
        if len(idx) == 0:
            raise ConfigError(f"split={split}: the data has no {SPLIT_NAMES[split]} split (data.test_fraction="
                              f"{self.cfg.test_fraction}); use split=val, or train with data.test_fraction > 0")
        return idx

    def samples(self, idx: torch.Tensor, description: str) -> Samples:
        """The samples at source indices `idx` (sorted), in model units."""
        source = self.source.samples
        if isinstance(source, torch.Tensor):
            x = source[idx]
        else:  # an image folder: decode just these, in DataLoader workers
            from torch.utils.data import Subset

            batches = list(eval_batches(Subset(source, idx.tolist()), BATCH, torch.device("cpu"),
                                        getattr(self.cfg, "num_workers", 0)))
            x = torch.cat(batches) if batches else torch.empty(0, *self.source.shape)
        x = self.trained.to_model_units(x)
        index = idx.numpy().astype(np.int64)
        labels = self.source.labels[idx].numpy() if self.source.labels is not None else None
        role = self.roles()[index] if self.own else None
        return Samples(x, index, role, labels, description, self.class_names if labels is not None else None)

    def select(self, split: str) -> Samples:
        """The samples of a split (train, val, test or all), described for people."""
        idx = self.indices(split)
        of = "the run's data" if self.own else f"data={self.name}"
        which = f"{len(idx)} {SPLIT_NAMES[split]} samples" if split != "all" else f"all {len(idx)} samples"
        return self.samples(idx, f"{which} of {of}")


def split_difference(saved: dict[str, Any], num_samples: int, now: dict[str, list[int]], *, shown: int = 3) -> str:
    """What differs between split.json (`saved`) and the split recomputed now, in a few words: the sample counts,
    each split's size, and the first samples whose split differs ("sample 17: val in split.json, train now")."""
    parts = []
    if saved["num_samples"] != num_samples:
        parts.append(f"{num_samples} samples now, {saved['num_samples']} in split.json")
    sizes = lambda d: "/".join(str(len(d[k])) if isinstance(d[k], list) else "?" for k in now)  # noqa: E731
    if sizes(saved) != sizes(now):
        parts.append(f"train/val/test {sizes(now)} now, {sizes(saved)} in split.json")
    role_now = {i: name for name, idx in now.items() for i in idx}
    try:
        role_saved = {i: name for name in now for i in saved[name]}
    except TypeError:  # not lists of indices
        return "; ".join(parts + ["split.json's train, val and test are not lists of sample indices"])
    moved = sorted((i for i in role_now.keys() | role_saved.keys() if role_now.get(i) != role_saved.get(i)),
                   key=lambda i: (not isinstance(i, int), str(i) if not isinstance(i, int) else i))
    if moved:
        where = lambda roles, i: roles.get(i, "in no split")  # noqa: E731
        examples = "; ".join(f"sample {i}: {where(role_saved, i)} in split.json, {where(role_now, i)} now"
                             for i in moved[:shown])
        more = f"; and {len(moved) - shown} more" if len(moved) > shown else ""
        parts.append(f"{len(moved)} sample{'s' if len(moved) != 1 else ''} in another split ({examples}{more})")
    return "; ".join(parts) or "the same samples, listed in another order"


def same_samples(a: DataConfig, b: DataConfig) -> bool:
    """True when two data configs describe the same samples and split (they may differ in how data is read)."""
    strip = lambda c: {k: v for k, v in dataclasses.asdict(c).items() if k not in LOADING_KEYS}  # noqa: E731
    return type(a) is type(b) and strip(a) == strip(b)


def resolve_split(split: str, own: bool, auto: str) -> str:
    """A command's `split` key: auto is `auto` for the run's own data, and every sample of other data."""
    return split if split != "auto" else (auto if own else "all")


def warn_outside_training_range(samples: Samples, spec: DataSpec) -> None:
    """A log line when samples reach well beyond what the model was trained on (wrong units, most often)."""
    if len(samples) == 0:
        return
    low, high = float(samples.x.min()), float(samples.x.max())
    margin = 0.1 * max(spec.high - spec.low, 1e-12)
    if low < spec.low - margin or high > spec.high + margin:
        log.warning("note: these samples span [%.4g, %.4g] in model units; the training split spanned [%.4g, %.4g]: "
                    "are they in the training data's units?", low, high, spec.low, spec.high)


def require_samples(samples: Samples) -> None:
    if len(samples) == 0:
        raise DataError(f"no samples to work on: {samples.description}")


def json_text(value: Any) -> str:
    """`value` as indented JSON; NaN and infinity (which JSON lacks) become null."""
    def finite(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    return json.dumps(finite(value), indent=2) + "\n"


def output_dir(trained: Trained, out: str | None, folder: str) -> Path:
    return Path(out) if out else trained.run_dir / folder


class Outputs:
    """A command's files, collected while it computes and written at the end, together."""

    def __init__(self, folder: Path, owned: Sequence[str]) -> None:
        self.folder, self.owned = folder, tuple(owned)
        self.files: dict[str, bytes | str] = {}

    def add(self, name: str, data: bytes | str) -> None:
        self.files[name] = data

    def write(self) -> list[Path]:
        """Write every file atomically; remove the command's files of an earlier call this one did not produce."""
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"out={self.folder}: exists and is not a directory")
        for name, data in self.files.items():
            write_atomic(self.folder / name, data)
        for name in self.owned:
            if name not in self.files:
                (self.folder / name).unlink(missing_ok=True)
        return [self.folder / name for name in self.files]


def table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> list[str]:
    """Rows as aligned text lines: the first column left-aligned, the others right-aligned."""
    cells = [[_cell(v) for v in row] for row in ([header] if header else []) + list(rows)]
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(max(map(len, cells)))]
    lines = ["  " + "   ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip()
             for r in cells]
    if header:
        lines.insert(1, "  " + "-" * (sum(widths) + 3 * (len(widths) - 1)))
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def log_lines(lines: Sequence[str]) -> None:
    for line in lines:
        log.info("%s", line)


def relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
