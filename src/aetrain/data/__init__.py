"""Data by name -> a deterministic train/val split in model units, placed for the engine.

Data that fits in memory (digits, MNIST, FashionMNIST, CIFAR-10, tensor files) is held as one
tensor, on the training device when it fits there, and batched by index. Image folders stream
through DataLoader workers.

Scaling to model units, decided once from the training split and stored in the model so that
`encode`/`reconstruct` take data as the user has it:
- images from torchvision datasets, image folders and digits are already in [0, 1]: unchanged;
- uint8 tensor files are divided by 255;
- float tensor files within [0, 1] are unchanged; any other float data is standardized, per
  feature for rows and per channel for images (`standardization`: a feature that is constant to
  float32's resolution is centred and scaled like the others, and named in the run's header).

The split (`Split`) is a pure function of the data config: `data.classes` keeps the samples of
those labels, then `data.split_seed` shuffles them into validation, test and training samples.
Training writes it into the run dir (split.json), and the commands after training recompute it
to work on exactly the run's validation or test samples.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from aetrain.config import DataConfig
from aetrain.data.batches import BatchPlan, LoaderBatches, TensorBatches, eval_batches
from aetrain.data.sources import SOURCES, Source
from aetrain.data.spec import DataSpec
from aetrain.errors import DataError
from aetrain.rundir import split_record

__all__ = ["SOURCES", "Data", "DataSpec", "Split", "build_data", "class_indices", "fingerprint",
           "fingerprint_differences", "load_source", "split_samples"]


@dataclass(frozen=True)
class Split:
    """Which samples of a source are for training, validation and testing: sorted int64 indices into
    the source's samples. Samples of labels outside `data.classes` are in none of them."""

    num_samples: int  # samples in the source, of every class
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    class_names: tuple[str, ...] | None = None  # the source's name of each label (an image folder's subfolders)

    def excluded(self) -> torch.Tensor:
        """Indices of the samples in no split (their label is not in data.classes), sorted."""
        used = torch.zeros(self.num_samples, dtype=torch.bool)
        used[torch.cat([self.train, self.val, self.test])] = True
        return (~used).nonzero().flatten()

    def record(self, cfg: DataConfig) -> str:
        """The text of the run dir's split.json (with `class_names` when the labels have names)."""
        names = {"class_names": list(self.class_names)} if self.class_names is not None else {}
        return split_record(self.num_samples, {"train": self.train.tolist(), "val": self.val.tolist(),
                                               "test": self.test.tolist(), **names}, dataclasses.asdict(cfg))


def load_source(cfg: DataConfig) -> Source:
    """The samples (and labels) of `cfg.name`, in data units."""
    return SOURCES.get(cfg.name)(cfg)


def split_samples(cfg: DataConfig, source: Source) -> Split:
    """Keep the samples of `data.classes`, then split them by `data.split_seed`: the first
    round(m * val_fraction) of a seeded permutation validate, the next round(m * test_fraction) test,
    the rest train. With test_fraction 0 and no classes, this is the split aetrain always made."""
    n = len(source.samples)
    candidates = class_indices(cfg, source)
    m = len(candidates)
    n_val, n_test = round(m * cfg.val_fraction), round(m * cfg.test_fraction)
    of = f"{m} samples of data.classes={cfg.classes}" if cfg.classes is not None else f"{m}"
    if n_val < 1 or m - n_val - n_test < 2:
        test = f", {n_test} test" if cfg.test_fraction else ""
        raise DataError(f"data.val_fraction={cfg.val_fraction} leaves {m - n_val - n_test} training{test} and {n_val} "
                        f"validation samples of {of}; each split needs samples (training at least 2)")
    if cfg.test_fraction > 0 and n_test < 1:
        raise DataError(f"data.test_fraction={cfg.test_fraction} leaves no test samples of {of}; raise it or set 0")
    order = candidates[torch.randperm(m, generator=torch.Generator().manual_seed(cfg.split_seed))]
    return Split(n, train=order[n_val + n_test :].sort().values, val=order[:n_val].sort().values,
                 test=order[n_val : n_val + n_test].sort().values, class_names=source.class_names)


def class_indices(cfg: DataConfig, source: Source) -> torch.Tensor:
    """Indices of the samples whose label is in data.classes (every sample when it is None)."""
    n = len(source.samples)
    if cfg.classes is None:
        return torch.arange(n)
    if source.labels is None:
        hint = {"tensor_file": "; give one label per sample with data.labels=<a .npy or .pt file>",
                "image_folder": "; an image folder is labelled when every image lies in a subfolder of data.path "
                                "(one per class)"}.get(cfg.name, "")
        raise DataError(f"data.classes={cfg.classes}: data={cfg.name} has no labels{hint}")
    present = sorted(set(source.labels.tolist()))
    missing = [c for c in cfg.classes if c not in present]
    if missing:
        shown = ", ".join(map(str, present[:20])) + (", ..." if len(present) > 20 else "")
        raise DataError(f"data.classes={cfg.classes}: no sample has label {', '.join(map(str, missing))}; "
                        f"the labels are: {shown}")
    return torch.isin(source.labels, torch.tensor(cfg.classes, dtype=torch.long)).nonzero().flatten()


