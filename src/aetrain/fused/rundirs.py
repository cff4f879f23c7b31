"""A fused member's run dir: the one interface between the fused group and the files of a run's directory.

Everything `aetrain.commands.train.run` does to a run dir around its engine, for one member: the
checks before anything is written (a resume's checkpoint, a dir that already holds a run), the
claim on the dir while training, split.json, `trainer.init_from`, the callbacks a run gets, its
restored state, and the final table. `aetrain.fused.group` calls nothing else about run dirs,
so that this module alone changes when run dirs get a lifecycle object of their own.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aetrain import checkpoint as checkpoints
from aetrain.atomic import write_atomic
from aetrain.config import Config
from aetrain.rundir import (CHECKPOINTS, DIAGNOSTICS, HYDRA, LAST, LOSS_CURVE, METRICS, RECONSTRUCTIONS, SPLIT, SUMMARY,
                            TENSORBOARD, checkpoint_dir, claimed, own_run_dir, read_summary)
from aetrain.train import checkpoint
from aetrain.train.callbacks import Checkpointer, EarlyStopping
from aetrain.train.engine import Callback, Engine, Parts
from aetrain.train.outputs import build_outputs
from aetrain.train.outputs.console import final_table
from aetrain.commands.train import _earlier_epochs, _refuse_existing_run, _warn_if_code_is_as_wide_as_the_input

log = logging.getLogger(__name__)

ENDED = ("ok", "stopped_early")  # a member whose summary says so has nothing left to train


@dataclass
class MemberDir:
    """A member's run dir as training found it."""

    path: Path
    ckpt: dict[str, Any] | None = None  # the checkpoint it continues from (a resume), else None
    history: list[dict[str, Any]] = field(default_factory=list)  # the epochs before that checkpoint


def finished(run_dir: Path) -> bool:
    """Whether the run in `run_dir` ended as a result (ok, stopped early): a resume has nothing to train there."""
    summary = read_summary(run_dir)
    return summary.get("status") == "ok" and summary.get("ended", "ok") in ENDED


def resumable(run_dir: Path) -> bool:
    """Whether `run_dir` holds a checkpoint to continue from."""
    return (checkpoint_dir(run_dir) / LAST).is_file()


def prepare_resume(run_dir: Path) -> str:
    """What a resumed sweep does with the job in `run_dir`: "finished" (kept), "continue" (from its last.pt), or
    "start" (from the beginning; what an attempt without a checkpoint left is cleared first, see `start_over`)."""
    if finished(run_dir):
        return "finished"
    if resumable(run_dir):
        return "continue"
    cleared = start_over(run_dir)
    if cleared:
        log.info("%s: no last.pt to continue from (its process ended in its first epoch, or it failed): starts "
                 "again (cleared %s; train.log kept)", run_dir, ", ".join(cleared))
    return "start"


# what a run writes into its dir before its first last.pt (train.log aside): `start_over` clears it
FIRST_EPOCH_FILES = (SUMMARY, METRICS, DIAGNOSTICS, SPLIT, LOSS_CURVE, HYDRA, CHECKPOINTS, TENSORBOARD, RECONSTRUCTIONS)


def start_over(run_dir: Path) -> list[str]:
    """Before a resumed sweep trains a job again from its start in `run_dir` (not finished, no last.pt: its
    process was killed in its first epoch, or it failed): clear what that attempt wrote, so the job is not
    refused as a dir that holds a run. The attempt never saved a checkpoint, so it holds no epoch's results;
    its train.log stays (the new attempt's lines follow). Done under the dir's claim: a dir a live process
    trains into is refused (RunDirInUse), never cleared. Returns the names cleared."""
    if not run_dir.is_dir():
        return []
    with claimed(run_dir):
        cleared = [name for name in FIRST_EPOCH_FILES if (run_dir / name).exists()]
        for name in cleared:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    return cleared


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
        _refuse_existing_run(out_dir)
    history = _earlier_epochs(previous, ckpt) if ckpt is not None else []
    return MemberDir(out_dir, ckpt, history)


@contextmanager
def claim(dirs: Sequence[MemberDir]) -> Iterator[None]:
    """Hold every member's run dir for this process while training (`aetrain.rundir.claimed`)."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        for d in dirs:
            stack.enter_context(claimed(d.path))
        yield


def initial_weights(member: MemberDir, parts: Parts) -> None:
    """A fresh run's `trainer.init_from`: the weights of another run's checkpoint (nothing is written)."""
    cfg = parts.cfg
    if member.ckpt is None and cfg.trainer.init_from:
        source = checkpoint.init_weights(parts.model, parts.data.spec, cfg.trainer.init_from)
        st = source.get("state") if isinstance(source.get("state"), dict) else {}
        log.info("starting from the weights of %s (%s); optimizer, schedule and counters start fresh",
                 source["path"], f"after epoch {st['epoch']} of its run" if isinstance(st.get("epoch"), int)
                 else "its run's epoch unknown")


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
    _warn_if_code_is_as_wide_as_the_input(parts.cfg.model, parts.data.spec.shape)
    return eng


def final_lines(run_dir: Path) -> list[str]:
    """The table a run prints when it ends, from its summary.json."""
    return final_table(run_dir)
