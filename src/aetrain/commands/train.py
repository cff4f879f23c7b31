"""`aetrain train`: turn a validated config into objects, train into a run dir, return the results.

Everything that can fail on user input (config ranges, device, data, model/data fit) is checked
before the first file is written, so a bad command leaves nothing behind.

Data-parallel (`world`, from `aetrain.train.distributed`): every process builds the same parts
and trains its share of each batch; a set-up error on any process stops all of them with one
line; only rank 0 (`world.is_main`) gets the outputs and writes the run dir.
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
from aetrain.errors import CheckpointError, ConfigError, Interrupted, ProcessLost, WriteError
from aetrain.models import FAMILIES
from aetrain.rundir import (CHECKPOINTS, HYDRA, LAST, METRICS, SPLIT, SUMMARY, RunDirTaken, checkpoint_dir,
                             own_run_dir, read_metrics)
from aetrain.train import checkpoint
from aetrain.train.callbacks import Checkpointer, EarlyStopping, ReplicaCheck
from aetrain.train.distributed import World
from aetrain.train.diagnostics import build_probe
from aetrain.train.engine import NONFINITE, Callback, Engine, Parts, accumulation_windows
from aetrain.train.graphs import COMPILE_MODES, build_step, graphs_policy
from aetrain.train.memory import check_fits
from aetrain.train.optim import build_optimizer, build_schedule
from aetrain.train.outputs import build_outputs
from aetrain.train.outputs.console import final_table
from aetrain.train.precision import Precision, build_clip, trainable
from aetrain.train.signals import Interrupt
from aetrain.train.step import ADMIT, GradientProbe, TrainStep
from aetrain.train.threads import set_num_threads

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


def build_parts(cfg: Config, world: World | None = None) -> Parts:
    """Every component of a run, on its device, freshly initialised from cfg.trainer.seed.

    `world`: the data-parallel processes this one belongs to (None: this process alone). Each
    builds the same model; the data is split between them, the training network is wrapped in
    DistributedDataParallel (the one place it is, `world.wrap`) and batch norm synchronized."""
    world = world or World()
    t = cfg.trainer
    with world.agreement():  # a process that cannot set up stops every process, with its reason
        validate(cfg)
        graphs_policy(t.cuda_graphs), COMPILE_MODES.get(t.compile_mode)  # names checked before the data loads
        device = world.device(resolve_device(t.device))
        set_num_threads(t.num_threads)
        world.check_config(cfg, device)
        family = FAMILIES.get(cfg.model.name)
        seed_everything(t.seed, t.deterministic)
        with world.main_first():  # rank 0 downloads, the others then read its files
            data = build_data(cfg.data, device, seed=t.seed, channels_last=t.channels_last, rank=world.rank,
                              world_size=world.size)
        check_fits(cfg, family, data.spec, device, batch_size=max(data.train.plan.sizes))  # before building it
        model = family.build(cfg.model, data.spec).to(device, memory_format=data.memory_format)
        objective, val_objective = (o.to(device) for o in family.objectives(cfg.model, data.spec))
    model = world.prepare(model)  # SyncBatchNorm under DDP: the same state dict, so checkpoints load anywhere
    precision = Precision(t.precision, device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    plan = data.train.plan
    windows = accumulation_windows(plan.sizes, t.accumulate_grad_batches, global_sizes=plan.global_sizes,
                                   world_size=world.size)
    schedule = build_schedule(cfg.scheduler, optimizer, total_steps=len(windows) * t.max_epochs)
    net = torch.compile(model, mode=t.compile_mode) if t.compile else model  # compiled lazily, at the first batch
    train_net = world.wrap(net)  # DDP: gradients averaged across processes in the backward pass
    # the training doctor's per-layer sampling (a no-op probe when off), on the process that writes diagnostics.csv
    probe = build_probe(cfg.diagnostics, model, latent_dim=cfg.model.latent_dim, steps_per_epoch=len(windows)) \
        if world.is_main else GradientProbe()
    step = TrainStep(train_net, objective, optimizer, precision,
                     build_clip(t.gradient_clip_val, t.gradient_clip_algorithm), trainable(model.parameters()),
                     admit=ADMIT.get(t.on_nonfinite), accumulating=world.accumulating(train_net), probe=probe)
    step = build_step(cfg, step, device, plan.sizes, eager_only=world.eager_only())  # a CUDA graph when it can be
    world.seed(t.seed)  # each process its own noise and dropout from here; rank 0 keeps the single process's
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


def run(cfg: Config, out_dir: Path, *, callbacks: Sequence[Callback] = (), world: World | None = None,
        interrupt: Interrupt | None = None) -> dict[str, float]:
    """Train one model into `out_dir`; returns the summary numbers (best val loss first).

    With cfg.trainer.resume set, training continues from that checkpoint exactly where it was
    written. `callbacks` run after aetrain's own, on the process that writes the run dir (rank 0
    of a data-parallel run); their on_fit_start fires once the run is known to be valid. A signal
    stops the run with `Interrupted` after saving last.pt. `world`: the data-parallel processes
    (None: this process alone); every one of them calls `run` with the same arguments.
    `interrupt`: the signal handler to train under (a launched process installs its own from the
    start, so that a signal during set-up counts too); None = one installed for the run.
    """
    world = world or World()
    parts = build_parts(cfg, world)
    t = cfg.trainer
    with world.agreement():
        ckpt = checkpoints.load(t.resume) if t.resume else None
        if ckpt is not None:
            checkpoint.check_resumable(cfg, ckpt, parts.data.spec, per_step_schedule=parts.schedule.per_step,
                                       fingerprint=parts.data.fingerprint, world_size=world.size)
        previous = own_run_dir(t.resume, ckpt.get("run_id")) if ckpt is not None else None
        in_place = previous is not None and previous.resolve() == out_dir.resolve()
        if not in_place:
            _refuse_existing_run(out_dir)
        history = _earlier_epochs(previous, ckpt) if ckpt is not None else []
        if ckpt is None and t.init_from:  # weights only: the optimizer, schedule and counters were built fresh
            source = checkpoint.init_weights(parts.model, parts.data.spec, t.init_from)
            st = source.get("state") if isinstance(source.get("state"), dict) else {}
            log.info("starting from the weights of %s (%s); optimizer, schedule and counters start fresh",
                     source["path"], f"after epoch {st['epoch']} of its run" if isinstance(st.get("epoch"), int)
                     else "its run's epoch unknown")
    if ckpt is not None and previous is None:
        log.info("%s is not in the run dir it was written in: continuing it in %s without its earlier epochs' "
                 "metrics; the folder it is kept in is left alone", t.resume, out_dir)
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / SPLIT, parts.data.split.record(cfg.data))  # which samples validate: for the commands

    # Steering on every process (their decisions agree); what writes, on the main process alone.
    replicas = [ReplicaCheck(t.replica_check_every_n_steps)] if world.size > 1 and t.replica_check_every_n_steps else []
    outputs = [*build_outputs(cfg.outputs, out_dir, diagnostics=cfg.diagnostics), *callbacks] if world.is_main else []
    engine = Engine(parts, [
        EarlyStopping(t.early_stopping_patience or math.inf),  # first: the Checkpointer must know an epoch is the last
        *replicas,
        Checkpointer(out_dir, every_n_steps=t.checkpoint_every_n_steps, top_k=t.save_top_k, writes=world.is_main),
        *outputs,  # metrics.csv, console, pictures, tensorboard, diagnostics.csv, summary.json
    ], nonfinite=NONFINITE.get(t.on_nonfinite)(), history=history, world=world, interrupt=interrupt or Interrupt())
    if ckpt is not None:
        checkpoint.restore(engine, ckpt)
        log.info("resuming %s %s", t.resume, engine.where())  # the words of the interrupt that stopped it
    _warn_if_code_is_as_wide_as_the_input(cfg.model, parts.data.spec.shape)  # once the run is known to go ahead
    last = checkpoint_dir(out_dir) / LAST
    with engine.interrupt.installed(), long_lived_objects_frozen():
        try:
            state = engine.fit()
        except Interrupted as e:
            raise Interrupted(f"{e}; saved {last}; resume with: {_resume_command(cfg, out_dir, world)}",
                              e.exit_code - 128) from None
        except OSError as e:  # an output could not be written: a full disk, a read-only dir
            raise WriteError.of(e, f"; the run stopped {engine.where()}") from None
        except Exception as e:
            error = world.explain(e)
            if isinstance(error, ProcessLost):  # also when it happened in a callback's on_fit_end
                saved = f"{last} holds the last complete checkpoint; resume with: " \
                        f"{_resume_command(cfg, out_dir, world)}" if last.exists() else "nothing was saved"
                raise ProcessLost(f"{error}; {saved}") from e
            raise
        finally:
            engine.interrupt.end()  # training is over: a signal now (a launcher stopping the rest) is ignored
            if world.is_main:
                for line in final_table(out_dir):
                    log.info("%s", line)
    return {"best_val_loss": state.best_val_loss, "best_epoch": state.best_epoch, "epochs": state.epoch,
            "steps": state.step}


def _resume_command(cfg: Config, out_dir: Path, world: World) -> str:
    """How to continue this run: with as many processes as it has (aetrain launches them itself when
    trainer.devices says so, else the same launcher command does)."""
    resume = shlex.quote(f"trainer.resume={out_dir}")
    command = f"aetrain {resume}"
    if world.size > 1 and cfg.trainer.devices not in (world.size, -1):
        return f"{command} trainer.devices={world.size} (or your launcher's command with {resume})"
    return command


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
