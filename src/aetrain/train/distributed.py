"""Data-parallel training over several processes, and the single process as its identity.

`World` is one process alone: rank 0 of 1, every collective the identity and every check a
no-op, so a run without DDP does no extra work and gives the same numbers bit for bit.
`Processes` is a torch.distributed process group set up from a launcher's environment
(`torchrun`, aetrain's own `trainer.devices=N` launch, the tasks of a SLURM job): NCCL for CUDA
tensors and gloo for CPU tensors. It wraps the training network in DistributedDataParallel
(`wrap`), turns batch norm into SyncBatchNorm (`prepare`) and gives every other component the
reductions it needs, so that each process computes the same decisions and none waits on a
collective the others skipped:

- metrics: each process's sums are gathered and added in rank order (`sum`, `gather`), so every
  process holds the same train and validation means to the last bit, and takes the same best
  epoch, early stop, plateau step and non-finite verdict;
- a stop: a signal received by any process stops every process after the same optimizer step
  (`stop_signal`, one asynchronous all-reduce per step);
- setup: a process that cannot start tells the others (`agreement`), and one line says why;
- the replicas: a checksum of every process's weights and buffers is compared every
  `trainer.replica_check_every_n_steps` steps and before every checkpoint (`check_replicas`);
- failures: every collective waits at most `trainer.ddp_timeout_s`; a process that died or hangs
  ends the others with `ProcessLost` (`explain`) instead of a hang.

Only rank 0 writes the run dir: the train command builds the outputs there alone and the
checkpointer serializes there alone. Which errors a process reports is `aetrain.launch.reported_here`:
an error every process raised alike (`everywhere`) is printed once, by rank 0. Starting, joining and
leaving the processes is the process lifecycle, `aetrain.launch`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, ContextManager

import numpy as np
import torch

from aetrain.config import Config, TrainerConfig
from aetrain.errors import AetrainError, ConfigError, ProcessesFailed, ProcessLost, ReplicaMismatch
from aetrain.launch import device_kind, everywhere, launched

log = logging.getLogger(__name__)

_OFF = contextlib.nullcontext()  # reusable: the single process's "no context" costs nothing per micro-batch
MAIN_FIRST_TIMEOUT_S = 3600.0  # rank 0 prepares the data (downloads) while the others wait this long at most


class World:
    """This process alone: rank 0 of 1. Collectives are the identity, checks are no-ops."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    is_main = True

    def describe(self) -> str | None:
        """A line for the run's header; None for a single process."""
        return None

    def device(self, device: torch.device) -> torch.device:
        """The device this process trains on, given the one the config resolved to."""
        return device

    def check_config(self, cfg: Config, device: torch.device) -> None:
        """Refuse what this world cannot run (raises ConfigError)."""

    def seed(self, seed: int) -> None:
        """Give this process its own stream of random draws (noise, dropout) after the shared set-up."""

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (a download), then the others."""
        yield

    @contextlib.contextmanager
    def agreement(self) -> Iterator[None]:
        """Set-up that may fail on some processes only: every process learns whether any failed."""
        yield

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as this world trains it (SyncBatchNorm under DDP)."""
        return model

    def wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        """The network the training step calls (DistributedDataParallel under DDP)."""
        return net

    def accumulating(self, net: torch.nn.Module) -> Callable[[], ContextManager[Any]]:
        """A context for the micro-batches of a window but its last: DDP's no_sync, so gradients are
        exchanged once per optimizer step."""
        return lambda: _OFF

    def eager_only(self) -> str | None:
        """Why the training step must run eagerly rather than as a captured CUDA graph, or None. A
        graphed step asks this once, and logs the reason in one line when it falls back."""
        return None

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every process's `t`, stacked in rank order: (processes, *t.shape)."""
        return t[None]

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of every process's `t`, added in rank order (the same bits on every process)."""
        return t

    def total(self, n: int) -> int:
        return n

    def stop_signal(self, signum: int | None) -> int | None:
        """The signal to stop at, agreed by every process (see Processes.stop_signal); here: this one's."""
        return signum

    def check_replicas(self, model: torch.nn.Module, step: int) -> None:
        """Raise ReplicaMismatch when the processes' weights differ."""

    def per_rank(self, state: Callable[[], Any]) -> list[Any] | None:
        """Every process's `state()` (for a checkpoint); None for a single process."""
        return None

    def barrier(self) -> None:
        """Wait until every process is here."""

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every process."""
        return obj

    def explain(self, error: BaseException) -> BaseException:
        """`error`, or a ProcessLost saying in one line that another process is gone."""
        return error

    def close(self) -> None:
        """Leave the process group."""


class Processes(World):
    """One of several data-parallel processes in a torch.distributed process group (env:// rendezvous)."""

    def __init__(self, cfg: TrainerConfig) -> None:
        env = os.environ
        self.rank, self.size = int(env["RANK"]), int(env["WORLD_SIZE"])
        self.local_rank = int(env.get("LOCAL_RANK", self.rank))
        self.local_size = int(env.get("LOCAL_WORLD_SIZE", self.size))
        self.is_main = self.rank == 0
        if cfg.devices not in (1, -1, self.local_size):
            raise ConfigError(f"trainer.devices={cfg.devices}: this process was started by a launcher with "
                              f"{self.local_size} process(es) on this machine; leave trainer.devices at 1 or set it "
                              f"to {self.local_size}")
        self.kind = device_kind(cfg.device)
        self.cuda_index: int | None = None
        if self.kind == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"trainer.device={cfg.device}: CUDA is not available on this machine; "
                                  "use trainer.device=cpu (gloo)")
            count = torch.cuda.device_count()
            if ":" in cfg.device and self.size > 1:
                raise ConfigError(f"trainer.device={cfg.device} names one GPU, and each of the {self.size} "
                                  "processes takes the GPU of its local rank: use trainer.device=cuda")
            if self.local_size > count:
                raise ConfigError(f"{self.local_size} processes on this machine need a GPU each; it has {count}")
            self.cuda_index = torch.device(cfg.device).index if ":" in cfg.device else self.local_rank % count
            torch.cuda.set_device(self.cuda_index)
        elif self.kind != "cpu":
            raise ConfigError(f"trainer.device={cfg.device}: data-parallel training runs on cuda (NCCL) or cpu "
                              "(gloo)")
        self.backend = "cpu:gloo,cuda:nccl" if self.kind == "cuda" else "gloo"
        import torch.distributed as dist

        self.dist = dist
        try:
            dist.init_process_group(self.backend, timeout=timedelta(seconds=cfg.ddp_timeout_s))
            # a group of its own for the wait while rank 0 downloads data: that may take longer than a step
            self.patient = dist.new_group(backend="gloo", timeout=timedelta(seconds=max(MAIN_FIRST_TIMEOUT_S,
                                                                                        cfg.ddp_timeout_s)))
        except RuntimeError as e:
            raise ProcessLost(f"could not join the other processes of this run ({_first_line(e)})") \
                from None
        self.flag = torch.zeros(1, dtype=torch.int64)  # the stop signal, exchanged over gloo
        self.pending: Any = None  # the stop-signal all-reduce in flight

    def describe(self) -> str:
        return (f"{self.size} processes ({self.local_size} on this machine), DistributedDataParallel over "
                f"{'NCCL' if self.kind == 'cuda' else 'gloo'}")

    def device(self, device: torch.device) -> torch.device:
        return torch.device("cuda", self.cuda_index) if self.cuda_index is not None else device

    def check_config(self, cfg: Config, device: torch.device) -> None:
        if getattr(cfg.model, "batch_norm", False) and self.size > 1 and device.type != "cuda":
            raise ConfigError("model.batch_norm=true with several processes needs CUDA: batch norm is synchronized "
                              "across processes by torch's SyncBatchNorm, which has no CPU kernels; train on GPUs, "
                              "in one process, or without batch norm")

    def seed(self, seed: int) -> None:
        if self.rank == 0:  # rank 0 keeps the single process's stream: one process under torchrun is the plain run
            return
        state = np.random.SeedSequence([seed, self.rank]).generate_state(2, dtype=np.uint64)
        random.seed(int(state[0]))
        np.random.seed(int(state[0] % 2**32))
        torch.manual_seed(int(state[1]))

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        if not self.is_main:
            self.dist.barrier(group=self.patient)
        try:
            yield
        finally:
            if self.is_main:
                self.dist.barrier(group=self.patient)

    @contextlib.contextmanager
    def agreement(self) -> Iterator[None]:
        error: Exception | None = None
        try:
            yield
        except Exception as e:
            error = e
        reports: list[Any] = [None] * self.size
        mine = None if error is None else (_one_line(error), getattr(error, "exit_code", 1))
        self.dist.all_gather_object(reports, mine)
        failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
        if not failed:
            return
        rank, (message, code) = failed[0]
        if rank == self.rank and error is not None:
            raise everywhere(error)
        raise everywhere(ProcessesFailed(f"rank {rank}: {message}", code))

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        # Buffers are not broadcast at every forward: SyncBatchNorm keeps running statistics equal on
        # every process, the data scaling never changes, and the replica check covers both. (torch
        # 2.15 renamed the switch; both leave the one broadcast at construction in place.)
        no_buffer_sync = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        return DistributedDataParallel(net, device_ids=None if self.cuda_index is None else [self.cuda_index],
                                       **({"forward_sync_buffers": False} if no_buffer_sync else
                                          {"broadcast_buffers": False}))

    def accumulating(self, net: torch.nn.Module) -> Callable[[], ContextManager[Any]]:
        return net.no_sync  # type: ignore[return-value]

    def eager_only(self) -> str | None:
        # DDP's reducer launches its all-reduces from autograd hooks, bucket by bucket, with host-side
        # bookkeeping between them: a replayed graph would skip that bookkeeping.
        return "DistributedDataParallel exchanges gradients from autograd hooks that a captured graph cannot replay"

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.size)]
        self.dist.all_gather(parts, t)
        return torch.stack(parts)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.gather(t).sum(0)

    def total(self, n: int) -> int:
        return int(self.sum(torch.tensor([n], dtype=torch.int64)).item())

    def stop_signal(self, signum: int | None) -> int | None:
        """Every process asks here between optimizer steps; every process gets the same answer.

        Each call posts this process's signal (0 = none) in an asynchronous all-reduce (max) and
        reads the result of the previous call's, which has long arrived. A signal received by any
        process during step k therefore stops every process after step k + 1, at the same point.
        """
        if self.pending is not None:
            self.pending.wait()
            self.pending = None
            if agreed := int(self.flag.item()):
                return agreed
        self.flag.fill_(signum or 0)
        self.pending = self.dist.all_reduce(self.flag, op=self.dist.ReduceOp.MAX, async_op=True)
        return None

    def check_replicas(self, model: torch.nn.Module, step: int) -> None:
        names, sums = checksums(model)
        every = self.gather(sums)  # (processes, tensors)
        differs = (every != every[:1]).any(0)  # (tensors,)
        if not bool(differs.any()):  # one host sync
            return
        i = int(differs.nonzero()[0])
        ranks = [r for r in range(self.size) if bool(every[r, i] != every[0, i])]
        raise everywhere(ReplicaMismatch(
            f"the processes' models differ at step {step}: {names[i]} on rank{'s' if len(ranks) > 1 else ''} "
            f"{', '.join(map(str, ranks))} is not rank 0's (replica check), and nothing was saved from this state. "
            "DDP keeps replicas equal, so this is a bug, a hardware fault, or something that changed one process's "
            "weights"))

    def per_rank(self, state: Callable[[], Any]) -> list[Any]:
        states: list[Any] = [None] * self.size
        self.dist.all_gather_object(states, state())
        return states

    def barrier(self) -> None:
        self.dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def explain(self, error: BaseException) -> BaseException:
        if isinstance(error, AetrainError) or not _is_communication_error(error):
            return error
        return ProcessLost(f"lost contact with the other processes of this run ({_backend_message(error)}): one "
                           "of them died, was killed or hangs, so every process stops")

    def close(self) -> None:
        if self.pending is not None:
            self.pending.wait()
        self.dist.destroy_process_group()


