"""A fused group's parts: the shared data once, and every member's parts as its job alone builds them.

`build_members` follows `aetrain.commands.train.build_parts` for each member: the same checks,
`seed_everything(member's seed)`, the model built (its initial weights drawn from its own seed),
its objectives, optimizer, schedule, clipping, non-finite policy and training-doctor probe, and
its own batch order (a `BatchPlan` of its seed over the shared training samples). The random
streams each member continues from are the global ones right after its model was built: what its
job alone draws next.

`members_that_fit` is the up-front memory check for a group: K members need K times what one
needs (weights, gradients, optimizer state, a batch's activations and a checkpoint's copies: see
`aetrain.train.memory`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from aetrain.config import Config, validate
from aetrain.data import Data, build_data
from aetrain.data.batches import BatchPlan, TensorBatches
from aetrain.device import resolve_device
from aetrain.fused.grouping import shape_key, unfusable
from aetrain.fused.net import RngState
from aetrain.fused.step import MemberStep
from aetrain.models import FAMILIES, Family
from aetrain.models.objective import identity
from aetrain.train.diagnostics import build_probe
from aetrain.train.engine import NONFINITE, Parts, accumulation_windows
from aetrain.train.graphs import COMPILE_MODES, graphs_policy
from aetrain.train.memory import available_host_memory, check_fits, estimate
from aetrain.train.optim import build_optimizer, build_schedule
from aetrain.train.precision import Precision, build_clip, trainable
from aetrain.train.runs import seed_everything

log = logging.getLogger(__name__)


@dataclass
class Built:
    """What `build_members` made: the shared data and precision, and each member's parts and streams."""

    data: Data
    family: Family
    precision: Precision  # the group's autocast (every member has the same precision)
    parts: list[Parts]
    rngs: list[RngState]


class GroupTooLarge(Exception):
    """The group does not fit in memory; `fits` members would (at least 1)."""

    def __init__(self, fits: int) -> None:
        super().__init__(f"{fits} members fit")
        self.fits = fits


def check_group(configs: Sequence[Config]) -> None:
    """Refuse configs that cannot train as one group (a ValueError naming why: a bug in the caller's grouping)."""
    if not configs:
        raise ValueError("a fused group needs at least one member")
    for cfg in configs:
        why = unfusable(cfg)
        if why is not None:
            raise ValueError(f"cannot fuse: {why}")
    if len({shape_key(cfg) for cfg in configs}) != 1:
        raise ValueError("cannot fuse: the configs differ in keys that are not fusible (aetrain.fused.grouping)")


def build_members(configs: Sequence[Config]) -> Built:
    """Every member's parts, on the group's device, each freshly initialised from its own trainer.seed."""
    check_group(configs)
    first = configs[0]
    t = first.trainer
    for cfg in configs:  # the one-line errors of a job alone, before anything is built
        validate(cfg)
        build_clip(cfg.trainer.gradient_clip_val, cfg.trainer.gradient_clip_algorithm)
        NONFINITE.get(cfg.trainer.on_nonfinite)
    graphs_policy(t.cuda_graphs), COMPILE_MODES.get(t.compile_mode)
    device = resolve_device(t.device)
    family = FAMILIES.get(first.model.name)
    seed_everything(t.seed, t.deterministic)
    data = build_data(first.data, device, seed=t.seed, channels_last=t.channels_last)
    if not isinstance(data.train, TensorBatches):
        raise ValueError("cannot fuse: the training data is streamed by a DataLoader")
    batch_size = max(data.train.plan.sizes)
    fits = members_that_fit(first, family, data, batch_size=batch_size)
    if fits is not None and fits < len(configs):
        if fits < 1:
            check_fits(first, family, data.spec, device, batch_size=batch_size)  # a job alone's one-line refusal
        if len(configs) > 1:  # (one member that the check let through, memory freed meanwhile, trains)
            raise GroupTooLarge(max(fits, 1))
    parts, rngs = [], []
    for cfg in configs:
        parts.append(_member_parts(cfg, family, data, device))
        rngs.append(RngState.current(device))  # what the member's job alone continues from
    return Built(data, family, Precision(t.precision, device), parts, rngs)


def _member_parts(cfg: Config, family: Family, data: Data, device: torch.device) -> Parts:
    """One member's parts, as `build_parts` makes a run's (a single process; its own batch order)."""
    t = cfg.trainer
    seed_everything(t.seed, t.deterministic)
    model = family.build(cfg.model, data.spec).to(device, memory_format=data.memory_format)
    objective, val_objective = (o.to(device) for o in family.objectives(cfg.model, data.spec))
    plan = BatchPlan(data.train.plan.num_samples, cfg.data.batch_size, seed=t.seed)
    member_data = dataclasses.replace(data, train=TensorBatches(data.train.data, plan, device))
    precision = Precision(t.precision, device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    windows = accumulation_windows(plan.sizes, t.accumulate_grad_batches)
    schedule = build_schedule(cfg.scheduler, optimizer, total_steps=len(windows) * t.max_epochs)
    probe = build_probe(cfg.diagnostics, model, latent_dim=cfg.model.latent_dim, steps_per_epoch=len(windows))
    step = MemberStep(objective, optimizer, precision, build_clip(t.gradient_clip_val, t.gradient_clip_algorithm),
                      trainable(model.parameters()), NONFINITE.get(t.on_nonfinite).admit, probe,
                      clipping=(t.gradient_clip_val, t.gradient_clip_algorithm))
    return Parts(cfg, model, model, objective, val_objective, optimizer, schedule, precision, step, member_data,
                 windows, family.galleries)


def members_that_fit(cfg: Config, family: Family, data: Data, *, batch_size: int) -> int | None:
    """How many members of `cfg`'s shape fit in the memory available now; None where it cannot be read."""
    need = estimate(cfg, family, data.spec, batch_size=batch_size)
    host = available_host_memory()
    if data.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(data.device)
        limits = [(need.device_bytes, free), (need.host_bytes, host)]
    else:
        limits = [(need.device_bytes + need.host_bytes, host)]
    counts = [available // max(needed, 1) for needed, available in limits if available is not None]
    return min(counts) if counts else None


def uses_member_streams(parts: Sequence[Parts]) -> str | None:
    """Why the group's step draws random numbers per member (then a CUDA graph cannot replay it), or None."""
    cfg = parts[0].cfg
    if any(p.objective.corrupt is not identity for p in parts):
        return "its members corrupt their inputs with noise from their own random streams"
    if cfg.model.dropout > 0:
        return "its members draw dropout masks from their own random streams"
    if cfg.model.name == "vae":
        return "its members draw their codes from their own random streams"
    return None


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation that failed: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(
        text in str(error) for text in ("out of memory", "can't allocate memory", "not enough memory"))


__all__ = ["Built", "GroupTooLarge", "build_members", "check_group", "is_out_of_memory", "members_that_fit",
           "uses_member_streams"]
