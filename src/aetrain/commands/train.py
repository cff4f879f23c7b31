"""`aetrain train`: turn a validated config into objects, train into a run dir, return the results.

Everything that can fail on user input (config ranges, device, data, model/data fit) is checked
before the first file is written, so a bad command leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from aetrain import checkpoint as checkpoints
from aetrain.config import Config, validate
from aetrain.data import build_data
from aetrain.errors import CheckpointError, ConfigError, Interrupted
from aetrain.models import FAMILIES
from aetrain.rundir import LAST, METRICS, checkpoint_dir, read_metrics, run_dir_of
from aetrain.train import checkpoint
from aetrain.train.callbacks import Checkpointer, EarlyStopping
from aetrain.train.diagnostics import build_probe
from aetrain.train.engine import NONFINITE, Callback, Engine, Parts, accumulation_windows
from aetrain.train.optim import build_optimizer, build_schedule
from aetrain.train.outputs import build_outputs
from aetrain.train.outputs.console import final_table
from aetrain.train.precision import Precision, build_clip, trainable
from aetrain.train.step import ADMIT, TrainStep

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N | mps -> a device this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device={name!r} is not one of: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={name}: CUDA is not available on this machine "
                              f"(torch {torch.__version__}); use trainer.device=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"trainer.device={name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"trainer.device={name}: MPS is not available on this machine; use cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"trainer.device={name!r} is not one of: auto, cpu, cuda, cuda:N, mps")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA too
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for repeatable sums
    if deterministic or torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(deterministic)  # imports torch._inductor (~3 s): only when it changes


def build_parts(cfg: Config) -> Parts:
    """Every component of a run, on its device, freshly initialised from cfg.trainer.seed."""
    validate(cfg)
    t = cfg.trainer
    device = resolve_device(t.device)
    family = FAMILIES.get(cfg.model.name)
    seed_everything(t.seed, t.deterministic)
    data = build_data(cfg.data, device, seed=t.seed, channels_last=t.channels_last)
    model = family.build(cfg.model, data.spec).to(device, memory_format=data.memory_format)
    objective, val_objective = (o.to(device) for o in family.objectives(cfg.model, data.spec))
    precision = Precision(t.precision, device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    windows = accumulation_windows(data.train.plan.sizes, t.accumulate_grad_batches)
    schedule = build_schedule(cfg.scheduler, optimizer, total_steps=len(windows) * t.max_epochs)
    net = torch.compile(model) if t.compile else model  # compiled lazily, at the first batch
    probe = build_probe(cfg.diagnostics, model, latent_dim=cfg.model.latent_dim)  # a no-op probe when off
    step = TrainStep(net, objective, optimizer, precision, build_clip(t.gradient_clip_val, t.gradient_clip_algorithm),
                     trainable(model.parameters()), admit=ADMIT.get(t.on_nonfinite), probe=probe)
    return Parts(cfg, model, net, objective, val_objective, optimizer, schedule, precision, step, data, windows,
                 family.galleries)


def run(cfg: Config, out_dir: Path, *, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Train one model into `out_dir`; returns the summary numbers (best val loss first).

    With cfg.trainer.resume set, training continues from that checkpoint exactly where it was
    written. `callbacks` run after aetrain's own; their on_fit_start fires once the run is
    known to be valid. A signal stops the run with `Interrupted` after saving last.pt.
    """
    parts = build_parts(cfg)
    t = cfg.trainer
    ckpt = checkpoints.load(t.resume) if t.resume else None
    if ckpt is not None:
        checkpoint.check_resumable(cfg, ckpt, parts.data.spec, per_step_schedule=parts.schedule.per_step)
    previous = run_dir_of(t.resume) if t.resume else None
    in_place = previous is not None and previous.resolve() == out_dir.resolve()
    if not in_place:
        _refuse_existing_run(out_dir)
    history = _earlier_epochs(previous, ckpt) if ckpt is not None else []
    out_dir.mkdir(parents=True, exist_ok=True)

    engine = Engine(parts, [
        Checkpointer(out_dir, every_n_steps=t.checkpoint_every_n_steps, top_k=t.save_top_k),
        EarlyStopping(t.early_stopping_patience or math.inf),
        *build_outputs(cfg.outputs, out_dir, diagnostics=cfg.diagnostics),  # metrics.csv, console, pictures,
        # tensorboard, diagnostics.csv, summary.json
        *callbacks,
    ], nonfinite=NONFINITE.get(t.on_nonfinite)(), history=history)
    if ckpt is not None:
        checkpoint.restore(engine, ckpt)
        st = engine.state
        log.info("resuming %s after epoch %d%s, step %d of the run", t.resume, st.epoch,
                 f" and {st.step_in_epoch} steps into epoch {st.epoch + 1}" if st.step_in_epoch else "", st.step)
    try:
        with engine.interrupt.installed(), long_lived_objects_frozen():
            try:
                state = engine.fit()
            except Interrupted as e:
                last = checkpoint_dir(out_dir) / LAST
                raise Interrupted(f"{e}; saved {last}; resume with: aetrain trainer.resume={out_dir}",
                                  engine.interrupt.signum) from None
    finally:
        for line in final_table(out_dir):
            log.info("%s", line)
    return {"best_val_loss": state.best_val_loss, "best_epoch": state.best_epoch, "epochs": state.epoch,
            "steps": state.step}


def _earlier_epochs(previous: Path | None, ckpt: dict) -> list[dict]:
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


def _refuse_existing_run(out_dir: Path) -> None:
    for name in (METRICS, f"checkpoints/{LAST}"):
        if (out_dir / name).exists():
            raise ConfigError(f"hydra.run.dir={out_dir} already holds a run ({name}); continue it with "
                              f"trainer.resume={out_dir} or choose another hydra.run.dir")