@dataclass
class Data:
    spec: DataSpec
    train: TensorBatches | LoaderBatches
    val: torch.Tensor | Dataset  # model units, in a fixed order
    device: torch.device
    eval_batch_size: int
    num_workers: int
    memory_format: torch.memory_format = torch.preserve_format
    note: str = ""  # how the source was read when it is not plain (a converted channels-last array); for the header
    split: Split | None = None  # the source indices of the training and validation (and test) samples
    fingerprint_job: Future[dict[str, Any]] | None = None  # see `fingerprint`

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What the run trains on, so that a resume can tell other data apart: the source, the sample
        shape, the sample count and split sizes, and a sha256 of the samples (computed on a background
        thread, started by build_data; this waits for it). {} when unknown."""
        return self.fingerprint_job.result() if self.fingerprint_job is not None else {}

    @property
    def num_train(self) -> int:
        return self.train.plan.num_samples

    @property
    def num_val(self) -> int:
        return len(self.val)

    def val_batches(self) -> Iterator[torch.Tensor]:
        """This process's validation batches: all of `val`, or with several data-parallel processes its
        contiguous share (the processes' sums add up to the whole split's)."""
        plan = self.train.plan
        n, parts = self.num_val, plan.world_size
        lo, hi = plan.rank * n // parts, (plan.rank + 1) * n // parts
        shard = self.val if (lo, hi) == (0, n) else (
            self.val[lo:hi] if isinstance(self.val, torch.Tensor) else Subset(self.val, range(lo, hi)))
        return eval_batches(shard, self.eval_batch_size, self.device, self.num_workers, self.memory_format)


def build_data(cfg: DataConfig, device: torch.device, *, seed: int, channels_last: bool = False, rank: int = 0,
               world_size: int = 1) -> Data:
    """Load `cfg.name`, split it with `cfg.split_seed`, and batch training data in an order set by `seed`.

    `channels_last`: hold and deliver images in NHWC memory format (gathers and slices keep it).
    `rank` of `world_size` data-parallel processes: this process trains on its share of every global
    batch (`BatchPlan`) and validates its share of the validation split.
    """
    source = load_source(cfg)
    image = len(source.shape) == 3
    memory_format = torch.channels_last if channels_last and image else torch.preserve_format
    split = split_samples(cfg, source)
    val_idx, train_idx = split.val, split.train
    plan = BatchPlan(len(train_idx), cfg.batch_size, seed=seed, rank=rank, world_size=world_size)
    eval_batch_size = max(4 * cfg.batch_size, 256)  # no gradients to hold: larger batches run faster

    if isinstance(source.samples, torch.Tensor):
        train, val, spec, constant = _scaled(source, train_idx, val_idx, cfg.name)
        home = device if _fits(device, train, val) else torch.device("cpu")
        if home.type == "cpu" and device.type == "cuda":
            train, val = train.pin_memory(), val.pin_memory()
        train, val = train.to(home, memory_format=memory_format), val.to(home, memory_format=memory_format)
        note = "; ".join(n for n in (source.note, _constant_note(constant, spec)) if n)
        return Data(spec, TensorBatches(train, plan, device), val, device, eval_batch_size, 0, memory_format,
                    note=note, split=split,
                    fingerprint_job=_fingerprint(cfg.name, source, split))

    spec = DataSpec(cfg.name, source.shape, True, torch.tensor(0.0), torch.tensor(1.0), 0.0, 1.0)
    loader_train = LoaderBatches(Subset(source.samples, train_idx.tolist()), plan, device, cfg.num_workers,
                                 memory_format)
    return Data(spec, loader_train, Subset(source.samples, val_idx.tolist()), device, eval_batch_size, cfg.num_workers,
                memory_format, note=source.note, split=split,
                fingerprint_job=_fingerprint(cfg.name, source, split))


def _fingerprint(name: str, source: Source, split: Split) -> Future[dict[str, Any]]:
    """Start `fingerprint` on a background thread (hashlib lets go of the GIL while it hashes), overlapping model
    set-up and the first steps."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aetrain-fingerprint")
    job = pool.submit(fingerprint, name, source, split)
    pool.shutdown(wait=False)  # the thread ends with the job
    return job


def fingerprint(name: str, source: Source, split: Split) -> dict[str, Any]:
    """What a run trains on, stored in its checkpoints so that a resume and the commands after training can tell
    other data apart: the source, the sample shape, the sample count and split sizes, and a sha256 of the samples.

    In-memory samples: sha256 of their bytes in data units (measured on a 2-core VM: digits <1 ms,
    MNIST's 188 MB of float32 0.3 s, CIFAR-10's 614 MB 1 s). Image folders: sha256 of each file's
    relative path and size, so the check costs one stat per file and no reading (an image edited in
    place to the same size goes unnoticed).
    """
    h = hashlib.sha256()
    samples = source.samples
    if isinstance(samples, torch.Tensor):
        h.update(samples.contiguous().view(-1).view(torch.uint8).numpy())
    else:  # an image folder: its files, named from the folder (which may move)
        files = getattr(samples, "files", [])
        root = os.path.commonpath([str(p.parent) for p in files]) if files else ""
        for path in files:
            h.update(f"{os.path.relpath(path, root)}\t{path.stat().st_size}\n".encode())
    names = {"class_names": list(source.class_names)} if source.class_names is not None else {}
    return {"source": name, "shape": list(source.shape), "samples": split.num_samples, "train": len(split.train),
            "val": len(split.val), "test": len(split.test), "sha256": h.hexdigest(), **names}


