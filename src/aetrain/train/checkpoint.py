"""What training writes into a checkpoint, and how a run continues from one exactly.

A checkpoint holds everything needed to continue exactly where it was written: model,
optimizer, schedule and GradScaler states, the loop's counters, every RNG state, the config as
JSON text and the data scaling. A data-parallel run's checkpoint also holds its number of
processes and each process's RNG states and running means (`ranks`): the model and optimizer
are the same on every process; what each process drew and summed is its own. Tensors and plain Python
types only (`aetrain.checkpoint` reads them with weights_only=True). Files are written atomically by
`aetrain.train.callbacks.Checkpointer`.
"""

from __future__ import annotations

import io
import logging
import random
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from aetrain import __version__
from aetrain.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    config_of,
    load,
    load_weights,
    resolved_data_paths,
    spec_from_checkpoint,
    stored_data_paths,
)
from aetrain.config import Config, to_json
from aetrain.data import fingerprint_differences
from aetrain.data.spec import DataSpec
from aetrain.errors import CheckpointError
from aetrain.rundir import BEST, LAST

if TYPE_CHECKING:
    from aetrain.train.engine import Engine

log = logging.getLogger(__name__)


def serialize(obj: Any) -> bytes:
    """The bytes torch.save writes: a snapshot, so training may change the tensors right after."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def clean_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors, without the prefixes torch.compile and DataParallel add."""
    out = {}
    for key, value in model.state_dict().items():
        for prefix in ("_orig_mod.", "module."):
            key = key.removeprefix(prefix)
        out[key] = value.detach().clone().cpu()
    return out


def rng_states() -> dict[str, Any]:
    """Every RNG the run draws from, as tensors and plain types (allowed under weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(_as_tuples(states["python"]))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def spec_dict(spec: DataSpec) -> dict[str, Any]:
    return {"name": spec.name, "shape": list(spec.shape), "unit_interval": spec.unit_interval,
            "shift": spec.shift, "scale": spec.scale, "low": spec.low, "high": spec.high}


def rank_state(engine: Engine) -> dict[str, Any]:
    """What differs between data-parallel processes: their random streams and the epoch's running sums."""
    return {"rng": rng_states(), "meter": engine.meter.state_dict() if engine.meter is not None else None}


def payload(engine: Engine, ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything `engine` needs to continue from this exact point; `ranks`: every data-parallel
    process's `rank_state`, in rank order (None for a single process)."""
    p = engine.parts
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "aetrain_version": __version__,
        "run_id": engine.run_id,  # which run dir is this checkpoint's own (aetrain.rundir.own_run_dir)
        "torch_version": str(torch.__version__),  # a TorchVersion object would need unpickling
        "config": to_json(p.cfg),
        "data_spec": spec_dict(p.data.spec),
        "data_fingerprint": p.data.fingerprint,  # source, shape, counts, sha256: a resume on other data is refused
        "data_paths": resolved_data_paths(p.cfg.data),  # the config's data paths as typed, made absolute here
        "model": clean_state_dict(p.model),
        "optimizer": p.optimizer.state_dict(),
        "schedule": p.schedule.state_dict(),
        "scaler": p.precision.scaler.state_dict(),
        "state": asdict(engine.state),
        "meter": engine.meter.state_dict() if engine.meter is not None else None,  # mid-epoch: the epoch so far
        "rng": rng_states(),
        "world_size": engine.world.size,  # processes that trained it (data-parallel)
        "ranks": ranks,  # each process's rank_state; None for a single process
    }


def restore(engine: Engine, ckpt: dict[str, Any]) -> None:
    """Put `engine` back exactly where `ckpt` was written (its parts freshly built from the same config)."""
    from aetrain.train.engine import Meter, TrainState

    p = engine.parts
    load_weights(p.model, ckpt)
    try:
        p.optimizer.load_state_dict(ckpt["optimizer"])
        p.schedule.load_state_dict(ckpt["schedule"])
        p.precision.scaler.load_state_dict(ckpt["scaler"])
        engine.state = TrainState(**ckpt["state"])
        world = engine.world
        # the same processes continue each its own stream and sums; a different number of them (at an
        # epoch boundary, see check_resumable) continues rank 0's stream, and the others keep their fresh ones
        mine = ckpt["ranks"][world.rank] if world.size > 1 and ckpt.get("world_size", 1) == world.size else None
        meter = mine["meter"] if mine is not None else ckpt["meter"]
        if meter is not None:
            engine.meter = Meter(p.objective.names, p.data.train.plan.sizes, p.cfg.trainer.accumulate_grad_batches,
                                 p.data.device)
            engine.meter.load_state_dict(meter)
        if mine is not None or world.rank == 0:
            restore_rng_states(mine["rng"] if mine is not None else ckpt["rng"])  # last: building the parts drew
        if isinstance(ckpt.get("run_id"), str):  # checkpoints from before run ids keep the new one
            engine.run_id = ckpt["run_id"]
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt['path']}: damaged aetrain checkpoint: its training state cannot be restored "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


