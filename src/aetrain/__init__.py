"""aetrain: train, compare and debug autoencoders from the shell.

Python API: `aetrain.load_model(path)` returns a trained autoencoder from a checkpoint file or
a run directory. It imports the model code only (no trainer); torch is imported on first use,
so `aetrain --help` stays fast.
"""

import importlib.metadata as _metadata

try:
    __version__ = _metadata.version("aetrain")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
del _metadata

__all__ = ["__version__", "load_model"]


def load_model(path):  # -> aetrain.models.Autoencoder
    """The autoencoder saved at `path` (a checkpoint file, or a run dir: its best.pt, else last.pt).

    Returned on the CPU in eval mode. `encode(x)`, `decode(z)` and `reconstruct(x)` take and
    return data in the form and units of the training data (images as float tensors in [0, 1],
    N x C x H x W; tabular rows as N x D in their original units). A VAE also has `sample(n)`.
    """
    from aetrain.checkpoint import load, model_from_checkpoint
    from aetrain.rundir import BEST, LAST

    return model_from_checkpoint(load(path, prefer=(BEST, LAST)))
