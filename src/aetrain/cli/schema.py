"""The typed schema Hydra composes into: `aetrain.config` registered with Hydra's ConfigStore.

Each choice of a group is stored as `schema/<group>/<name>`; its preset configs/<group>/<name>.yaml
starts with `defaults: [/schema/<group>/<name>@_here_, _self_]`, so the dataclass holds the
defaults and the keys of that choice. The primary schema leaves the groups empty (`???`): the
defaults list of configs/train.yaml fills each with its choice.
"""

from __future__ import annotations

import dataclasses
import typing

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aetrain.cli.errors import describe, unknown_key_message
from aetrain.config import CHOICES, Config
from aetrain.errors import AetrainError, ConfigError


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    schema = OmegaConf.structured(Config)
    for group in CHOICES:
        schema[group] = MISSING
    store.store(name="config_schema", node=schema)
    for group, choices in CHOICES.items():
        presets = preset_names(group)
        for name, make in choices.items():
            store.store(group=f"schema/{group}", name=name, node=make())
            if name not in presets:  # a model of your own (aetrain.register_model): its schema is its preset
                store.store(group=group, name=name, node=make())


def preset_names(group: str) -> set[str]:
    """The choices of `group` that have a preset file in configs/<group>/."""
    from importlib.resources import files

    folder = files("aetrain.configs").joinpath(group)
    return {f.name.removesuffix(".yaml") for f in folder.iterdir() if f.name.endswith(".yaml")} \
        if folder.is_dir() else set()


def check_keys(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Refuse keys `schema` does not declare: `+group.key=...` slips past Hydra's own checks."""
    hints = typing.get_type_hints(schema)
    for key in node:
        if key not in hints:
            choice = node.get("name") if "name" in hints else None
            raise AetrainError(unknown_key_message(f"{prefix}{key}", schema, choice))
        child = node[key]
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(hints[key]):
            check_keys(child, OmegaConf.get_type(child) or hints[key], f"{prefix}{key}.")


def to_config(cfg: DictConfig) -> Config:
    """The composed config as the typed `Config`; ConfigError (one line) for a key or value the schema refuses."""
    check_keys(cfg, Config)
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(describe(e)) from e


def compose_training(overrides: list[str], *, hydra: bool = False) -> DictConfig:
    """The training config composed from configs/train.yaml and `overrides` with Hydra's compose API, outside
    Hydra's app (for --help, and the commands that train once into a dir of their own); `hydra`: with Hydra's
    own config (its run dir) under `hydra`."""
    from hydra import compose, initialize_config_module

    register_configs()
    with initialize_config_module("aetrain.configs", version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra)
