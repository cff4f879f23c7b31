"""The config tree: every group choice composes into the typed schema; validation and JSON."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from aetrain.cli.schema import register_configs
from aetrain.config import (CHOICES, Config, ConfigError, ConvAEConfig, DenoisingAEConfig, SGDConfig, from_json, to_json,
                            validate)

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
    ("optimizer", "weight_decay", float("inf"), "optimizer.weight_decay=inf"),
    ("optimizer", "eps", float("inf"), "optimizer.eps=inf"),
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


def test_presets_state_nothing_the_dataclass_does_not_and_name_their_schema() -> None:
    """One home for defaults: each preset is the defaults list naming its schema, no values."""
    for group, choices in CHOICES.items():
        for name in choices:
            text = (CONFIGS / group / f"{name}.yaml").read_text()
            body = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
            assert body == ["defaults:", f"  - /schema/{group}/{name}@_here_", "  - _self_"], (group, name)


def test_each_choice_composes_with_exactly_its_own_defaults() -> None:
    for group, choices in CHOICES.items():
        for name, make in choices.items():
            assert getattr(compose_config(f"{group}={name}"), group) == make(), (group, name)


def test_a_key_of_the_backbone_not_chosen_is_refused() -> None:
    cfg = Config(model=DenoisingAEConfig(backbone="dense", channels=[8]))
    with pytest.raises(ConfigError, match=r"model.channels=\[8\] is used by model.backbone=conv only"):
        validate(cfg)
    validate(Config(model=DenoisingAEConfig(backbone="conv", channels=[8])))
    # the VAE's dense widths default to [256, 256, 128]: its conv backbone keeps them, and is not refused for it
    validate(compose_config("model=vae", "model.backbone=conv"))
    with pytest.raises(ConfigError, match=r"model.hidden_dims=\[256, 128\] is used by model.backbone=dense only"):
        validate(compose_config("model=vae", "model.backbone=conv", "model.hidden_dims=[256,128]"))


def test_a_section_whose_name_does_not_match_its_shape_is_refused() -> None:
    cfg = Config(optimizer=SGDConfig())
    cfg.optimizer.name = "adam"
    with pytest.raises(ConfigError, match="choose it with optimizer=adam"):
        validate(cfg)


def test_a_format_1_config_loads_into_the_shapes_of_its_choices() -> None:
    """Checkpoints written before per-choice shapes held one flat model section with every key."""
    old = ('{"model": {"name": "conv_ae", "backbone": "conv", "latent_dim": 5, "hidden_dims": [256, 128], '
           '"channels": [8, 16], "noise": {"kind": "none", "level": 0.0}}, "optimizer": {"name": "sgd", "lr": 0.1, '
           '"momentum": 0.5, "betas": [0.9, 0.999]}, "data": {"name": "digits", "path": null, "batch_size": 32}}')
    cfg = from_json(old)
    assert cfg.model == ConvAEConfig(latent_dim=5, channels=[8, 16])
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.data.batch_size) == (0.1, 0.5, 32)
