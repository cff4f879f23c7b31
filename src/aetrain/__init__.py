"""aetrain: train, compare and debug autoencoders from the shell, or from Python.

Python API:
- `aetrain.fit(overrides=[...], run_dir=...)` (or `config=`): train one run as `aetrain` does, into the same run
  dir with the same files; returns the finished `Run` (its dir, summary and loaded model). Errors are raised as
  `aetrain.errors.AetrainError`, with the CLI's one-line message.
- `aetrain.load_model(path)` returns a trained autoencoder from a checkpoint file or a run directory. It imports the
  model code only (no trainer).
- `@aetrain.register_model(name, config=..., objective=...)` registers a model family of your own (`ModelConfig`
  is the base of its config); README, "Your own model", has the contract.
torch is imported on first use, so `aetrain --help` stays fast.
"""

__all__ = ["Config", "ModelConfig", "__version__", "fit", "load_model", "register_model"]
_CONFIG = ("Config", "ModelConfig")  # the typed config, imported when asked for (`import aetrain` stays bare)


def __getattr__(name):
    if name in _CONFIG:
        from aetrain import config

        return getattr(config, name)
    if name == "__version__":  # read when asked for: importlib.metadata takes 50 ms of every start-up
        import importlib.metadata

        global __version__
        try:
            __version__ = importlib.metadata.version("aetrain")
        except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
            __version__ = "0+unknown"
        return __version__
    raise AttributeError(f"module 'aetrain' has no attribute {name!r}")


def __dir__():
    return sorted({*(n for n in globals() if not n.startswith("_") or n.startswith("__")), *_CONFIG, "__version__"})


def load_model(path):  # -> aetrain.models.Autoencoder
    """The autoencoder saved at `path` (a checkpoint file, or a run dir: its best.pt, else last.pt).

    Returned on the CPU in eval mode. `encode(x)`, `decode(z)` and `reconstruct(x)` take and
    return data in the form and units of the training data (images as float tensors in [0, 1],
    N x C x H x W; tabular rows as N x D in their original units). A VAE also has `sample(n)`.
    A model of your own is rebuilt by its registered name: its plugin (the run's `plugins` files, or an
    installed package's entry point) is imported first unless the name is registered already.
    """
    from aetrain.checkpoint import load, model_from_checkpoint
    from aetrain.rundir import BEST, LAST

    return model_from_checkpoint(load(path, prefer=(BEST, LAST)))


def register_model(name, *, config=None, objective="reconstruction"):
    """Decorator: register an nn.Module class (or a function returning one) as `model=<name>`.

    It is built as `build(cfg, shape, code_width=...)` and has `encode(x) -> (B, code_width)` and
    `decode(z) -> (B, *shape)` (model units). `config`: a dataclass deriving from `aetrain.ModelConfig` with the
    model's own keys (each with a default and a comment); None = `ModelConfig` itself. `objective`: reconstruction |
    denoising | sparse | vae (their keys are added to the config), or a function `(cfg, spec) -> (training,
    validation)` objectives.
    """
    from aetrain.config import ModelConfig
    from aetrain.models.custom import register_model as register

    return register(name, config=config or ModelConfig, objective=objective)


def fit(overrides=(), *, config=None, run_dir=None):  # -> aetrain.cli.fit.Run
    """Train one run from Python, as `aetrain [overrides]` would, and return it finished (`Run`: run_dir, summary,
    config, model; `metrics()` reads metrics.csv).

    `overrides`: the command line's `key=value` arguments (`["model=conv_ae", "trainer.max_epochs=5"]`,
    `plugins=[my_models.py]`, `trainer.resume=<run dir>`); or `config`: a typed `aetrain.Config` instead.
    `run_dir`: where to train; None = `outputs/<date>/<time>` as the CLI makes it. The run dir, its files and the
    errors are the CLI's: a mistake raises `aetrain.errors.AetrainError` (a `ConfigError`, ...) with the line the
    CLI would print, before anything is written. Never exits the process; leaves no Hydra state behind.
    """
    from aetrain.cli.fit import fit as run

    return run(list(overrides), config=config, run_dir=run_dir)
