"""What a run does around its engine that a single run (`aetrain.commands.train.run`) and a fused sweep's member
(`aetrain.fused`) share: seeding, the set-up (`open_run`: the checks before anything is written and a fresh
run's trainer.init_from; `start_run`: what is written before training; `build_engine`: the engine with the
callbacks every run gets, restored when it continues a checkpoint), the history a resumed run continues, the
warning about a code as wide as its input, and Python's cycle collector kept off the long-lived objects while
training. A check added to the set-up here applies to a run and to a fused member alike."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aetrain import checkpoint as checkpoints
from aetrain.atomic import write_atomic
from aetrain.config import Config, ModelConfig
from aetrain.errors import CheckpointError
from aetrain.rundir import METRICS, SPLIT, RunDir, RunDirTaken, own_run_dir, read_metrics
from aetrain.train import checkpoint
from aetrain.train.callbacks import Checkpointer, EarlyStopping, ReplicaCheck
from aetrain.train.distributed import World
from aetrain.train.engine import NONFINITE, Callback, Engine, Parts
from aetrain.train.outputs import build_outputs
from aetrain.train.signals import Interrupt

log = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA too
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for repeatable sums
    if deterministic or torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(deterministic)  # imports torch._inductor (~3 s): only when it changes


def warn_if_code_is_as_wide_as_the_input(model: ModelConfig, shape: tuple[int, ...]) -> None:
    """An autoencoder whose code is as wide as its input can learn to copy it: a low reconstruction loss then
    says nothing of what the code captured. Not said of families that constrain the code (input noise, a
    sparsity penalty, a KL term), where a wide, overcomplete code is a design choice."""
    size = math.prod(shape)
    if model.latent_dim >= size and model.code_constraint() is None:
        log.warning("model.latent_dim=%d is %s the input (%d values a sample): the model can learn to copy its input, "
                    "so a low reconstruction loss says little; choose a narrower code", model.latent_dim,
                    "as wide as" if model.latent_dim == size else "wider than", size)


def earlier_epochs(previous: Path | None, ckpt: dict) -> list[dict]:
    """The metrics rows of the epochs before the checkpoint, from the run it belongs to."""
    if previous is None:
        return []
    try:
        rows = read_metrics(previous / METRICS)
    except ValueError as e:
        raise CheckpointError(f"trainer.resume={previous}: {e}; cannot continue its history") from None
    return [r for r in rows if isinstance(r.get("epoch"), int) and 0 < r["epoch"] <= ckpt["state"]["epoch"]]


@contextlib.contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """Keep Python's cycle collector off what exists before training (torch, Hydra, the model...).

    Those few hundred thousand objects live as long as the run; a full collection scanning
    them took 100-200 ms mid-epoch here, triggered by whatever allocates next (matplotlib's
    first figure). Frozen, collections see only what training creates. Thawed at the end, so
    runs in one process (a sweep) do not pile up each other's cyclic garbage. No collection
    first: it would delay the first step by a full scan, and what garbage set-up left behind
    is freed after the thaw.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def start_from_weights(parts: Parts, init_from: str) -> None:
    """A fresh run's `trainer.init_from`: the weights of another run's checkpoint into `parts.model`; the optimizer,
    schedule and counters were built fresh and stay so."""
    source = checkpoint.init_weights(parts.model, parts.data.spec, init_from)
    st = source.get("state") if isinstance(source.get("state"), dict) else {}
    log.info("starting from the weights of %s (%s); optimizer, schedule and counters start fresh",
             source["path"], f"after epoch {st['epoch']} of its run" if isinstance(st.get("epoch"), int)
             else "its run's epoch unknown")


# --- a run's set-up: shared by a single run and a fused member ------------------------------------------------------

@dataclass
class RunStart:
    """A run's dir and what the run continues, as the checks before anything is written found them (`open_run`)."""

    path: Path
    ckpt: dict[str, Any] | None = None  # the checkpoint it continues from (trainer.resume), else None
    history: list[dict[str, Any]] = field(default_factory=list)  # the metrics rows of the epochs before it


