"""Batches by index: the order of an epoch is a pure function of (seed, epoch).

That makes two things cheap and exact: resuming in the middle of an epoch (skip the first k
index batches, decode nothing) and reproducing a run. In-memory data is gathered with one
indexing op per batch, on the device the tensors live on; image folders go through a
DataLoader whose workers decode only the indices they are given.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from aetrain.errors import DataError


class BatchPlan:
    """The index batches of each epoch for `num_samples` samples, as this process trains them.

    With several data-parallel processes (`world_size` > 1), the epoch's order and its global
    batches of `batch_size x world_size` samples are exactly those of a single process with that
    batch size; each process takes its contiguous share of every global batch (`rank`), so
    together they train on the same samples in the same steps.

    A trailing global batch with fewer than 2 samples per process is dropped (on every process):
    batch norm cannot train on a single sample and so few samples are too little to matter.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size  # per process
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        full, rest = divmod(num_samples, batch_size * world_size)
        # samples per global batch, every epoch alike: what one process at the global batch size takes
        self.global_sizes = [batch_size * world_size] * full + ([rest] if rest >= 2 * world_size else [])
        self.sizes = [_share(n, rank, world_size) for n in self.global_sizes]  # this process's samples per batch
        if not self.sizes:
            raise DataError(f"{num_samples} training samples are too few for {world_size} processes at "
                            f"data.batch_size={batch_size}: each process needs at least 2 samples per batch")

    def __len__(self) -> int:
        return len(self.sizes)

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's sample order, (sum(global_sizes),) int64 on the CPU: the same for the same (seed, epoch)."""
        # torch takes seeds in [-2**63, 2**64) and maps them mod 2**64: folding a larger derived seed the same
        # way leaves every seed that fitted unchanged and lets any valid trainer.seed run
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**64)
        return torch.randperm(self.num_samples, generator=g)[: sum(self.global_sizes)]

    def split(self, order: torch.Tensor) -> list[torch.Tensor]:
        """This process's index batches of an epoch `order` (on any device)."""
        if self.world_size == 1:
            return list(order.split(self.sizes))
        return [batch.tensor_split(self.world_size)[self.rank] for batch in order.split(self.global_sizes)]

    def epoch(self, epoch: int) -> list[torch.Tensor]:
        return self.split(self.order(epoch))


def _share(n: int, rank: int, world_size: int) -> int:
    """Samples of a batch of `n` that process `rank` takes (tensor_split's contiguous, near-even parts)."""
    return n // world_size + (rank < n % world_size)


class TensorBatches:
    """Training batches gathered from an in-memory tensor (N, *shape).

    A yielded batch stays valid until the batch after the next is drawn (buffers are reused):
    consume batches as they come, don't collect them.
    """

    def __init__(self, data: torch.Tensor, plan: BatchPlan, device: torch.device) -> None:
        self.data = data
        self.plan = plan
        self.device = device

    def __len__(self) -> int:
        return len(self.plan)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        order = self.plan.order(epoch).to(self.data.device)  # one transfer per epoch, not one per batch
        if self.data.device != self.device:  # held on the CPU for a GPU: gather, then copy over
            for idx in self.plan.split(order)[start:]:
                yield self.data[idx].to(self.device, non_blocking=True)
            return
        # Resident data: gather into two alternating buffers. A fresh (B, *shape) tensor per batch
        # costs more than the gather itself on a CPU (new pages); a batch is done with (its backward
        # has run) before the buffer comes round again, and on a GPU the stream orders the reuse.
        buffers = [torch.empty_like(self.data[: self.plan.batch_size]) for _ in range(2)]
        for i, idx in enumerate(self.plan.split(order)[start:]):
            batch = buffers[i % 2][: len(idx)]
            yield torch.index_select(self.data, 0, idx, out=batch)  # (B, *shape)


class LoaderBatches:
    """Training batches decoded by DataLoader workers from a map-style dataset."""

    def __init__(self, dataset: Dataset, plan: BatchPlan, device: torch.device, num_workers: int,
                 memory_format: torch.memory_format = torch.preserve_format) -> None:
        self.dataset = dataset
        self.plan = plan
        self.device = device
        self.num_workers = num_workers
        self.memory_format = memory_format

    def __len__(self) -> int:
        return len(self.plan)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        batches = [idx.tolist() for idx in self.plan.epoch(epoch)[start:]]
        yield from _load(self.dataset, batches, self.device, self.num_workers, self.memory_format)


def eval_batches(source: torch.Tensor | Dataset, batch_size: int, device: torch.device, num_workers: int = 0,
                 memory_format: torch.memory_format = torch.preserve_format) -> Iterator[torch.Tensor]:
    """Validation batches in order: slices of a tensor (no copy) or loader batches."""
    n = len(source)
    if isinstance(source, torch.Tensor):
        for i in range(0, n, batch_size):
            yield source[i : i + batch_size].to(device, non_blocking=True)
    else:
        yield from _load(source, [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)],
                         device, num_workers, memory_format)


def _load(dataset: Dataset, batches: list[list[int]], device: torch.device, num_workers: int,
          memory_format: torch.memory_format) -> Iterator[torch.Tensor]:
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=device.type == "cuda")
    try:
        for x in loader:
            yield x.to(device, non_blocking=True, memory_format=memory_format)
    except DataError as e:  # re-raised from a worker with its traceback in the text: keep the last line
        raise DataError(str(e).strip().splitlines()[-1].split("DataError: ", 1)[-1]) from None
