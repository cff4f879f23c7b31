"""What the commands after training share: the trained run, the samples they work on, and their outputs.

A command takes a run dir (its best.pt, else last.pt) or a checkpoint file, and a data config: the
run's own (from its checkpoint) unless the command line gave data overrides. Samples are handed to
the model in *model units*: the data as its source gives it (data units), scaled by the scaling the
model stored when it was trained, never by statistics of the data being evaluated.

Everything that can fail on user input (no checkpoint, data that does not fit the model, a split
the run does not have) fails before anything is written, and the output folder before the model
or the data is loaded. A model that is not finite is refused, and so is the run's own data when it
is not what the run trained on (the fingerprint in its checkpoint); the run's data paths are read as
the run resolved them, so a command works from any directory. A command's files are written
together at the end, each atomically, into its folder of the run dir (or `out=`), which holds
nothing but that command's files; files of an earlier call of the same command that this call
does not produce (a ROC curve of labelled data) are removed, so the folder always describes one
call.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aetrain.atomic import write_atomic
from aetrain.checkpoint import config_of, load, model_from_checkpoint, resolve, run_data, spec_from_checkpoint
from aetrain.config import SPLITS, Config, DataConfig, validate_data
from aetrain.data import Source, Split, class_indices, fingerprint, fingerprint_differences, load_source, split_samples
from aetrain.data.batches import eval_batches
from aetrain.data.spec import DataSpec
from aetrain.device import resolve_device
from aetrain.errors import CheckpointError, ConfigError, DataError
from aetrain.models import Autoencoder
from aetrain.rundir import BEST, COMMAND_FILES, EVAL, LAST, SCORE, read_split, run_dir_of

log = logging.getLogger(__name__)

BATCH = 1024  # samples per forward pass: no gradients to hold
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test", "all": "every"}
# keys that change how data is read, not which samples it holds: data given with only these changed is the run's own
LOADING_KEYS = ("batch_size", "num_workers", "download")
LOCATION_KEYS = ("path", "labels", "root")  # where the data's files are: the run's own data may have moved


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
    fingerprint: dict[str, Any] | None = None  # of the data it trained on (aetrain.data.fingerprint); None: not stored
    data: DataConfig = dataclasses.field(default_factory=DataConfig)  # cfg.data, its paths made absolute in training

    @property
    def moved_keys(self) -> dict[str, tuple[str, str]]:
        """data.<key> -> (as typed, as resolved in training) for each data path the working directory made absolute."""
        return {k: (getattr(self.cfg.data, k), getattr(self.data, k)) for k in LOCATION_KEYS
                if getattr(self.data, k, None) != getattr(self.cfg.data, k, None)}

    @property
    def description(self) -> str:
        return (f"{self.cfg.model.name}, latent {self.cfg.model.latent_dim}, "
                f"{self.checkpoint.name} of epoch {self.epoch}")

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
        """(codes (n, latent_dim), reconstructions (n, *shape)) of model-unit samples, on the CPU. A DataError when
        any is not finite: every number a command derives from them (scores, PCA's comparison, probes) would be."""
        codes, recons = [], []
        for chunk in x.split(BATCH):
            z, x_hat = self.model(chunk.to(self.device))[:2]  # (b, *shape) -> (b, latent_dim), (b, *shape)
            codes.append(z.float().cpu())
            recons.append(x_hat.float().cpu())
        if not codes:
            return torch.empty(0, self.cfg.model.latent_dim), torch.empty(0, *self.spec.shape)
        z, x_hat = torch.cat(codes), torch.cat(recons)
        bad = ~(z.isfinite().all(1) & x_hat.flatten(1).isfinite().all(1))  # (n,) samples with a NaN or inf output
        if bool(bad.any()):
            raise DataError(f"{self.checkpoint}: the model's output is not finite (NaN or infinite) for "
                            f"{int(bad.sum())} of {len(x)} samples, although its weights are finite: "
                            "are the samples in the training data's units?")
        return z, x_hat


def open_run(path: str | Path, device: str = "cpu", device_key: str = "device") -> Trained:
    """The model at `path` (a run dir: best.pt, else last.pt; or a checkpoint file), in eval mode on `device`
    (the command's key `device_key`, for messages)."""
    ckpt = load(path, prefer=(BEST, LAST))
    try:
        where = resolve_device(device)
    except ConfigError as e:
        raise ConfigError(str(e).replace("trainer.device", device_key)) from None
    model = model_from_checkpoint(ckpt)
    refuse_nonfinite(model, ckpt["path"])
    model = model.to(where)
    checkpoint = Path(ckpt["path"])
    epoch = ckpt.get("state", {}).get("epoch", 0) if isinstance(ckpt.get("state"), dict) else 0
    saved = ckpt.get("data_fingerprint")
    return Trained(checkpoint, run_dir_of(checkpoint), config_of(ckpt), spec_from_checkpoint(ckpt), model, epoch,
                   where, saved if isinstance(saved, dict) and saved else None, run_data(ckpt))


def refuse_nonfinite(model: torch.nn.Module, path: str) -> None:
    """A CheckpointError naming the first weight or buffer that holds a NaN or an infinity: every result of such a
    model is NaN (or a library's traceback), so no command works on it."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            nan, inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
            what = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n)
            raise CheckpointError(f"{path}: the model is not finite: {name} {tuple(tensor.shape)} holds {what} of its "
                                  f"{tensor.numel()} values; use a checkpoint from before the run diverged (or train "
                                  "again: aetrain doctor <run dir> says what went wrong)")


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
    """A dataset as a command sees it: checked against the model, split as the run split its data.

    `own`: the data the run was trained on, split as it was (its fingerprint and split.json agree); the run's own
    data config is refused when they do not (the files changed since training). Data given on the command line
    is the run's own when it holds the very samples (moved elsewhere: data.path=<new place>), else other data.
    """

    def __init__(self, trained: Trained, cfg: DataConfig, *, own: bool, needed_for: str = "") -> None:
        validate_data(cfg)
        self.trained, self.cfg, self.own = trained, cfg, own
        try:
            self.source: Source = load_source(cfg)
        except DataError as e:
            raise DataError(self._as_typed(str(e), needed_for)) from None
        self._check_shape()
        self._split: Split | None = None
        if own:
            differences = self.differences_from_training()
            if differences:
                use = (f"{needed_for}; it must be the data the run trained on" if needed_for else
                       "to use it anyway, name it on the command line (data.path=... or data.root=...): it is then "
                       "other data, used whole")
                raise DataError(f"data={self.name}: not the data the run was trained on ({'; '.join(differences)}): "
                                f"it changed since training; {use}")
            self._check_against_saved_split()

    @property
    def split(self) -> Split:
        """The split, computed when first needed: every sample of other data needs none (nor its labels)."""
        if self._split is None:
            self._split = split_samples(self.cfg, self.source)
        return self._split

    @classmethod
    def of(cls, trained: Trained, data: DataConfig | None, *, needed_for: str = "") -> RunData:
        """The data a command works on: the run's own (data None), the run's own found where `data` says (a config
        that differs from the run's only in where its files are and how they are read, holding the samples the run
        trained on), or other data. `needed_for`: what the run's own data is used for besides the data given (for
        the refusal when it changed)."""
        if data is None:
            return cls(trained, trained.data, own=True, needed_for=needed_for)
        run = trained.data
        # data given with only its files' place changed had the run's classes cleared (aetrain.cli.command): put back
        candidate = dataclasses.replace(data, classes=run.classes) if data.classes is None else data
        if not (trained.fingerprint and same_samples(candidate, run, moved=True)):
            return cls(trained, data, own=False)
        found = cls(trained, candidate, own=False)
        try:
            if not found.differences_from_training():
                found._check_against_saved_split()
                found.own = True
                return found
        except DataError:  # not split as the run's data was (or it cannot be: no labels for its data.classes)
            pass
        found.cfg, found._split = data, None  # other data after all: used whole
        return found

    def _as_typed(self, message: str, needed_for: str) -> str:
        """A data error on the run's own files, naming each path as the run's command line typed it and as it was
        resolved when the run trained (from another working directory the two differ), and what to do."""
        named = []
        for key, (typed, resolved) in self.trained.moved_keys.items():
            if getattr(self.cfg, key, None) == resolved and f"data.{key}={resolved}" in message:
                message = message.replace(f"data.{key}={resolved}", f"data.{key}={typed} ({resolved} when the run "
                                          "trained)")
                named.append(f"data.{key}=<its place now>")
        if not named:
            return message
        return message + (f"; {needed_for}, so it must be where the run trained on it" if needed_for else
                          f"; if it moved, give {' and '.join(named)}")

    def differences_from_training(self) -> list[str]:
        """How these samples differ from those the run trained on, by the fingerprint its checkpoint holds; [] for
        the same (or for a checkpoint written before aetrain stored fingerprints: a note says so)."""
        saved = self.trained.fingerprint
        if not saved:
            log.warning("note: %s has no data fingerprint (written before aetrain stored one): the data was checked "
                        "by its split.json only", self.trained.checkpoint)
            return []
        return fingerprint_differences(saved, fingerprint(self.cfg.name, self.source, self.split))

    @property
    def name(self) -> str:
        return f"{self.cfg.name}" + (f" ({self.cfg.path})" if getattr(self.cfg, "path", None) else "")

    @property
    def described(self) -> str:
        """Whose samples these are, for headers and titles: "the run's data" or "data=... , not the training data"."""
        if not self.own:
            return f"data={self.name}, not the training data"
        moved = [f"{k}={getattr(self.cfg, k)}" for k in LOCATION_KEYS
                 if getattr(self.cfg, k, None) != getattr(self.trained.data, k, None)]
        return "the run's data" + (f" (found at data.{', data.'.join(moved)})" if moved else "")

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
        of = self.described
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


def same_samples(a: DataConfig, b: DataConfig, *, moved: bool = False) -> bool:
    """True when two data configs describe the same samples and split (they may differ in how data is read; with
    `moved`, also in where its files are: then only their fingerprints can tell whether they hold the same samples)."""
    ignored = LOADING_KEYS + (LOCATION_KEYS if moved else ())
    strip = lambda c: {k: v for k, v in dataclasses.asdict(c).items() if k not in ignored}  # noqa: E731
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


def output_folder(run: str | Path, out: str | None, command: str) -> Path:
    """The folder `command` writes into: `out`, else <run dir>/<command>; checked before any work is done.

    It must be a folder that can be made (or written into), and hold nothing but files `command` wrote
    before: one command's files never replace another's (eval's and score's metrics.json share a name) nor
    a user's. A ConfigError names what is in the way.
    """
    folder = Path(out) if out else run_dir_of(resolve(run, (BEST, LAST))) / command
    key = f"out={out}" if out else str(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{key}: exists and is not a directory; choose another folder with out=DIR")
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if _writer(p) != command)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} entries)" if len(foreign) > 5 else "")
            others = sorted({w for w in map(_writer, (folder / n for n in foreign)) if w is not None})
            whose = f" (output of aetrain {' and '.join(others)})" if others else ""
            raise ConfigError(f"{key}: holds {shown}{whose}, which aetrain {command} did not write; it writes into a "
                              "new or empty folder or one it wrote before: choose another with out=DIR")
    where = folder
    while not where.exists():  # the folder is made when the results are written: make sure it can be
        where = where.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".aetrain-", dir=where))
    except OSError as e:
        raise ConfigError(f"{key}: cannot write there ({where}: {e.strerror}); choose another folder with out=DIR"
                          ) from None
    return folder


def _writer(path: Path) -> str | None:
    """The command after training that wrote `path`: by its name, and a metrics.json (eval's and score's) by what
    it holds; an atomic write's leftover temp file (.<name>.tmp) counts as its file's. None: not one of theirs."""
    name = path.name[1:-4] if path.name.startswith(".") and path.name.endswith(".tmp") else path.name
    if not path.is_file():
        return None
    if name == "metrics.json":
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(found, dict):
            return None
        if "command" in found:
            return found["command"] if found["command"] in COMMAND_FILES else None
        return EVAL if "probe" in found else SCORE if "threshold" in found else None  # written before "command"
    return next((command for command, files in COMMAND_FILES.items() if name in files), None)


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