def open_run(cfg: Config, out_dir: Path, parts: Parts, *, key: str = "hydra.run.dir",
             overrides: Sequence[str] | None = None, world_size: int = 1) -> RunStart:
    """The checks a run makes before anything is written, then a fresh run's trainer.init_from. Nothing is written.

    - trainer.resume: the checkpoint must fit the config and the data (and `world_size` processes); composed from
      the run's own overrides (`overrides`: the command line's, as the CLI's resume composes them), the run's
      settings must not be edited; continued in its own dir only when that would not overwrite later epochs.
    - A fresh run, or a continuation in another dir, never writes over a run (`RunDir.refuse_taken`; `key` names
      the dir in the message: hydra.run.dir, or hydra.sweep.dir for a sweep's job).
    Raises what refuses the run (an AetrainError); a data-parallel run calls it under `world.agreement()`."""
    t = cfg.trainer
    ckpt = checkpoints.load(t.resume) if t.resume else None
    previous = own_run_dir(t.resume, ckpt.get("run_id")) if ckpt is not None else None
    if previous is not None and overrides is not None:  # composed from the run's overrides (the CLI's resume):
        RunDir(previous).refuse_edits(dataclasses.asdict(cfg), overrides)  # before what they imply
    if ckpt is not None:
        checkpoint.check_resumable(cfg, ckpt, parts.data.spec, per_step_schedule=parts.schedule.per_step,
                                   fingerprint=parts.data.fingerprint, world_size=world_size)
    behind = checkpoints.behind_its_run(ckpt, previous) if previous is not None else None
    in_place = previous is not None and previous.resolve() == out_dir.resolve()
    if in_place and behind:
        raise RunDirTaken(f"trainer.resume={t.resume} holds {behind[0]}, and its run went on to {behind[1]} "
                          f"(its last.pt): continuing it in {out_dir} would overwrite what came after; leave out "
                          f"hydra.run.dir to continue it in a new run dir (or name a new one), or continue the "
                          f"run from its newest with trainer.resume={previous}")
    if not in_place:
        RunDir(out_dir, key=key).refuse_taken()  # a fresh run (or a continuation elsewhere) never writes over another
    history = earlier_epochs(previous, ckpt) if ckpt is not None else []
    if ckpt is None and t.init_from:  # weights only: the optimizer, schedule and counters were built fresh
        start_from_weights(parts, t.init_from)
    if ckpt is not None and previous is None:
        log.info("%s is not in the run dir it was written in: continuing it in %s without its earlier epochs' "
                 "metrics; the folder it is kept in is left alone", t.resume, out_dir)
    elif behind:
        log.info("%s holds %s, and its run went on to %s: continuing it in a new run dir, %s, with the metrics up to "
                 "%s; %s is left as it is", t.resume, *behind, out_dir, behind[0], previous)
    return RunStart(out_dir, ckpt, history)


def start_run(run: RunStart, parts: Parts) -> None:
    """What a fresh or continued run writes before training (on the process that writes the run dir): the dir,
    and split.json (which samples validate: for the commands after training)."""
    run.path.mkdir(parents=True, exist_ok=True)
    write_atomic(run.path / SPLIT, parts.data.split.record(parts.cfg.data))


def build_engine(run: RunStart, parts: Parts, callbacks: Sequence[Callback] = (), *,
                 recorded: Sequence[Callback] = (), world: World | None = None,
                 interrupt: Interrupt | None = None) -> Engine:
    """The run's engine with the callbacks every run gets, restored to its checkpoint when it continues one.

    Steering on every process of `world` (their decisions agree): early stopping, the replica check (several
    processes), the checkpointer; what writes, on the process that writes the run dir alone: `recorded` (what was
    run, into .hydra/), every output of `outputs`, then `callbacks`. `interrupt`: the signal handler it trains
    under (None: a new one)."""
    world = world or World()
    t = parts.cfg.trainer
    replicas = [ReplicaCheck(t.replica_check_every_n_steps)] if world.size > 1 and t.replica_check_every_n_steps else []
    outputs = [*recorded, *build_outputs(parts.cfg.outputs, run.path, diagnostics=parts.cfg.diagnostics), *callbacks] \
        if world.is_main else []
    engine = Engine(parts, [
        EarlyStopping(t.early_stopping_patience or math.inf),  # first: the Checkpointer must know an epoch is the last
        *replicas,
        Checkpointer(run.path, every_n_steps=t.checkpoint_every_n_steps, top_k=t.save_top_k, writes=world.is_main),
        *outputs,  # metrics.csv, console, pictures, tensorboard, diagnostics.csv, summary.json
    ], nonfinite=NONFINITE.get(t.on_nonfinite)(), history=list(run.history), world=world,
        interrupt=interrupt or Interrupt())
    if run.ckpt is not None:
        checkpoint.restore(engine, run.ckpt)
        log.info("resuming %s %s", t.resume, engine.where())  # the words of the interrupt that stopped it
    warn_if_code_is_as_wide_as_the_input(parts.cfg.model, parts.data.spec.shape)  # once the run is known to go ahead
    return engine
