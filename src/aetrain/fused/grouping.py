"""Which jobs of a sweep can train together as one fused group, and why the others cannot.

Torch-free and Hydra-free: the launcher groups a sweep's batch of jobs with it before anything
heavy is imported, and the README's table of fusible keys is this module's `FUSIBLE`.

Jobs fuse when their configs are equal except in **fusible keys**: settings each member of a
fused group keeps for itself because the group gives every member its own copy of the part they
set (its initial weights and random streams, its optimizer, schedule, clipping, objective,
callbacks and run dir). Every other key (family, widths, latent size, activation, data, batch
size, precision, device, accumulation, the optimizer and schedule kinds...) shapes the one
batched network, its batches or the whole process, and separates groups.

A job that cannot fuse at all (`unfusable`) trains through the normal path, and so does a job
that shares its shape with no other job; each with one line saying why (`Grouping.alone`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aetrain.config import Config

# Keys each member of a group has for itself (prefixes end with a dot). What each changes:
FUSIBLE: tuple[tuple[str, str], ...] = (
    ("trainer.seed", "initial weights, batch order, noise, dropout and VAE draws (each member's own streams)"),
    ("optimizer.", "every number of the optimizer (lr, weight_decay, betas, eps, momentum, nesterov, alpha): one "
                   "optimizer per member; the kind (optimizer=) separates groups"),
    ("scheduler.", "every number of the schedule (plateau follows each member's own val/loss); the kind "
                   "(scheduler=) separates groups"),
    ("model.init", "the weight init"),
    ("model.loss", "the reconstruction loss (each member's own objective)"),
    ("model.noise.", "denoising: the noise kind and level"),
    ("model.sparsity.", "sparse_ae: the penalty kind, weight and target"),
    ("model.beta", "vae: the KL weight"),
    ("model.kl_warmup_epochs", "vae: the KL warm-up"),
    ("model.dropout", "the dropout rate, among rates that are all > 0 (0 has no dropout layers: another shape)"),
    ("trainer.gradient_clip_val", "clipping threshold, applied to each member's own gradients"),
    ("trainer.gradient_clip_algorithm", "norm or value clipping, per member"),
    ("trainer.max_epochs", "a member that reaches its own max_epochs stops and stops costing updates"),
    ("trainer.early_stopping_patience", "early stopping, per member"),
    ("trainer.on_nonfinite", "a diverging member fails (stop) or drops its own update (skip) alone"),
    ("trainer.init_from", "the weights a member starts from"),
    ("trainer.log_every_n_steps", "the member's progress reads"),
    ("trainer.checkpoint_every_n_steps", "the member's checkpoints"),
    ("trainer.save_top_k", "the member's checkpoints"),
    ("outputs.", "what the member's run dir gets (pictures, TensorBoard)"),
    ("diagnostics.", "the member's training doctor"),
)
PREFIXES = tuple(key for key, _ in FUSIBLE)

DEFAULT_MAX_GROUP = 64  # members of one group at most (hydra.launcher.max_group)


KINDS = ("optimizer.name", "scheduler.name")  # which optimizer and schedule: the same in a group (one class each)


def fusible(key: str) -> bool:
    """Whether a flat config key (`optimizer.lr`) is one each member of a group has for itself."""
    return key not in KINDS and any(key == p or (p.endswith(".") and key.startswith(p)) for p in PREFIXES)


def flat(cfg: Config) -> dict[str, Any]:
    """The config as `{"model.latent_dim": 16, ...}`."""
    return _flat(dataclasses.asdict(cfg))


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def shape_key(cfg: Config) -> str:
    """What must be equal for two configs to train as one group: everything but the fusible keys, and
    whether the model has dropout layers at all."""
    keys = {k: v for k, v in flat(cfg).items() if not fusible(k) and k != "trainer.resume"}  # (resume: a member's own)
    keys["model.dropout>0"] = cfg.model.dropout > 0
    return json.dumps(keys, sort_keys=True, default=str)


def unfusable(cfg: Config) -> str | None:
    """Why `cfg` cannot train in a fused group at all (one line), or None."""
    t = cfg.trainer
    if t.devices != 1:
        return f"trainer.devices={t.devices}: a data-parallel job trains alone"
    if t.compile:
        return "trainer.compile=true: a compiled model trains alone"
    if t.precision == "16-mixed":
        return "trainer.precision=16-mixed: each member would need its own loss scaling, which is not fused " \
               "(bf16-mixed and 32 fuse)"
    draws = cfg.model.name in ("denoising_ae", "vae") or cfg.model.dropout > 0
    if str(t.cuda_graphs).lower() == "true" and draws:
        return "trainer.cuda_graphs=true: a graph cannot hold each member's own random stream (noise, dropout, the " \
               "VAE's draws); with trainer.cuda_graphs=auto the group trains eagerly"
    if cfg.model.activation == "prelu":
        return "model.activation=prelu: its learned slope is not fused"
    if cfg.data.name == "image_folder":
        return "data=image_folder: streamed images (DataLoader workers) are not fused; in-memory data is"
    return None


@dataclass
class Grouping:
    """A sweep's jobs (by index into the configs given) as fused groups and jobs that train alone."""

    groups: list[list[int]] = field(default_factory=list)  # each at least 2 jobs, in order
    alone: dict[int, str] = field(default_factory=dict)  # job -> why it trains through the normal path

    def group_of(self, job: int) -> int | None:
        return next((g for g, jobs in enumerate(self.groups) if job in jobs), None)


