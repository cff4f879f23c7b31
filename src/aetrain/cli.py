"""The `aetrain` command: Hydra composes the config, this module hands it to `aetrain.train.run`.

This is the only module that imports Hydra. It:
- registers the typed schema (`aetrain.config.Config`) that every YAML preset merges into;
- turns every user error (unknown group choice or key, wrong type, bad value, missing data,
  unusable checkpoint) into one line on stderr and exit code 2, with no traceback;
- writes Hydra's `.hydra/` files itself, once the run is known to be valid, so a bad command
  never overwrites the files of an existing run (hence `hydra.output_subdir: null`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import typing
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from aetrain.config import Config
from aetrain.errors import AetrainError

log = logging.getLogger("aetrain")

EXIT_USER_ERROR = 2


def register_configs() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)


def unknown_key_message(key: str, schema: type) -> str:
    parent = key.rpartition(".")[0]
    allowed = ", ".join(f.name for f in dataclasses.fields(schema))
    return f"{key}: unknown key; {parent or 'the config'} has: {allowed}"


def check_keys(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Refuse keys `schema` does not declare: `+group.key=...` slips past Hydra's own checks."""
    hints = typing.get_type_hints(schema)
    for key in node:
        if key not in hints:
            raise AetrainError(unknown_key_message(f"{prefix}{key}", schema))
        if dataclasses.is_dataclass(hints[key]) and isinstance(node[key], DictConfig):
            check_keys(node[key], hints[key], f"{prefix}{key}.")


def to_config(cfg: DictConfig) -> Config:
    check_keys(cfg, Config)
    return OmegaConf.to_object(cfg)


def _task(cfg: DictConfig) -> float:
    from aetrain.train import run

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    try:
        result = run(to_config(cfg), out_dir, callbacks=[_hydra_files_callback(cfg, hc)])
    except AetrainError as ex:
        _remove_if_empty(out_dir)
        if hc.mode == RunMode.MULTIRUN:  # one failed job must not sink the sweep
            log.error("job %s failed: %s", hc.job.num, describe(ex))
            return math.nan
        _exit_with(ex)  # here rather than raising: Hydra would add its own lines around it
    return result["best_val_loss"]


def _hydra_files_callback(cfg: DictConfig, hc: Any) -> Any:
    """A callback that saves the composed config into `.hydra/` when training starts."""
    from aetrain.train.engine import Callback

    class HydraFiles(Callback):
        def on_fit_start(self, engine: Any) -> None:
            out = Path(hc.runtime.output_dir) / ".hydra"
            out.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, out / "config.yaml")
            OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hc)}), out / "hydra.yaml")
            OmegaConf.save(OmegaConf.create(list(hc.overrides.task)), out / "overrides.yaml")

    return HydraFiles()


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()  # Hydra made it before the run was checked; only an empty dir goes
    except OSError:
        pass


def describe(ex: BaseException) -> str:
    """One line for a user error raised by Hydra, OmegaConf or aetrain."""
    if isinstance(ex, MissingConfigException) and ex.missing_cfg_file and ex.options:
        group, _, choice = ex.missing_cfg_file.rpartition("/")
        return f"{group}={choice} is not one of: {', '.join(sorted(ex.options))}"
    cause = ex.__cause__ if isinstance(ex.__cause__, OmegaConfBaseException) else ex
    schema = getattr(cause, "object_type", None)
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and dataclasses.is_dataclass(schema):
        return unknown_key_message(cause.full_key, schema)
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None)
        msg = str(cause).strip().splitlines()[0]
        return f"{key}: {msg}" if key and key not in msg else msg
    lines = [line.strip() for line in str(ex).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else type(ex).__name__


def _exit_with(ex: BaseException) -> typing.NoReturn:
    sys.stderr.write(f"aetrain: error: {describe(ex)}\n")
    sys.exit(EXIT_USER_ERROR)


def _install_one_line_errors() -> None:
    """Wrap Hydra's error reporter: user errors become one line and exit code 2; bugs keep tracebacks.

    Hydra (>=1.3,<1.4, pinned) prints composition errors over many lines; its reporter is the one
    place every entry (run, multirun, --cfg, --help) passes through.
    """
    import hydra._internal.utils as hydra_utils

    report = hydra_utils.run_and_report
    if getattr(report, "aetrain", False):
        return

    def run_and_report(func: Any) -> Any:
        try:
            return func()
        except (AetrainError, HydraException, OmegaConfBaseException) as ex:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            _exit_with(ex)
        except Exception:
            return report(func)

    run_and_report.aetrain = True  # type: ignore[attr-defined]
    hydra_utils.run_and_report = run_and_report


@hydra.main(config_path="pkg://aetrain.configs", config_name="train", version_base="1.3")
def _app(cfg: DictConfig) -> float:
    return _task(cfg)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: `aetrain [overrides...]`, `aetrain -m ...`, `aetrain --help`.

    `argv` (without the program name) replaces sys.argv[1:], for calling the CLI in-process.
    """
    register_configs()
    _install_one_line_errors()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    _app()


if __name__ == "__main__":
    main()
