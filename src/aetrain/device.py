"""Which device a command runs on: `trainer.device` (and every command's `device` key) resolved on this machine.

A module of its own, below the trainer, so the commands that use a trained model (eval, encode,
score, export) resolve devices as training does without importing `aetrain.train`.
"""

from __future__ import annotations

import torch

from aetrain.errors import ConfigError

DEVICES = "auto, cpu, cuda, cuda:N, mps"  # what a device key takes


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N | mps -> a device this machine has (auto: CUDA when there is one, else the CPU).
    ConfigError naming `trainer.device` for a name that is none of these or a device this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"trainer.device={name!r} is not one of: {DEVICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={name}: CUDA is not available on this machine "
                              f"(torch {torch.__version__}); use trainer.device=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"trainer.device={name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"trainer.device={name}: MPS is not available on this machine; use cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"trainer.device={name!r} is not one of: {DEVICES}")
    return device
