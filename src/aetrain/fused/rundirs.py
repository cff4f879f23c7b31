"""A fused member's run dir: what the fused group does to a run's directory beyond `aetrain.rundir.RunDir`.

RunDir holds the lifecycle every run shares (the claim while training, refusing a dir that holds a
run, summary.json, its status); this module adds, for one member, what `aetrain.commands.train.run`
does around its engine (the checks before anything is written, split.json, `trainer.init_from`, the
callbacks a run gets, its restored state, the final table). What a resumed sweep does with a member (keep
it, continue it from its last.pt, or clear a first attempt) is `aetrain.rundir.prepare_resume`, as for a job
of the plain launcher.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aetrain import checkpoint as checkpoints
from aetrain.atomic import write_atomic
from aetrain.config import Config
from aetrain.rundir import SPLIT, RunDir, own_run_dir
from aetrain.train import checkpoint
from aetrain.train.callbacks import Checkpointer, EarlyStopping
from aetrain.train.engine import Callback, Engine, Parts
from aetrain.train.outputs import build_outputs
from aetrain.train.runs import earlier_epochs, start_from_weights, warn_if_code_is_as_wide_as_the_input

log = logging.getLogger(__name__)

@dataclass
class MemberDir:
    """A member's run dir as training found it."""

    path: Path
    ckpt: dict[str, Any] | None = None  # the checkpoint it continues from (a resume), else None
    history: list[dict[str, Any]] = field(default_factory=list)  # the epochs before that checkpoint


def open_dir(cfg: Config, out_dir: Path, parts: Parts) -> MemberDir:
    """The checks `run` makes before writing: a resume's checkpoint must fit the config and data; a fresh run
    (or a continuation elsewhere) never writes over a run. Nothing is written here."""
    t = cfg.trainer
    ckpt = checkpoints.load(t.resume) if t.resume else None
    if ckpt is not None:
        checkpoint.check_resumable(cfg, ckpt, parts.data.spec, per_step_schedule=parts.schedule.per_step,
                                   fingerprint=parts.data.fingerprint)
    previous = own_run_dir(t.resume, ckpt.get("run_id")) if ckpt is not None else None
    if previous is None or previous.resolve() != out_dir.resolve():
        RunDir(out_dir, key="hydra.sweep.dir").refuse_taken()
    history = earlier_epochs(previous, ckpt) if ckpt is not None else []
    return MemberDir(out_dir, ckpt, history)


def initial_weights(member: MemberDir, parts: Parts) -> None:
    """A fresh member's `trainer.init_from` (a continued one has its checkpoint's weights); nothing is written."""
    if member.ckpt is None and parts.cfg.trainer.init_from:
        start_from_weights(parts, parts.cfg.trainer.init_from)


def start(member: MemberDir, parts: Parts) -> None:
    """What a fresh or continued run writes before training: the run dir and split.json."""
    member.path.mkdir(parents=True, exist_ok=True)
    write_atomic(member.path / SPLIT, parts.data.split.record(parts.cfg.data))


def engine(member: MemberDir, parts: Parts, callbacks: Sequence[Callback] = ()) -> Engine:
    """The member's engine with the callbacks a run gets (early stopping, the checkpointer, every output,
    then `callbacks`), restored to its checkpoint when it continues one."""
    t = parts.cfg.trainer
    from aetrain.train.engine import NONFINITE

    eng = Engine(parts, [
        EarlyStopping(t.early_stopping_patience or math.inf),  # first: the Checkpointer must know an epoch is the last
        Checkpointer(member.path, every_n_steps=t.checkpoint_every_n_steps, top_k=t.save_top_k),
        *build_outputs(parts.cfg.outputs, member.path, diagnostics=parts.cfg.diagnostics),
        *callbacks,
    ], nonfinite=NONFINITE.get(t.on_nonfinite)(), history=list(member.history))
    if member.ckpt is not None:
        checkpoint.restore(eng, member.ckpt)
        log.info("resuming %s %s", t.resume, eng.where())
    warn_if_code_is_as_wide_as_the_input(parts.cfg.model, parts.data.spec.shape)
    return eng
