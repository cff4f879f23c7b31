"""aetrain: configurable autoencoder training from the shell.

Python API: `aetrain.load_model(path)` returns a trained autoencoder from a checkpoint file or
a run directory. Heavy imports (torch) happen on first use, so `aetrain --help` stays fast.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("aetrain")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from pathlib import Path

    from aetrain.models import Autoencoder

__all__ = ["__version__", "load_model"]


def load_model(path: str | Path) -> Autoencoder:
    """The autoencoder saved at `path` (a checkpoint file, or a run dir: its best.pt, else last.pt).

    Returned on the CPU in eval mode. `encode(x)`, `decode(z)` and `reconstruct(x)` take and
    return data in the form and units of the training data (images as float tensors in [0, 1],
    N x C x H x W; tabular rows as N x D in their original units).
    """
    from aetrain.train.checkpoint import BEST, LAST, load, model_from_checkpoint

    return model_from_checkpoint(load(path, prefer=(BEST, LAST)))
