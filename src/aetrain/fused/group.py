"""`train_group`: train the jobs of one shape as one fused group, each into its own run dir.

The in-process entry point of fused sweeps (the Hydra launcher `hydra/launcher=fused` calls it
for each group it forms; tests and scripts call it directly). For K configs that
`aetrain.fused.grouping` puts in one group and K run dirs, it does for every member what
`aetrain.commands.train.run` does for a run, by the same functions (`aetrain.train.runs`: the checks
before anything is written, split.json, the callbacks, a resume's restored state; then the run dir's
claim and the final table) and trains them
together with `FusedEngine`. It returns each member's result; a member that failed (diverged, a
checkpoint that could not be written, a resume that does not fit its config) failed alone.

Memory: the group is checked up front against the memory available (`members_that_fit`); a group
that does not fit is split into groups that do before anything is written. A group whose first
step (tried before anything is written, `FusedEngine.trial`) runs out of memory anyway is halved,
and each half trained in turn; one log line says so.

Resume (`resume=True`), by the rule a plain launcher's job follows too (`aetrain.rundir.prepare_resume`):
each member whose run dir holds a finished run is done already (its result is read from its
summary.json); one with a `last.pt` continues from it (as `trainer.resume=<its dir>` would continue it
alone); one without starts again (what an attempt that saved no checkpoint left is cleared first); one a
live process trains in fails alone. Members resumed at different points
(one was continued alone meanwhile) train in groups by their point.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager

import torch

from aetrain import checkpoint as checkpoints
from aetrain.config import Config
from aetrain.errors import AetrainError, Interrupted
from aetrain.fused.build import GroupTooLarge, build_members, is_out_of_memory, uses_member_streams
from aetrain.fused.engine import FusedEngine, Member
from aetrain.fused.grouping import split
from aetrain.fused.net import RngState
from aetrain.rundir import CONTINUE, FINISHED, RunDir, prepare_resume, read_summary
from aetrain.train.engine import Callback
from aetrain.train.graphs import build_step
from aetrain.train.outputs.console import final_table
from aetrain.train.runs import RunStart, build_engine, long_lived_objects_frozen, open_run, start_run
from aetrain.train.signals import Interrupt

log = logging.getLogger(__name__)

Context = Callable[[int], ContextManager[Any]]  # member index -> where its log lines go while it is in scope


@dataclass
class MemberResult:
    """How one member's run ended."""

    run_dir: Path
    status: str  # ok | stopped_early | diverged | failed | interrupted | skipped (already finished, on resume)
    error: BaseException | None = None  # why it failed
    numbers: dict[str, float] = field(default_factory=dict)  # best_val_loss, best_epoch, epochs, steps (run's return)
    group: str = ""  # the group it trained in (after any split: "0", "0.1", ...)

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "stopped_early", "skipped")