# Keys that may differ between a checkpoint's config and the config resuming it: where things (data, plugin files)
# live, how often to log and save, how long to train. Everything else shapes the computation,
# so it must match for the continuation to be the run it claims to be.
RESUMABLE_CHANGES = ("trainer.max_epochs", "trainer.resume", "trainer.init_from", "trainer.device", "trainer.compile",
                     "trainer.cuda_graphs", "trainer.num_threads", "trainer.log_every_n_steps",
                     "trainer.checkpoint_every_n_steps", "trainer.save_top_k", "trainer.early_stopping_patience",
                     "trainer.on_nonfinite", "trainer.devices",
                     "trainer.replica_check_every_n_steps", "trainer.ddp_timeout_s", "data.root", "data.path",
                     "data.download", "data.num_workers", "outputs.", "diagnostics.", "plugins")


def init_weights(model: torch.nn.Module, spec: DataSpec, source: str) -> dict[str, Any]:
    """`trainer.init_from`: put the weights of the checkpoint at `source` (a file, or a run dir's best.pt, else
    last.pt) into `model`, keeping its own data scaling. The checkpoint must have been trained on samples of
    the same shape, and its weights must fit `model` exactly (the same parameters, whatever the family's
    objective). Returns the checkpoint read."""
    try:
        ckpt = load(source, prefer=(BEST, LAST))
    except CheckpointError as e:
        raise CheckpointError(f"trainer.init_from={source}: {str(e).removeprefix(f'{source}: ')}") from None
    saved = spec_from_checkpoint(ckpt).shape
    if saved != spec.shape:
        raise CheckpointError(f"trainer.init_from={source}: its model was trained on samples of shape {saved}; "
                              f"data '{spec.name}' has {spec.shape}")
    scaling = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("scaling.")}  # this run's data
    try:
        load_weights(model, ckpt, target="this run's model")
    except CheckpointError as e:
        raise CheckpointError(f"trainer.init_from={source}: {e}") from None
    model.load_state_dict(scaling, strict=False)
    return ckpt