def group_configs(configs: Sequence[Config], *, max_group: int = DEFAULT_MAX_GROUP) -> Grouping:
    """Group `configs` (a sweep's jobs) by their shape; a group larger than `max_group` is split into
    near-equal groups of at most `max_group`. A job that cannot fuse, or has no partner, trains alone."""
    if max_group < 1:
        raise ValueError(f"max_group must be >= 1, not {max_group}")
    grouping = Grouping()
    by_shape: dict[str, list[int]] = {}
    for i, cfg in enumerate(configs):
        why = unfusable(cfg)
        if cfg.trainer.resume:  # a fused sweep resumes its members itself (README: Fused sweeps)
            why = f"trainer.resume={cfg.trainer.resume}: a job given a checkpoint to continue trains alone"
        if why is not None:
            grouping.alone[i] = why
        else:
            by_shape.setdefault(shape_key(cfg), []).append(i)
    for jobs in by_shape.values():
        if len(jobs) == 1:
            grouping.alone[jobs[0]] = "no other job of this batch has its shape (" + \
                _nearest_difference(configs, jobs[0]) + ")"
            continue
        for chunk in split(jobs, max_group):
            if len(chunk) == 1:  # max_group=1, or what a split by it left over
                grouping.alone[chunk[0]] = f"hydra.launcher.max_group={max_group} left it without a partner " \
                                           f"(its shape has {len(jobs)} jobs)"
            else:
                grouping.groups.append(chunk)
    grouping.groups.sort(key=lambda g: g[0])
    grouping.alone = dict(sorted(grouping.alone.items()))
    return grouping


def split(jobs: list[int], most: int) -> list[list[int]]:
    """`jobs` in consecutive chunks of at most `most`, as equal in size as they can be."""
    parts = math.ceil(len(jobs) / most)
    size, extra = divmod(len(jobs), parts)
    out, start = [], 0
    for p in range(parts):
        end = start + size + (p < extra)
        out.append(jobs[start:end])
        start = end
    return out


def _nearest_difference(configs: Sequence[Config], job: int) -> str:
    """The keys by which `job` differs from the most similar other job that could fuse: what keeps it alone."""
    mine = {k: v for k, v in flat(configs[job]).items() if not fusible(k)}
    best: list[str] | None = None
    for i, other in enumerate(configs):
        if i == job or unfusable(other) is not None:
            continue
        theirs = {k: v for k, v in flat(other).items() if not fusible(k)}
        differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if (configs[job].model.dropout > 0) != (other.model.dropout > 0):
            differ.append("model.dropout")
            mine["model.dropout"] = configs[job].model.dropout
        if best is None or len(differ) < len(best):
            best = differ
    if not best:
        return "the only job"
    shown = ", ".join(f"{k}={mine.get(k)!r}" for k in best[:3]) + (", ..." if len(best) > 3 else "")
    return f"it differs in {shown}"
