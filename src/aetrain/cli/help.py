"""`aetrain --help` and `aetrain <command> --help`."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from aetrain.cli.report import exit_with


def commands_text() -> str:
    from aetrain.cli import COMMANDS, summary_of

    width = max(map(len, COMMANDS))
    return "\n".join(f"  aetrain {name:<{width}}  {summary_of(name)}" for name in COMMANDS)


def print_train_help(overrides: list[str]) -> None:
    """`aetrain --help [overrides]`: hydra.help's text with the commands, the groups and the composed config.

    What Hydra's own --help prints, in a quarter of the time: Hydra lists config groups by
    composing once per group, its plugins' groups included (about 1.5 s here); the app's groups
    are simply the folders of the config package. `aetrain --hydra-help` is still Hydra's.
    """
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module("aetrain.configs", version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as ex:
        exit_with(ex)
    template = cfg.hydra.help.template
    with open_dict(cfg):
        del cfg["hydra"]
    groups = "\n".join(f"{group}: {', '.join(choices)}" for group, choices in config_groups().items())
    text = (template.replace("$APP_COMMANDS", commands_text()).replace("$APP_CONFIG_GROUPS", groups + "\n")
            .replace("$CONFIG", "\n".join(annotated(OmegaConf.to_object(cfg))) + "\n"))
    sys.stdout.write(text)


def annotated(config: Any, indent: str = "") -> list[str]:
    """`config` (a dataclass) as YAML, each key with its default as typed on the command line and the comment
    its dataclass gives it (unit, allowed values, what "off" means), as `aetrain <command> --help` shows them."""
    from aetrain.cli.command import field_comments, typed

    comments = field_comments(type(config))
    lines = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            lines += [f"{indent}{f.name}:", *annotated(value, indent + "  ")]
        else:
            comment = comments.get(f.name)
            lines.append(f"{indent}{f.name}: {typed(value)}" + (f"  # {comment}" if comment else ""))
    return lines


def config_groups() -> dict[str, list[str]]:
    """Each config group of aetrain and its choices, from the folders of the config package."""
    from importlib.resources import files

    root = files("aetrain.configs")
    folders = sorted((d for d in root.iterdir() if d.is_dir() and d.name not in ("hydra", "__pycache__")),
                     key=lambda d: d.name)
    return {d.name: sorted(f.name.removesuffix(".yaml") for f in d.iterdir() if f.name.endswith(".yaml"))
            for d in folders}