def check_resumable(cfg: Config, ckpt: dict[str, Any], spec: DataSpec, *, per_step_schedule: bool,
                    fingerprint: dict[str, Any] | None = None, world_size: int = 1) -> None:
    """Refuse to continue `ckpt` under a config or data that would make it a different run.

    `fingerprint`: the data's (aetrain.data.Data.fingerprint), compared with the checkpoint's; a
    checkpoint without one (written before aetrain stored it) is checked by its sample shape only.
    `world_size`: the data-parallel processes resuming it. Another number of processes than
    wrote the checkpoint continues at an epoch boundary only: mid-epoch, each process's position
    and sums belong to that split of the epoch; and not with a per-step schedule, which is
    planned over a number of optimizer steps that the global batch size changes.
    """
    path = cfg.trainer.resume
    if ckpt["format_version"] < FORMAT_VERSION:
        raise CheckpointError(f"trainer.resume={path}: written by aetrain {ckpt.get('aetrain_version', '?')} in "
                              f"checkpoint format {ckpt['format_version']}, which this version loads as a model "
                              f"(aetrain.load_model) but cannot continue; start a new run (format {FORMAT_VERSION})")
    _check_complete(ckpt)
    old, new = _flat(asdict(config_of(ckpt))), _flat(asdict(cfg))
    for key, path in stored_data_paths(ckpt).items():  # a data file is the same file from any working directory
        if f"data.{key}" in old:
            old[f"data.{key}"], new[f"data.{key}"] = path, resolved_data_paths(cfg.data).get(key)
    changed = [k for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES)]
    if changed:
        was = ", ".join(f"{k}={old.get(k)!r}" for k in changed)
        now = ", ".join(f"{k}={new.get(k)!r}" for k in changed)
        raise CheckpointError(f"trainer.resume={path}: the checkpoint was trained with {was}; this config has {now}. "
                              "Resume with the same settings (only where files live, logging, checkpointing, "
                              "early stopping and trainer.max_epochs may change)")
    saved_shape = tuple(ckpt["data_spec"]["shape"])
    if saved_shape != spec.shape:
        raise CheckpointError(f"trainer.resume={path}: the checkpoint's data has samples of shape {saved_shape}, "
                              f"data '{spec.name}' has {spec.shape}")
    _check_same_data(path, ckpt.get("data_fingerprint"), fingerprint)
    _check_same_scaling(path, ckpt, spec)
    if per_step_schedule and old["trainer.max_epochs"] != cfg.trainer.max_epochs:
        raise CheckpointError(f"trainer.max_epochs={cfg.trainer.max_epochs}: scheduler={cfg.scheduler.name} "
                              f"was planned over trainer.max_epochs={old['trainer.max_epochs']} "
                              "and cannot be stretched on resume; "
                              "keep it, or use an epoch-wise schedule (step, exponential, plateau, none)")
    state = ckpt["state"]
    saved_world = ckpt.get("world_size", 1)
    if saved_world != world_size:
        was, now = _processes(saved_world), _processes(world_size)
        if state["step_in_epoch"]:
            raise CheckpointError(f"trainer.resume={path}: written in the middle of epoch {state['epoch'] + 1} by "
                                  f"{was}; resume it with {saved_world} (trainer.devices={saved_world}), or resume "
                                  f"an epoch-boundary checkpoint with {now}")
        if per_step_schedule:
            raise CheckpointError(f"trainer.resume={path}: trained by {was}, and scheduler={cfg.scheduler.name} is "
                                  f"planned over its optimizer steps, which {now} would change (global batch "
                                  f"{cfg.data.batch_size} x processes); resume with {saved_world} "
                                  f"(trainer.devices={saved_world})")
    if state["epoch"] >= cfg.trainer.max_epochs and not state["step_in_epoch"]:
        raise CheckpointError(f"trainer.resume={path}: the run already completed {state['epoch']} "
                              f"epoch{'' if state['epoch'] == 1 else 's'}; "
                              f"raise trainer.max_epochs (now {cfg.trainer.max_epochs}) to train further")


def _check_complete(ckpt: dict[str, Any]) -> None:
    """What a resume reads before restoring the state is there and of the right kind (the rest is
    checked as it is restored)."""
    state = ckpt.get("state")
    if not isinstance(state, dict) \
            or not all(isinstance(state.get(k), int) for k in ("epoch", "step", "step_in_epoch")):
        raise CheckpointError(f"{ckpt['path']}: damaged aetrain checkpoint: its training state (epoch, step) is "
                              "missing or unreadable; aetrain.load_model may still read its model")
    spec_from_checkpoint(ckpt)


def _check_same_data(path: str | None, saved: Any, now: dict[str, Any] | None) -> None:
    """Refuse a resume on data other than the checkpoint's, naming each difference in one line."""
    if not now:
        return
    if not isinstance(saved, dict) or not saved:
        log.warning("trainer.resume=%s: the checkpoint has no data fingerprint (written before aetrain stored one): "
                    "only the shape of the samples was checked", path)
        return
    differ = fingerprint_differences(saved, now)
    if differ:
        raise CheckpointError(f"trainer.resume={path}: the data differs from the checkpoint's: {'; '.join(differ)}. "
                              "Resume on the data the run was trained on (its file may move, not change)")


def _check_same_scaling(path: str | None, ckpt: dict[str, Any], spec: DataSpec) -> None:
    """The same data must come into model units as it did for the checkpoint. It does, unless the checkpoint
    was written by an aetrain that scaled otherwise: before the scale-relative rule for constant features
    (aetrain.data.standardization), a standard deviation below 1e-8 was taken as 1e-8."""
    saved = spec_from_checkpoint(ckpt)
    same = all(a.shape == b.shape and torch.equal(a.float(), b.detach().float().cpu())
               for a, b in ((saved.shift, spec.shift), (saved.scale, spec.scale)))
    if not same:
        raise CheckpointError(f"trainer.resume={path}: the checkpoint scaled this data into model units otherwise "
                              "than this aetrain does (written before constant features were scaled like the others, "
                              "when a standard deviation below 1e-8 counted as 1e-8): continuing would train on other "
                              "numbers. Its model still loads and means what it did (aetrain.load_model, eval, encode, "
                              "score, export); to train on, start a new run")


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def nonfinite_parameters(model: torch.nn.Module) -> bool:
    """True when any weight is NaN or infinite (one host sync)."""
    return not bool(torch.stack([t.isfinite().all() for t in model.state_dict().values()
                                 if t.is_floating_point()]).all())