def train_group(configs: Sequence[Config], run_dirs: Sequence[Path], *,
                callbacks: Sequence[Sequence[Callback]] | None = None, interrupt: Interrupt | None = None,
                group: str = "0", context: Context | None = None, resume: bool = False) -> list[MemberResult]:
    """Train `configs` (one shape) as one fused group into `run_dirs`; see the module docstring.

    `callbacks[k]`: member k's callbacks after aetrain's own (its on_fit_start fires once it is known to go
    ahead). `interrupt`: the signal handler to train under (None: one installed here). `group`: the group's
    name in each member's summary.json ("group": {"id": ...}). `context`: entered around whatever a
    member does or logs. Raises `Interrupted` after every member saved its last.pt when a signal came."""
    if len(configs) != len(run_dirs):
        raise ValueError("one run dir per config")
    configs = [copy.deepcopy(c) for c in configs]
    callbacks = list(callbacks) if callbacks is not None else [[] for _ in configs]
    context = context or (lambda k: nullcontext())
    results: dict[int, MemberResult] = {}
    todo = list(range(len(configs)))
    if resume:
        todo = []
        kept, continued, again = [], [], []
        for k, (cfg, run_dir) in enumerate(zip(configs, run_dirs)):
            started = run_dir.is_dir()  # (a member that never started just starts: nothing to say)
            try:
                with context(k):  # (the launcher lays the members out in the sweep's dir: the dir above theirs)
                    what = prepare_resume(run_dir.parent, run_dir)
            except AetrainError as e:  # a live process trains there: this member fails alone
                results[k] = _failed(run_dir, e, group, context(k))
                continue
            if what == FINISHED:
                results[k] = _skipped(run_dir, group)
                kept.append(run_dir.name)
                with context(k):
                    log.info("%s already finished: nothing to resume", run_dir)
            else:
                cfg.trainer.resume = str(run_dir) if what == CONTINUE else None
                (continued if what == CONTINUE else again if started else []).append(run_dir.name)
                todo.append(k)
        if kept:
            log.info("fused group %s: %s finished before: kept", group, ", ".join(kept))
        if continued:
            log.info("fused group %s: %s continue from their last.pt", group, ", ".join(continued))
        if again:
            log.info("fused group %s: %s start again from the beginning (no last.pt)", group, ", ".join(again))
    points = _by_point(configs, todo)
    for i, point in enumerate(points):
        name = group if len(points) == 1 else f"{group}.{i}"
        for k, result in zip(point, _train(configs, run_dirs, callbacks, point, name, interrupt, context)):
            results[k] = result
    return [results[k] for k in range(len(configs))]


def _by_point(configs: Sequence[Config], todo: list[int]) -> list[list[int]]:
    """`todo` in groups of members at the same point (epoch and step within it): a group trains in lockstep."""
    points: dict[tuple[int, int], list[int]] = {}
    for k in todo:
        where = (0, 0)
        if configs[k].trainer.resume:
            try:
                state = checkpoints.load(configs[k].trainer.resume).get("state")
            except AetrainError:  # unreadable: alone, where opening its run dir fails with the reason
                state = {"epoch": -1 - k}
            if isinstance(state, dict):
                where = (state.get("epoch", 0), state.get("step_in_epoch", 0))
        points.setdefault(where, []).append(k)
    return list(points.values())


def _train(configs: Sequence[Config], run_dirs: Sequence[Path], callbacks: Sequence[Sequence[Callback]],
           members: list[int], group: str, interrupt: Interrupt | None, context: Context) -> list[MemberResult]:
    """Train `members` (indices) as one group, or split, on memory, into groups trained in turn."""
    if not members:
        return []
    try:
        return _train_one(configs, run_dirs, callbacks, members, group, interrupt, context)
    except GroupTooLarge as e:
        chunks = split(members, e.fits)
        log.warning("a group of %d does not fit in the memory available: training it as %d groups of at most %d",
                    len(members), len(chunks), e.fits)
    except _OutOfMemory as e:
        if len(members) == 1:
            raise e.error from None
        chunks = split(members, math.ceil(len(members) / 2))
        log.warning("a group of %d ran out of memory in its first step (%s): halving it", len(members),
                    str(e.error).splitlines()[0] if str(e.error) else type(e.error).__name__)
        _free()
    out = []
    for i, chunk in enumerate(chunks):
        out += _train(configs, run_dirs, callbacks, chunk, f"{group}.{i}", interrupt, context)
    return out


