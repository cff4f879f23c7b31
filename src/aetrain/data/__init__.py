"""Data by name -> a deterministic train/val split in model units, placed for the engine.

Data that fits in memory (digits, MNIST, FashionMNIST, CIFAR-10, tensor files) is held as one
tensor, on the training device when it fits there, and batched by index. Image folders stream
through DataLoader workers.

Scaling to model units, decided once from the training split and stored in the model so that
`encode`/`reconstruct` take data as the user has it:
- images from torchvision datasets, image folders and digits are already in [0, 1]: unchanged;
- uint8 tensor files are divided by 255;
- float tensor files within [0, 1] are unchanged; any other float data is standardized, per
  feature for rows and per channel for images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Subset

from aetrain.config import DataConfig
from aetrain.data.batches import BatchPlan, LoaderBatches, TensorBatches, eval_batches
from aetrain.data.sources import SOURCES, Source
from aetrain.data.spec import DataSpec
from aetrain.errors import DataError

__all__ = ["SOURCES", "Data", "DataSpec", "build_data"]


@dataclass
class Data:
    spec: DataSpec
    train: TensorBatches | LoaderBatches
    val: torch.Tensor | Dataset  # model units, in a fixed order
    device: torch.device
    eval_batch_size: int
    num_workers: int
    memory_format: torch.memory_format = torch.preserve_format

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
    source = SOURCES.get(cfg.name)(cfg)
    image = len(source.shape) == 3
    memory_format = torch.channels_last if channels_last and image else torch.preserve_format
    n = len(source.samples)
    n_val = round(n * cfg.val_fraction)
    if n_val < 1 or n - n_val < 2:
        raise DataError(f"data.val_fraction={cfg.val_fraction} leaves {n - n_val} training and {n_val} validation "
                        f"samples of {n}; each split needs samples (training at least 2)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    plan = BatchPlan(len(train_idx), cfg.batch_size, seed=seed, rank=rank, world_size=world_size)
    eval_batch_size = max(4 * cfg.batch_size, 256)  # no gradients to hold: larger batches run faster

    if isinstance(source.samples, torch.Tensor):
        train, val, spec = _scaled(source, train_idx, val_idx, cfg.name)
        home = device if _fits(device, train, val) else torch.device("cpu")
        if home.type == "cpu" and device.type == "cuda":
            train, val = train.pin_memory(), val.pin_memory()
        train, val = train.to(home, memory_format=memory_format), val.to(home, memory_format=memory_format)
        return Data(spec, TensorBatches(train, plan, device), val, device, eval_batch_size, 0, memory_format)

    spec = DataSpec(cfg.name, source.shape, True, torch.tensor(0.0), torch.tensor(1.0), 0.0, 1.0)
    loader_train = LoaderBatches(Subset(source.samples, train_idx.tolist()), plan, device, cfg.num_workers,
                                 memory_format)
    return Data(spec, loader_train, Subset(source.samples, val_idx.tolist()), device, eval_batch_size, cfg.num_workers,
                memory_format)


def _scaled(source: Source, train_idx: torch.Tensor, val_idx: torch.Tensor, name: str
            ) -> tuple[torch.Tensor, torch.Tensor, DataSpec]:
    x = source.samples
    train = x[train_idx]
    if source.uint8:
        shift, scale = torch.tensor(0.0), torch.tensor(255.0)
    elif source.in_unit_interval:
        shift, scale = torch.tensor(0.0), torch.tensor(1.0)
    else:  # statistics of the training split only: validation stays unseen
        dims = (0,) if train.ndim == 2 else (0, 2, 3)
        shift = train.mean(dim=dims, keepdim=True)[0]  # (D,) or (C, 1, 1)
        scale = train.std(dim=dims, keepdim=True)[0].clamp_min(1e-8)
    train = (train - shift) / scale
    val = (x[val_idx] - shift) / scale
    unit = source.uint8 or source.in_unit_interval
    spec = DataSpec(name, source.shape, unit, shift, scale, float(train.min()), float(train.max()))
    return train.contiguous(), val.contiguous(), spec


def _fits(device: torch.device, *tensors: torch.Tensor) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) < free // 2  # leave half for the model's work