def connect(cfg: TrainerConfig) -> World:
    """The world of this process: a process group when a launcher started it, else the single process."""
    if not launched():
        return World()
    try:
        return Processes(cfg)
    except ConfigError as e:  # the same on every process: rank 0 says it
        raise everywhere(e) from None


def checksums(model: torch.nn.Module) -> tuple[list[str], torch.Tensor]:
    """(names, (tensors,) int64): an exact checksum of every weight and buffer of `model`.

    The sum of each tensor's elements read as integers (their bit patterns): exact, so equal
    models give equal sums on any device, and any change to a value shows."""
    names, sums = [], []
    for name, t in model.state_dict().items():
        t = t.detach().reshape(-1)
        if t.is_floating_point():
            t = t.view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[t.element_size()])
        names.append(name)
        sums.append(t.sum(dtype=torch.int64))
    return names, torch.stack(sums)


COMMUNICATION_MARKERS = ("gloo", "nccl", "connection", "timed out", "timeout", "socket", "broken pipe",
                         "processgroup", "c10d")


def _is_communication_error(error: BaseException) -> bool:
    """A failed collective: torch's DistError, or the RuntimeError gloo and NCCL raise for a lost peer."""
    import torch.distributed as dist

    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(marker in text for marker in COMMUNICATION_MARKERS)


def _backend_message(error: BaseException) -> str:
    """The gist of a gloo/NCCL error: `Connection closed by peer [127.0.0.1]:41109`, without the source
    location and the advice that follow it."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", _first_line(error))  # "[.../gloo/transport/tcp/pair.cc:561] "
    return text.split(". ", 1)[0].rstrip(".")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _one_line(error: BaseException) -> str:
    text = _first_line(error)
    return text if isinstance(error, AetrainError) else f"{type(error).__name__}: {text}"
