"""`aetrain.fit`: one training run from Python, as the `aetrain` command runs it, returned finished.

The same road as the command line, minus the process: the overrides checked, a resume turned into its
continuation, the plugins imported, the config composed by Hydra's compose API (inside a context that leaves no
Hydra state behind), the run dir allocated (`outputs/<date>/<time>`, `_2` when taken) or taken as given, and the
job run by `aetrain.commands.train.run_job`, which records .hydra/ and writes the run's files. Log lines go to the
run's train.log and, unless the root logger has handlers of its own (a notebook's, a script's), to stdout.
A mistake raises the `AetrainError` whose line the CLI would print (composition errors as a `ConfigError` with
that line); nothing here exits the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from aetrain import plugins
from aetrain.cli.errors import describe
from aetrain.cli.overrides import (
    check_overrides,
    given,
    hydra_quoted,
    override_key,
    plugin_arguments,
    quote_paths,
    resume_arguments,
)
from aetrain.cli.schema import compose_training, to_config
from aetrain.config import Config
from aetrain.errors import AetrainError, ConfigError
from aetrain.rundir import METRICS, TRAIN_LOG, Invocation, RunDir, read_metrics

DEFAULT_RUN_DIR = "outputs/%Y-%m-%d/%H-%M-%S"  # configs/train.yaml's hydra.run.dir, for a run from a config object


@dataclass(frozen=True)
class Run:
    """A finished run: where it is, what it was, how it ended, and its model (best.pt, else last.pt)."""

    run_dir: Path
    config: Config
    summary: dict[str, Any]  # summary.json: best_val_loss, best_epoch, epochs, status, ...
    model: Any  # aetrain.models.Autoencoder, on the CPU in eval mode

    def metrics(self) -> list[dict[str, Any]]:
        """metrics.csv's rows, one per epoch, numbers as numbers."""
        return read_metrics(self.run_dir / METRICS)


def fit(overrides: list[str], *, config: Config | None = None, run_dir: str | Path | None = None) -> Run:
    """See `aetrain.fit`."""
    if config is not None:
        if overrides:
            raise ConfigError("aetrain.fit takes overrides or a config, not both: put the overrides into the config")
        return _fit_config(config, run_dir)
    flags = [a for a in overrides if a.startswith("-")]
    if flags:
        raise ConfigError(f"aetrain.fit trains one run from overrides (key=value), not {flags[0]}; a sweep is "
                          "aetrain -m on the command line")
    hydra_keys = [a for a in overrides if override_key(a).startswith("hydra.")]
    if hydra_keys:
        raise ConfigError(f"{hydra_keys[0]}: aetrain.fit takes the run dir as run_dir=..., and no other hydra.* keys")
    args = [*overrides, *([f"hydra.run.dir={hydra_quoted(str(run_dir))}"] if run_dir is not None else [])]
    try:
        check_overrides(args)
        args = plugin_arguments(resume_arguments(quote_paths(args)))  # a resume continues in its run's dir
        composed = compose_training(args, hydra=True)
        named = given(args, "hydra.run.dir")
        path = Path(composed.hydra.run.dir)
        hydra_config: Any = OmegaConf.to_container(composed.hydra)  # as the CLI records it: .hydra/hydra.yaml
        with open_dict(composed):
            del composed["hydra"]
        cfg = to_config(composed)
        config_yaml = OmegaConf.to_yaml(composed)
    except AetrainError:
        raise
    except (HydraException, OmegaConfBaseException) as ex:
        raise ConfigError(describe(ex)) from None
    where = RunDir(path) if named else RunDir.allocate(path)
    hydra_config["mode"] = "RUN"
    hydra_config["run"]["dir"] = str(where.path)
    hydra_config["runtime"]["output_dir"] = str(where.path.absolute())
    task = tuple(a for a in args if not override_key(a).startswith("hydra."))
    invocation = Invocation(config_yaml, task, OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_config})))
    relaunch = ["train", *task, f"hydra.run.dir={hydra_quoted(str(where.path))}"]  # trainer.devices=N: N processes
    return _train(cfg, where, invocation, relaunch)


def _fit_config(config: Config, run_dir: str | Path | None) -> Run:
    """A run from a typed config: its plugin files imported (kept as absolute paths), what was run recorded from
    the config (there is no command line: .hydra/ holds config.yaml and an empty overrides.yaml)."""
    if not isinstance(config, Config):
        raise ConfigError(f"aetrain.fit(config=...) takes an aetrain.Config, not a {type(config).__name__}")
    files = [plugins.resolve(f) for f in config.plugins]
    plugins.load_files(files)
    config = dataclasses.replace(config, plugins=files)
    if config.trainer.devices != 1:
        raise ConfigError(f"trainer.devices={config.trainer.devices}: aetrain.fit(config=...) trains in this process; "
                          "for several processes give overrides (aetrain.fit([... 'trainer.devices=N']))")
    where = RunDir(run_dir) if run_dir is not None else RunDir.allocate(datetime.now().strftime(DEFAULT_RUN_DIR))
    return _train(config, where, Invocation.of(config), [])


def _train(cfg: Config, run_dir: RunDir, invocation: Invocation, relaunch: list[str]) -> Run:
    from aetrain import load_model
    from aetrain.commands.train import run_job  # torch: imported when a run starts

    with _logging(run_dir.path):
        run_job(cfg, run_dir, invocation=invocation, relaunch=relaunch)
    return Run(run_dir.path, cfg, run_dir.summary(), load_model(run_dir.path))


@contextlib.contextmanager
def _logging(run_dir: Path) -> Iterator[None]:
    """Log lines as the CLI writes them while the run trains: every logger's INFO and above into the run's train.log
    (opened with the first line, so a refused run leaves no file), and on stdout unless the root logger has
    handlers of its own already. Everything put back as it was afterwards."""
    root = logging.getLogger()
    file = logging.FileHandler(run_dir / TRAIN_LOG, delay=True, encoding="utf-8", errors="backslashreplace")
    file.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    added: list[logging.Handler] = [file]
    if not root.handlers:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        added.append(console)
    level = root.level
    for handler in added:
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        for handler in added:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
