"""The config tree: every group choice composes into the typed schema; validation and JSON."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from aetrain.cli import register_configs
from aetrain.config import Config, ConfigError, from_json, to_json, validate

CONFIGS = Path(__file__).parents[1] / "configs"
GROUPS = ["model", "data", "optimizer", "scheduler", "trainer"]


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def compose_config(*overrides: str) -> Config:
    register_configs()
    with initialize_config_module("aetrain.configs", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return OmegaConf.to_object(cfg)


@pytest.mark.parametrize(("group", "choice"), [(g, c) for g in GROUPS for c in choices(g)])
def test_every_group_choice_composes_into_the_schema(group: str, choice: str) -> None:
    cfg = compose_config(f"{group}={choice}")
    assert isinstance(cfg, Config)
    section = getattr(cfg, group)
    if hasattr(section, "name"):  # each preset names itself after its file
        assert section.name == choice


def test_defaults_are_valid_and_pick_the_documented_presets() -> None:
    cfg = compose_config()
    validate(cfg)
    assert (cfg.model.name, cfg.data.name, cfg.optimizer.name, cfg.scheduler.name) == ("dense_ae", "digits", "adam", "none")


def test_regulariser_presets_compose_with_either_backbone() -> None:
    cfg = compose_config("model=denoising_ae", "model.backbone=conv")
    assert (cfg.model.backbone, cfg.model.noise.kind) == ("conv", "gaussian")
    cfg = compose_config("model=sparse_ae", "model.backbone=conv")
    assert (cfg.model.backbone, cfg.model.sparsity.kind) == ("conv", "l1")


def test_config_survives_a_json_round_trip() -> None:
    cfg = compose_config("model=sparse_ae", "optimizer=sgd", "trainer.gradient_clip_val=0.5")
    assert from_json(to_json(cfg)) == cfg


@pytest.mark.parametrize(("section", "key", "value", "needle"), [
    ("optimizer", "lr", 0.0, "optimizer.lr=0.0"),
    ("optimizer", "lr", float("nan"), "optimizer.lr=nan"),
    ("trainer", "accumulate_grad_batches", 0, "trainer.accumulate_grad_batches=0"),
    ("model", "latent_dim", 0, "model.latent_dim=0"),
    ("data", "val_fraction", 0.0, "data.val_fraction=0.0"),
    ("data", "val_fraction", 1.0, "data.val_fraction=1.0"),
    ("model", "dropout", 1.0, "model.dropout=1.0"),
    ("trainer", "gradient_clip_val", -1.0, "trainer.gradient_clip_val=-1.0"),
    ("trainer", "gradient_clip_algorithm", "max", "trainer.gradient_clip_algorithm='max'"),
    ("model", "kernel_size", 4, "model.kernel_size=4"),
    ("data", "batch_size", 0, "data.batch_size=0"),
])
def test_out_of_range_values_name_the_key(section: str, key: str, value: object, needle: str) -> None:
    cfg = Config()
    setattr(getattr(cfg, section), key, value)
    with pytest.raises(ConfigError, match="out of range") as info:
        validate(cfg)
    assert needle in str(info.value)


def test_every_field_has_a_default() -> None:
    def walk(cls: type) -> None:
        for f in dataclasses.fields(cls):
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, f.name
            if dataclasses.is_dataclass(f.type if isinstance(f.type, type) else None):
                walk(f.type)

    walk(Config)