class _OutOfMemory(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _train_one(configs: Sequence[Config], run_dirs: Sequence[Path], callbacks: Sequence[Sequence[Callback]],
               members: list[int], group: str, interrupt: Interrupt | None, context: Context) -> list[MemberResult]:
    try:
        built = build_members([configs[k] for k in members])  # GroupTooLarge when it cannot fit
    except Exception as e:
        if is_out_of_memory(e):
            raise _OutOfMemory(e) from None
        raise
    results: dict[int, MemberResult] = {}
    opened: dict[int, RunStart] = {}
    for k, parts in zip(members, built.parts):
        try:
            with context(k):  # the checks a run makes (and its trainer.init_from), before anything is written
                opened[k] = open_run(configs[k], run_dirs[k], parts, key="hydra.sweep.dir")
        except AetrainError as e:  # its resume, run dir or init_from: it fails alone, before anything is written
            results[k] = _failed(run_dirs[k], e, group, context(k))
    interrupt = interrupt or Interrupt()
    with ExitStack() as stack:
        for k in list(opened):
            try:
                stack.enter_context(RunDir(opened[k].path, key="hydra.sweep.dir").claimed())
            except AetrainError as e:  # another process holds the dir
                results[k] = _failed(run_dirs[k], e, group, context(k))
                del opened[k]
        going = [k for k in members if k in opened]
        if not going:
            return [results[k] for k in members]
        parts_of = dict(zip(members, built.parts))
        rng_of = dict(zip(members, built.rngs))
        group_members = []
        for k in going:
            try:
                with context(k):  # the callbacks a run gets, then the member's own
                    engine = build_engine(opened[k], parts_of[k], callbacks[k])
            except AetrainError as e:  # a checkpoint that cannot be restored: alone
                results[k] = _failed(run_dirs[k], e, group, context(k))
                continue
            engine.interrupt = interrupt  # a member asking to stop (a callback, as the signal handler does) stops all
            rng = RngState.current(built.data.device) if opened[k].ckpt is not None else rng_of[k]  # restored
            group_members.append(Member(k, engine, parts_of[k].step, rng))
        if not group_members:
            return [results[k] for k in members]
        going = [m.index for m in group_members]
        first = parts_of[going[0]]
        reason = uses_member_streams([parts_of[k] for k in going])
        fused = FusedEngine(
            group_members, built.data, autocast=built.precision.autocast, interrupt=interrupt,
            context=lambda m: context(m.index),
            wrap_step=lambda step: build_step(first.cfg, step, built.data.device, first.data.train.plan.sizes,
                                              eager_only=reason),
            notes=lambda m: {"group": {"id": group}}, name=group, labels=[d.name for d in run_dirs])
        try:
            fused.trial()
        except Exception as e:
            if is_out_of_memory(e):
                raise _OutOfMemory(e) from None
            raise
        for m in group_members:
            with context(m.index):
                start_run(opened[m.index], m.engine.parts)
        log.info("fused group %s: %d members train as one (%s on %s): %s", group, len(group_members),
                 first.cfg.model.name, first.data.spec.name, ", ".join(run_dirs[m.index].name for m in group_members))
        with interrupt.installed(), long_lived_objects_frozen():
            try:
                fused.fit()
            except Interrupted as e:
                saved = [str(opened[m.index].path) for m in group_members if m.engine.status == "interrupted"]
                raise Interrupted(f"{e}; saved last.pt of {len(saved)} member(s) ({', '.join(saved)})",
                                  e.exit_code - 128) from None
            finally:  # (the interrupt is not ended: a signal now still asks a sweep to stop, below)
                for m in group_members:
                    with context(m.index):
                        for line in final_table(opened[m.index].path):
                            log.info("%s", line)
        if interrupt.requested:  # a signal after the last step (the members' last epoch end, their tables)
            raise Interrupted(f"interrupted by {interrupt.name} as fused group {group} ended (its members had "
                              f"finished)", interrupt.signum or 0)
        for m in group_members:
            st = m.engine.state
            results[m.index] = MemberResult(
                opened[m.index].path, m.engine.status, m.error,
                {"best_val_loss": st.best_val_loss, "best_epoch": st.best_epoch, "epochs": st.epoch, "steps": st.step},
                group)
    return [results[k] for k in members]


def _failed(run_dir: Path, error: BaseException, group: str, scope: ContextManager[Any]) -> MemberResult:
    with scope:
        log.error("%s: %s", type(error).__name__, error)
    return MemberResult(run_dir, "failed", error, {}, group)


def _skipped(run_dir: Path, group: str) -> MemberResult:
    s = read_summary(run_dir)
    best = s.get("best_val_loss")
    numbers = {"best_val_loss": best if isinstance(best, (int, float)) else math.inf,
               "best_epoch": s.get("best_epoch") or 0, "epochs": s.get("epochs") or 0, "steps": s.get("steps") or 0}
    return MemberResult(run_dir, "skipped", None, numbers, group)