def fingerprint_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """How data with fingerprint `now` differs from the data of fingerprint `saved` (a checkpoint's), each
    difference in words; [] when they are the same data."""
    differ = [f"{what}: {now.get(key)} here, {saved.get(key)} in the checkpoint"
              for key, what in (("source", "source"), ("samples", "samples"), ("train", "training samples"),
                                ("val", "validation samples")) if saved.get(key) != now.get(key)]
    if not differ and saved.get("sha256") != now.get("sha256"):
        differ.append(f"content (sha256 {str(now.get('sha256'))[:12]} here, {str(saved.get('sha256'))[:12]} "
                      "in the checkpoint)")
    return differ


def _scaled(source: Source, train_idx: torch.Tensor, val_idx: torch.Tensor, name: str
            ) -> tuple[torch.Tensor, torch.Tensor, DataSpec, list[int]]:
    """Training and validation samples in model units, the spec holding the scaling, and the features (rows) or
    channels (images) found constant in the training split."""
    x = source.samples
    train = x[train_idx]
    constant: list[int] = []
    if source.uint8:
        shift, scale = torch.tensor(0.0), torch.tensor(255.0)
    elif source.in_unit_interval:
        shift, scale = torch.tensor(0.0), torch.tensor(1.0)
    else:  # statistics of the training split only: validation stays unseen
        shift, scale, constant = standardization(train)
    train = (train - shift) / scale
    val = (x[val_idx] - shift) / scale
    unit = source.uint8 or source.in_unit_interval
    spec = DataSpec(name, source.shape, unit, shift, scale, float(train.min()), float(train.max()))
    return train.contiguous(), val.contiguous(), spec, constant


# A feature whose standard deviation over the training split is at most this share of its largest |value| is
# constant: float32 resolves about 1.2e-7 of a value, so what varies below ~8 of its steps is rounding, not
# signal. Relative to the feature itself, so the rule is the same at any scale of the data.
CONSTANT_RELATIVE_STD = 1e-6
# float32 squares underflow below ~1e-19 and overflow above ~1e19: data beyond these is measured in float64
FLOAT32_SQUARES = (1e-15, 1e15)


def standardization(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(shift, scale, constant): the training split's mean and standard deviation per feature (rows, (D,)) or
    per channel (images, (C, 1, 1)), and the indices of the constant ones.

    A constant feature (see CONSTANT_RELATIVE_STD; an exact 0 included) is shifted to 0 by its mean and
    scaled by the median standard deviation of the features that vary (by the data's largest |value| if
    none varies, 1 for data that is all zeros), so that an error in it counts as much as in any other
    feature. The model's units then mean the same at any scale of the data: data multiplied by 3e-10 gets
    the model-unit values of the original, and its val/loss (aetrain before 0.x divided any standard
    deviation below 1e-8 by 1e-8 instead, so that such data trained on values near 0 with a val/loss that
    said nothing). Old checkpoints keep the scaling they stored.
    """
    dims = (0,) if train.ndim == 2 else (0, 2, 3)
    magnitude = train.abs().amax(dim=dims)  # (D,) or (C,)
    tiny, huge = FLOAT32_SQUARES
    wide = bool(((magnitude > 0) & (magnitude < tiny)).any() or (magnitude > huge).any())
    stats = train.double() if wide else train  # float32 stays as it always was: the same numbers as before
    shift = stats.mean(dim=dims, keepdim=True)[0]  # (D,) or (C, 1, 1)
    std = stats.std(dim=dims, keepdim=True)[0]
    flat_std, flat_magnitude = std.reshape(-1), magnitude.to(std.dtype)
    is_constant = flat_std <= CONSTANT_RELATIVE_STD * flat_magnitude
    if bool(is_constant.any()):
        varying = flat_std[~is_constant]
        fill = varying.median() if len(varying) else flat_magnitude.max()
        fill = fill if float(fill) > 0 else torch.ones((), dtype=std.dtype)
        std = torch.where(is_constant.reshape(std.shape), fill, std)
    return shift.float(), std.float(), is_constant.nonzero().flatten().tolist()


def _constant_note(constant: list[int], spec: DataSpec) -> str:
    """The header's line about constant features, or ""."""
    if not constant:
        return ""
    what = "channels" if spec.is_image else "features"
    total = spec.shape[0]
    shown = ", ".join(map(str, constant[:8])) + (", ..." if len(constant) > 8 else "")
    return (f"{len(constant)} of {total} {what} constant in the training split ({shown}): centred, and scaled "
            f"by the median standard deviation of the others")


def _fits(device: torch.device, *tensors: torch.Tensor) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) < free // 2  # leave half for the model's work
