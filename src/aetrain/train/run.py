"""`run(cfg, out_dir)`: turn a validated config into objects, train, and return the results.

Everything that can fail on user input (config ranges, device, data, model/data fit) is checked
before the first file is written, so a bad command leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from aetrain.config import Config, validate
from aetrain.data import build_data
from aetrain.errors import ConfigError
from aetrain.models import build_model, build_objectives, count_parameters
from aetrain.train import checkpoint
from aetrain.train.callbacks import Checkpointer, EpochLog, MetricsCSV
from aetrain.train.engine import Callback, Engine, Parts, accumulation_windows
from aetrain.train.optim import build_optimizer, build_schedule
from aetrain.train.precision import Precision, build_clip, trainable

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
    device = resolve_device(cfg.trainer.device)
    seed_everything(cfg.trainer.seed, cfg.trainer.deterministic)
    data = build_data(cfg.data, device, seed=cfg.trainer.seed)
    model = build_model(cfg.model, data.spec).to(device)
    objective, val_objective = build_objectives(cfg.model, data.spec)
    precision = Precision(cfg.trainer.precision, device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    windows = accumulation_windows(data.train.plan.sizes, cfg.trainer.accumulate_grad_batches)
    schedule = build_schedule(cfg.scheduler, optimizer, total_steps=len(windows) * cfg.trainer.max_epochs)
    clip = build_clip(cfg.trainer.gradient_clip_val, cfg.trainer.gradient_clip_algorithm)
    return Parts(cfg, model, objective, val_objective, optimizer, schedule, precision, clip,
                 trainable(model.parameters()), data, windows)


def run(cfg: Config, out_dir: Path, *, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Train one model into `out_dir`; returns the summary numbers (best val loss first).

    `callbacks` run after aetrain's own; their on_fit_start fires once the run is known to be valid.
    """
    parts = build_parts(cfg)
    _refuse_existing_run(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("model %s (%s backbone, %s parameters) on %s %s, %d train / %d val samples, device %s, precision %s",
             cfg.model.name, cfg.model.backbone, f"{count_parameters(parts.model):,}", parts.data.spec.name,
             "x".join(map(str, parts.data.spec.shape)), parts.data.num_train, parts.data.num_val,
             parts.data.device, cfg.trainer.precision)
    engine = Engine(parts, [MetricsCSV(out_dir / "metrics.csv"), Checkpointer(out_dir), EpochLog(), *callbacks])
    state = engine.fit()
    return {"best_val_loss": state.best_val_loss, "best_epoch": state.best_epoch, "epochs": state.epoch,
            "steps": state.step}


def _refuse_existing_run(out_dir: Path) -> None:
    for name in ("metrics.csv", f"checkpoints/{checkpoint.LAST}"):
        if (out_dir / name).exists():
            raise ConfigError(f"hydra.run.dir={out_dir} already holds a run ({name}); continue it with "
                              f"trainer.resume={out_dir} or choose another hydra.run.dir")
