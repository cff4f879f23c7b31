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
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from aetrain import checkpoint as checkpoints
from aetrain.atomic import write_atomic
from aetrain.config import Config, ModelConfig, validate
from aetrain.data import build_data
from aetrain.errors import CheckpointError, ConfigError, Interrupted, WriteError
from aetrain.models import FAMILIES
from aetrain.rundir import (CHECKPOINTS, HYDRA, LAST, METRICS, SPLIT, SUMMARY, RunDirTaken, checkpoint_dir,
                             own_run_dir, read_metrics)
from aetrain.train import checkpoint
from aetrain.train.callbacks import Checkpointer, EarlyStopping
from aetrain.train.engine import NONFINITE, Callback, Engine, Parts, accumulation_windows
from aetrain.train.graphs import COMPILE_MODES, build_step, graphs_policy
from aetrain.train.memory import check_fits
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
    graphs_policy(t.cuda_graphs), COMPILE_MODES.get(t.compile_mode)  # names checked before the data loads
    device = resolve_device(t.device)
    family = FAMILIES.get(cfg.model.name)
    seed_everything(t.seed, t.deterministic)
    data = build_data(cfg.data, device, seed=t.seed, channels_last=t.channels_last)
    check_fits(cfg, family, data.spec, device, batch_size=max(data.train.plan.sizes))  # before building it
    model = family.build(cfg.model, data.spec).to(device, memory_format=data.memory_format)
    objective, val_objective = (o.to(device) for o in family.objectives(cfg.model, data.spec))
    precision = Precision(t.precision, device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    windows = accumulation_windows(data.train.plan.sizes, t.accumulate_grad_batches)
    schedule = build_schedule(cfg.scheduler, optimizer, total_steps=len(windows) * t.max_epochs)
    net = torch.compile(model, mode=t.compile_mode) if t.compile else model  # compiled lazily, at the first batch
    step = TrainStep(net, objective, optimizer, precision, build_clip(t.gradient_clip_val, t.gradient_clip_algorithm),
                     trainable(model.parameters()), admit=ADMIT.get(t.on_nonfinite))
    step = build_step(cfg, step, device, data.train.plan.sizes)  # captured in a CUDA graph when it can be
    return Parts(cfg, model, net, objective, val_objective, optimizer, schedule, precision, step, data, windows,
                 family.galleries)


def _warn_if_code_is_as_wide_as_the_input(model: ModelConfig, shape: tuple[int, ...]) -> None:
    """An autoencoder whose code is as wide as its input can learn to copy it: a low reconstruction loss then
    says nothing of what the code captured. Not said of families that constrain the code (input noise, a
    sparsity penalty, a KL term), where a wide, overcomplete code is a design choice."""
    size = math.prod(shape)
    constrained = any(level > 0 for level in (getattr(getattr(model, "noise", None), "level", 0.0),
                                              getattr(getattr(model, "sparsity", None), "weight", 0.0),
                                              getattr(model, "beta", 0.0)))
    if model.latent_dim >= size and not constrained:
        log.warning("model.latent_dim=%d is %s the input (%d values a sample): the model can learn to copy its input, "
                    "so a low reconstruction loss says little; choose a narrower code", model.latent_dim,
                    "as wide as" if model.latent_dim == size else "wider than", size)


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
        checkpoint.check_resumable(cfg, ckpt, parts.data.spec, per_step_schedule=parts.schedule.per_step,
                                   fingerprint=parts.data.fingerprint)
    previous = own_run_dir(t.resume, ckpt.get("run_id")) if ckpt is not None else None
    in_place = previous is not None and previous.resolve() == out_dir.resolve()
    if not in_place:
        _refuse_existing_run(out_dir)
    if ckpt is not None and previous is None:
        log.info("%s is not in the run dir it was written in: continuing it in %s without its earlier epochs' "
                 "metrics; the folder it is kept in is left alone", t.resume, out_dir)
    history = _earlier_epochs(previous, ckpt) if ckpt is not None else []
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / SPLIT, parts.data.split.record(cfg.data))  # which samples validate: for the commands after

    engine = Engine(parts, [
        EarlyStopping(t.early_stopping_patience or math.inf),  # first: the Checkpointer must know an epoch is the last
        Checkpointer(out_dir, every_n_steps=t.checkpoint_every_n_steps, top_k=t.save_top_k),
        *build_outputs(cfg.outputs, out_dir),  # metrics.csv, console, pictures, tensorboard, summary.json
        *callbacks,
    ], nonfinite=NONFINITE.get(t.on_nonfinite)(), history=history)
    if ckpt is not None:
        checkpoint.restore(engine, ckpt)
        log.info("resuming %s %s", t.resume, engine.where())  # the words of the interrupt that stopped it
    elif t.init_from:  # weights only: the optimizer, schedule and counters were built fresh
        source = checkpoint.init_weights(parts.model, parts.data.spec, t.init_from)
        st = source.get("state") if isinstance(source.get("state"), dict) else {}
        log.info("starting from the weights of %s (%s); optimizer, schedule and counters start fresh", source["path"],
                 f"after epoch {st['epoch']} of its run" if isinstance(st.get("epoch"), int) else "its run's epoch unknown")
    _warn_if_code_is_as_wide_as_the_input(cfg.model, parts.data.spec.shape)  # once the run is known to go ahead
    try:
        with engine.interrupt.installed(), long_lived_objects_frozen():
            try:
                state = engine.fit()
            except Interrupted as e:
                last = checkpoint_dir(out_dir) / LAST
                raise Interrupted(f"{e}; saved {last}; resume with: aetrain {shlex.quote(f'trainer.resume={out_dir}')}",
                                  engine.interrupt.signum) from None
            except OSError as e:  # an output could not be written: a full disk, a read-only dir
                raise WriteError.of(e, f"; the run stopped {engine.where()}") from None
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
    """A fresh run (or a continuation into another dir) never writes over what a run left in `out_dir`."""
    ckpts = checkpoint_dir(out_dir)
    found = [name for name in (METRICS, SUMMARY, f"{HYDRA}/config.yaml") if (out_dir / name).exists()]
    found += [f"{CHECKPOINTS}/{p.name}" for p in sorted(ckpts.iterdir())[:1]] if ckpts.is_dir() else []
    if found:
        raise RunDirTaken(f"hydra.run.dir={out_dir} already holds a run ({found[0]}); continue it with "
                          f"trainer.resume={out_dir} or choose another hydra.run.dir")
