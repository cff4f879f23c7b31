"""Callbacks that steer the run: checkpoints (and never of a non-finite model), early stopping, the replica check.

They run on every data-parallel process (the outputs run on rank 0 alone): what they decide is
the same everywhere, and the collectives they take part in are the same on every process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from aetrain.atomic import write_atomic
from aetrain.errors import DivergenceError, WriteError
from aetrain.rundir import BEST, LAST, Status, checkpoint_dir
from aetrain.train import checkpoint
from aetrain.train.engine import Callback, Engine

log = logging.getLogger(__name__)

class Checkpointer(Callback):
    """Writes checkpoints, never of a non-finite model.

    - checkpoints/last.pt after every epoch, every `every_n_steps` optimizer steps if set, and
      when a signal stops the run (mid-epoch: resuming continues from that exact step);
    - checkpoints/best.pt, the same bytes as that last.pt in a file of its own, whenever val/loss improves;
    - with `top_k` > 0, the k best epochs as epoch=NNN-val_loss=X.pt, files of their own too.

    Each file is written on its own (temp file, fsync, rename), never hard-linked to another: a user who
    rewrites best.pt in place (torch.save of a slimmed copy) must not change last.pt, which a resume reads.
    The second write costs the checkpoint's bytes once more on the background thread, in epochs that improve
    (README "What a checkpoint holds" has the numbers).

    The state is serialized on the training thread (a consistent snapshot) and written to disk
    on a background thread while training goes on: the fsync of a large model takes long. One
    write is in flight at a time, in order. A write that failed (a full disk, a file size limit)
    stops the run at the next optimizer step with a WriteError naming the file and what is on
    disk, and the engine's best epoch is put back to the one best.pt holds, so the summary and the
    final table describe the checkpoints that exist. The run ends only once its last checkpoint
    is on disk.

    Data-parallel: every process takes part in a save (the non-finite verdict, the replica check,
    each process's RNG and running means go into the checkpoint); only the process with
    `writes` (rank 0) serializes and writes. A run stopped by a signal waits, on every process,
    until last.pt is on disk, so that no process ends (and makes a launcher stop the others) first.
    """

    def __init__(self, run_dir: Path, *, every_n_steps: int | None = None, top_k: int = 0, writes: bool = True) -> None:
        self.dir = checkpoint_dir(run_dir)
        self.every_n_steps = every_n_steps or math.inf
        self.top_k = top_k
        self.writes = writes  # False on the data-parallel processes other than rank 0
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aetrain-checkpoint")
        self.pending: Future[None] | None = None
        self.latest: Future[None] | None = None  # the newest write, waited for or not
        self.on_disk: dict[str, Point] = {}  # LAST / BEST -> the point each file holds, once written

    def on_fit_start(self, engine: Engine) -> None:
        st = engine.state
        if st.epoch or st.step:  # resumed: what the run dir's checkpoints hold
            self.on_disk = {LAST: Point(st.epoch, st.step, math.nan, st.step_in_epoch == 0)}
            if st.best_epoch:
                self.on_disk[BEST] = Point(st.best_epoch, -1, st.best_val_loss, True)

    def save_last(self, engine: Engine, snapshots: Sequence[Path] = ()) -> None:
        """Write last.pt (and then `snapshots` of it) from the state the engine is in now."""
        engine.train_metrics()  # mid-epoch: applies the non-finite policy first, so a diverged step is never saved
        if checkpoint.nonfinite_parameters(engine.parts.model):
            raise DivergenceError(f"the model's weights are not finite at step {engine.state.step}; nothing was "
                                  "saved (last.pt and best.pt hold the last finite model): lower optimizer.lr or "
                                  "set trainer.gradient_clip_val")
        world = engine.world
        world.check_replicas(engine.parts.model, engine.state.step)  # never save a model the processes disagree on
        ranks = world.per_rank(lambda: checkpoint.rank_state(engine))  # None for a single process
        if not self.writes:
            return
        data = checkpoint.serialize(checkpoint.payload(engine, ranks))
        self.wait(engine)
        st = engine.state
        boundary = st.step_in_epoch == 0
        point = Point(st.epoch, st.step, engine.history[-1]["val/loss"] if engine.history and boundary else math.nan,
                      boundary)
        self.pending = self.latest = self.writer.submit(self._write, data, list(snapshots), point)

    def _write(self, data: bytes, snapshots: list[Path], point: Point) -> None:
        last = self.dir / LAST
        what = (f" (the checkpoint of epoch {point.epoch})" if point.boundary
                else f" (the checkpoint of step {point.step})")
        try:
            write_atomic(last, data, durable=True)
            self.on_disk[LAST] = point
            for path in snapshots:  # files of their own, not links: rewriting one in place never changes another
                write_atomic(path, data, durable=True)
                if path.name == BEST:
                    self.on_disk[BEST] = point
            if self.top_k:
                ranked = sorted(self.dir.glob("epoch=*-val_loss=*.pt"), key=lambda p: (_val_loss(p), p.name))
                for extra in ranked[self.top_k :]:
                    extra.unlink()
        except OSError as e:
            raise WriteError.of(e, what) from None

    def wait(self, engine: Engine) -> None:
        """Until the write in flight is on disk; a WriteError if it failed (see the class docstring)."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        try:
            pending.result()
        except WriteError as e:
            st = engine.state
            last, best = self.on_disk.get(LAST), self.on_disk.get(BEST)
            if last is None:
                on_disk = "no checkpoint reached disk"
            else:
                on_disk = f"last.pt holds epoch {last.epoch}" if last.boundary else \
                    f"last.pt holds step {last.step} (in epoch {last.epoch + 1})"
                on_disk += f", best.pt epoch {best.epoch}" if best is not None else ""
            # the best that exists, for summary.json and the final table
            st.best_epoch, st.best_val_loss = (best.epoch, best.val_loss) if best is not None else (0, math.inf)
            raise WriteError(f"{e}; the run stopped {engine.where()}; {on_disk}") from None

    def on_step(self, engine: Engine) -> None:
        if self.pending is not None and self.pending.done():
            self.wait(engine)  # a failed write stops the run here, one step after it failed, not at the next save
        if engine.state.step % self.every_n_steps == 0:
            self.save_last(engine)

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        snapshots = [self.dir / BEST] if record["improved"] else []
        if self.top_k and math.isfinite(record["val/loss"]):
            snapshots.append(self.dir / f"epoch={record['epoch']:03d}-val_loss={record['val/loss']:.6g}.pt")
        self.save_last(engine, snapshots)
        if engine.state.epoch >= engine.parts.cfg.trainer.max_epochs or engine.stop_reason is not None:
            self.wait(engine)  # the last epoch: the run may only end well once its checkpoint is on disk

    def on_fit_end(self, engine: Engine) -> None:
        try:
            if engine.status is Status.INTERRUPTED:
                self.save_last(engine)
            self.wait(engine)
        except WriteError as e:
            if engine.status.is_result:
                raise
            # the run is already failing with its own error: report this one without hiding that
            log.error("%s", e)
        finally:
            self.writer.shutdown(wait=True)
            if engine.status is Status.INTERRUPTED:
                engine.world.barrier()  # last.pt is on disk before any process ends


    def on_abort(self, engine: Engine) -> None:
        """A second Ctrl-C: no new checkpoint; the write in flight is let finish (the process would wait for it on
        its way out anyway), so that what last.pt holds is settled before summary.json describes it. A failed write
        leaves the previous last.pt, which is complete."""
        self.pending = None
        if self.latest is not None:  # also one whose wait the Ctrl-C cut short
            try:
                self.latest.result()
            except WriteError:
                pass
        self.writer.shutdown(wait=False)


class Point(NamedTuple):
    """The point of the run a checkpoint holds."""

    epoch: int  # epochs completed
    step: int  # optimizer steps taken
    val_loss: float  # that epoch's val/loss (NaN mid-epoch)
    boundary: bool  # at an epoch's end


def _val_loss(path: Path) -> float:
    return float(path.stem.rpartition("val_loss=")[2])


class EarlyStopping(Callback):
    """Stop when val/loss has not improved for `patience` epochs (math.inf = never).

    It only says why (engine.stop_reason); the run then ends after this epoch with status
    stopped_early, and the console and summary.json report the reason."""

    def __init__(self, patience: float) -> None:
        self.patience = patience

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        st = engine.state
        if st.bad_epochs >= self.patience:
            engine.stop_reason = (f"early stopping: no val/loss improvement for {st.bad_epochs} "
                                  f"epoch{'' if st.bad_epochs == 1 else 's'} "
                                  f"(trainer.early_stopping_patience={self.patience}); best {st.best_val_loss:.6g} "
                                  f"at epoch {st.best_epoch}")


class ReplicaCheck(Callback):
    """Data-parallel: every `every_n_steps` optimizer steps, check that every process holds the same
    weights and buffers (`World.check_replicas`); the checkpointer checks before every save too."""

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = every_n_steps

    def on_step(self, engine: Engine) -> None:
        if engine.state.step % self.every_n_steps == 0:
            engine.world.check_replicas(engine.parts.model, engine.state.step)
