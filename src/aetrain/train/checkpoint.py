"""What training writes into a checkpoint, and how a run continues from one exactly.

A checkpoint holds everything needed to continue exactly where it was written: model,
optimizer, schedule and GradScaler states, the loop's counters, every RNG state, the config as
JSON text and the data scaling. Tensors and plain Python types only (`aetrain.checkpoint` reads
them with weights_only=True). Files are written atomically by `aetrain.train.callbacks.Checkpointer`.
"""

from __future__ import annotations

import io
import random
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from aetrain import __version__
from aetrain.checkpoint import FORMAT, FORMAT_VERSION, config_of, load_weights
from aetrain.config import Config, to_json
from aetrain.data.spec import DataSpec
from aetrain.errors import CheckpointError

if TYPE_CHECKING:
    from aetrain.train.engine import Engine


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


def payload(engine: Engine) -> dict[str, Any]:
    """Everything `engine` needs to continue from this exact point."""
    p = engine.parts
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "aetrain_version": __version__,
        "torch_version": str(torch.__version__),  # a TorchVersion object would need unpickling
        "config": to_json(p.cfg),
        "data_spec": spec_dict(p.data.spec),
        "model": clean_state_dict(p.model),
        "optimizer": p.optimizer.state_dict(),
        "schedule": p.schedule.state_dict(),
        "scaler": p.precision.scaler.state_dict(),
        "state": asdict(engine.state),
        "meter": engine.meter.state_dict() if engine.meter is not None else None,  # mid-epoch: the epoch so far
        "rng": rng_states(),
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
        if ckpt["meter"] is not None:
            engine.meter = Meter(p.objective.names, p.data.train.plan.sizes, p.cfg.trainer.accumulate_grad_batches,
                                 p.data.device)
            engine.meter.load_state_dict(ckpt["meter"])
        restore_rng_states(ckpt["rng"])  # last: building the parts drew from the generators
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt['path']}: damaged aetrain checkpoint: its training state cannot be restored "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


# Keys that may differ between a checkpoint's config and the config resuming it: where things
# live, how often to log and save, how long to train. Everything else shapes the computation,
# so it must match for the continuation to be the run it claims to be.
RESUMABLE_CHANGES = ("trainer.max_epochs", "trainer.resume", "trainer.device", "trainer.compile",
                     "trainer.log_every_n_steps", "trainer.checkpoint_every_n_steps", "trainer.save_top_k",
                     "trainer.early_stopping_patience", "trainer.on_nonfinite", "data.root", "data.path",
                     "data.download", "data.num_workers", "outputs.", "diagnostics.")


def check_resumable(cfg: Config, ckpt: dict[str, Any], spec: DataSpec, *, per_step_schedule: bool) -> None:
    """Refuse to continue `ckpt` under a config or data that would make it a different run."""
    path = cfg.trainer.resume
    if ckpt["format_version"] < FORMAT_VERSION:
        raise CheckpointError(f"trainer.resume={path}: written by aetrain {ckpt.get('aetrain_version', '?')} in "
                              f"checkpoint format {ckpt['format_version']}, which this version loads as a model "
                              f"(aetrain.load_model) but cannot continue; start a new run (format {FORMAT_VERSION})")
    old, new = _flat(asdict(config_of(ckpt))), _flat(asdict(cfg))
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
    if per_step_schedule and old["trainer.max_epochs"] != cfg.trainer.max_epochs:
        raise CheckpointError(f"trainer.max_epochs={cfg.trainer.max_epochs}: scheduler={cfg.scheduler.name} was planned "
                              f"over trainer.max_epochs={old['trainer.max_epochs']} and cannot be stretched on resume; "
                              "keep it, or use an epoch-wise schedule (step, exponential, plateau, none)")
    state = ckpt["state"]
    if state["epoch"] >= cfg.trainer.max_epochs and not state["step_in_epoch"]:
        raise CheckpointError(f"trainer.resume={path}: the run already completed {state['epoch']} epochs; "
                              f"raise trainer.max_epochs (now {cfg.trainer.max_epochs}) to train further")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def nonfinite_parameters(model: torch.nn.Module) -> bool:
    """True when any weight is NaN or infinite (one host sync)."""
    return not bool(torch.stack([t.isfinite().all() for t in model.state_dict().values()
                                 if t.is_floating_point()]).all())
