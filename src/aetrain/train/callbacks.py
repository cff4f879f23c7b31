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
from typing import Any

from aetrain.atomic import link_atomic, write_atomic
from aetrain.rundir import BEST, LAST, checkpoint_dir
from aetrain.errors import DivergenceError
from aetrain.train import checkpoint
from aetrain.train.engine import Callback, Engine

log = logging.getLogger(__name__)

class Checkpointer(Callback):
    """Writes checkpoints, never of a non-finite model.

    - checkpoints/last.pt after every epoch, every `every_n_steps` optimizer steps if set, and
      when a signal stops the run (mid-epoch: resuming continues from that exact step);
    - checkpoints/best.pt, a snapshot of last.pt, whenever val/loss improves;
    - with `top_k` > 0, snapshots of the k best epochs as epoch=NNN-val_loss=X.pt.

    The state is serialized on the training thread (a consistent snapshot) and written to disk
    on a background thread while training goes on: the fsync of a large model takes long. One
    write is in flight at a time, in order; the run ends only after the last one is on disk, and
    a write that failed fails the run at the next save or at its end.

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
        self.wait()
        self.pending = self.writer.submit(self._write, data, list(snapshots))

    def _write(self, data: bytes, snapshots: list[Path]) -> None:
        last = self.dir / LAST
        write_atomic(last, data, durable=True)
        for path in snapshots:
            link_atomic(last, path)
        if self.top_k:
            ranked = sorted(self.dir.glob("epoch=*-val_loss=*.pt"), key=lambda p: (_val_loss(p), p.name))
            for extra in ranked[self.top_k :]:
                extra.unlink()

    def wait(self) -> None:
        """Until the write in flight is on disk; raises its error if it failed."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def on_step(self, engine: Engine) -> None:
        if engine.state.step % self.every_n_steps == 0:
            self.save_last(engine)

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        snapshots = [self.dir / BEST] if record["improved"] else []
        if self.top_k and math.isfinite(record["val/loss"]):
            snapshots.append(self.dir / f"epoch={record['epoch']:03d}-val_loss={record['val/loss']:.6g}.pt")
        self.save_last(engine, snapshots)

    def on_fit_end(self, engine: Engine) -> None:
        try:
            if engine.status == "interrupted":
                self.save_last(engine)
            self.wait()
        except OSError as e:
            if engine.status == "ok":
                raise
            # the run is already failing with its own error: report this one without hiding that
            log.error("could not write %s: %s", self.dir / LAST, e)
        finally:
            self.writer.shutdown(wait=True)
            if engine.status == "interrupted":
                engine.world.barrier()  # last.pt is on disk before any process ends


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
            engine.stop_reason = (f"early stopping: no val/loss improvement for {st.bad_epochs} epochs "
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
