"""The config tree: every group choice composes into the typed schema; validation and JSON."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from aetrain.cli.schema import register_configs
from aetrain.config import (
    CHOICES,
    Config,
    ConfigError,
    ConvAEConfig,
    DenoisingAEConfig,
    OutputsConfig,
    SGDConfig,
    TrainerConfig,
    check_ranges,
    field_comments,
    from_json,
    ranges_of,
    to_json,
    validate,
)
from conftest import FAST, assert_one_line_error

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
    chosen = (cfg.model.name, cfg.data.name, cfg.optimizer.name, cfg.scheduler.name)
    assert chosen == ("dense_ae", "digits", "adam", "none")


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


def config_dataclasses() -> list[type]:
    """Every config dataclass a user sets keys of: the training config, every choice of every group (and the
    sections nested in them), and each command's own section."""
    from aetrain.commands import COMMANDS

    roots = [Config, *(type(make()) for choices in CHOICES.values() for make in choices.values()),
             *(c.config for c in COMMANDS.values() if c.config is not None)]
    found: list[type] = []

    def walk(cls: type) -> None:
        if cls in found:
            return
        found.append(cls)
        for hint in typing.get_type_hints(cls).values():  # the annotations are strings (postponed): resolve them
            if dataclasses.is_dataclass(hint):
                walk(hint)

    for cls in roots:
        walk(cls)
    return found


def undocumented(cls: type) -> list[str]:
    """The fields of `cls` without a default or without a comment."""
    comments = field_comments(cls)
    return [f.name for f in dataclasses.fields(cls)
            if (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            or not comments.get(f.name)]


def test_the_walk_reaches_every_section_and_choice() -> None:
    names = {cls.__name__ for cls in config_dataclasses()}
    assert {"Config", "TrainerConfig", "OutputsConfig", "DiagnosticsConfig", "NoiseConfig", "SparsityConfig",
            "VAEConfig", "RMSpropConfig", "PlateauSchedulerConfig", "ImageFolderDataConfig", "EvalConfig",
            "LRFindConfig"} <= names


@pytest.mark.parametrize("cls", config_dataclasses(), ids=lambda cls: cls.__name__)
def test_every_field_has_a_default_and_a_comment(cls: type) -> None:
    assert undocumented(cls) == []


@dataclasses.dataclass
class _Undocumented:
    """A config section as a careless edit would leave it."""

    no_default: int  # a key every run would have to give
    documented: int = 1  # a key with a default and a comment
    no_comment: int = 2


def test_the_check_finds_a_field_without_a_default_or_a_comment() -> None:
    assert undocumented(_Undocumented) == ["no_default", "no_comment"]


@dataclasses.dataclass
class _Commented:
    """How --help reads a field's comment."""

    on_its_line: int = 1  # on its line
    continued: list[int] = dataclasses.field(default_factory=lambda: [1])  # on its line,
    # and on the lines below it

    # when a field has no comment of its own, the lines above it are its comment
    above: str = "x # not a comment"
    # a block of comment lines right above a field without a comment of its own is that field's, not the one above
    below: int = 0


@dataclasses.dataclass
class _Redeclared(_Commented):
    on_its_line: int = 5


def test_field_comments_are_read_from_the_line_below_and_above() -> None:
    assert field_comments(_Redeclared) == {
        "on_its_line": "on its line", "continued": "on its line, and on the lines below it",
        "above": "when a field has no comment of its own, the lines above it are its comment",
        "below": "a block of comment lines right above a field without a comment of its own is that field's, not the "
                 "one above"}


@pytest.mark.parametrize("cls", config_dataclasses(), ids=lambda cls: cls.__name__)
def test_every_number_has_its_range_next_to_it(cls: type) -> None:
    """A numeric key without a range would accept anything (inf, a negative count): each declares its own in its
    class's RANGES, never borrowing another key's of the same name."""
    hints = typing.get_type_hints(cls)
    numbers = [f.name for f in dataclasses.fields(cls)
               if {int, float} & {hints[f.name], *typing.get_args(hints[f.name]),
                                  *(a for arg in typing.get_args(hints[f.name]) for a in typing.get_args(arg))}
               and hints[f.name] is not bool]
    assert [name for name in numbers if name not in ranges_of(cls)] == []


def test_a_range_is_the_fields_own_not_one_of_the_same_name_elsewhere() -> None:
    """scheduler.patience has a range; trainer.early_stopping_patience its own; a key named alike in another
    section borrows nothing."""

    @dataclasses.dataclass
    class Section:
        patience: int = 3  # a key named like scheduler=plateau's

    assert ranges_of(Section) == {}
    check_ranges(Section(patience=-5), "section")  # no range declared: nothing to check

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


# --- no float key takes inf, -inf or nan ----------------------------------------------------------------------------

def _float_keys() -> list[tuple[str, str, str]]:
    """(group, choice, dotted key) of every float-valued key of every choice, trainer and outputs."""
    found = []

    def walk(obj: object, group: str, choice: str, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                walk(getattr(obj, f.name), group, choice, f"{prefix}{f.name}.")
            elif float in (hint, *typing.get_args(hint)) or hint == list[float]:
                found.append((group, choice, f"{prefix}{f.name}"))

    for group, choices in CHOICES.items():
        for name, make in choices.items():
            walk(make(), group, name, f"{group}.")
    walk(TrainerConfig(), "trainer", "", "trainer.")
    walk(OutputsConfig(), "outputs", "", "outputs.")
    return found


FLOAT_KEYS = _float_keys()


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=str)
@pytest.mark.parametrize(("group", "choice", "key"), FLOAT_KEYS, ids=lambda v: v if isinstance(v, str) else None)
def test_no_float_key_accepts_an_infinite_or_nan_value(group: str, choice: str, key: str, value: float) -> None:
    cfg = Config()
    if choice:
        setattr(cfg, group, CHOICES[group][choice]())
    *path, leaf = key.split(".")
    section = cfg
    for name in path:
        section = getattr(section, name)
    setattr(section, leaf, [value, 0.9] if isinstance(getattr(section, leaf), list) else value)
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=.* is out of range: must be "):
        validate(cfg)


def test_every_float_key_is_found() -> None:  # the parametrization above is only as good as this walk
    keys = {key for _, _, key in FLOAT_KEYS}
    assert {"optimizer.weight_decay", "optimizer.momentum", "optimizer.eps", "model.noise.level",
            "model.sparsity.weight", "model.sparsity.target", "model.beta", "optimizer.betas",
            "trainer.gradient_clip_val", "outputs.render_budget", "scheduler.min_lr"} <= keys


@pytest.mark.parametrize("args", [
    ["optimizer.weight_decay=inf"], ["optimizer=sgd", "optimizer.momentum=inf"], ["optimizer.eps=inf"],
    ["model=denoising_ae", "model.noise.level=inf"], ["model=sparse_ae", "model.sparsity.weight=inf"],
    ["optimizer=rmsprop", "optimizer.momentum=-inf"], ["model=sparse_ae", "model.sparsity.weight=nan"],
], ids=" ".join)
def test_infinite_values_are_refused_on_the_command_line(cli, args: list[str]) -> None:
    key = args[-1].partition("=")[0]
    assert_one_line_error(cli(*FAST, *args), f"{key}=")


# --- settings refused before anything is written: ones that failed late, ones that would be ignored -----------------

@pytest.mark.parametrize(("args", "message"), [
    (["model.batch_norm=true", "data.batch_size=1"], "model.batch_norm=true needs data.batch_size >= 2"),
    (["model=conv_ae", "model.batch_norm=true", "data.batch_size=1"], "model.batch_norm=true needs data.batch_size"),
    (["trainer.seed=18446744073709551616"], "trainer.seed=18446744073709551616 is out of range: must be an integer in "
                                            "[-2**63, 2**64 - 1]"),
    (["data.split_seed=-18446744073709551617"], "data.split_seed=-18446744073709551617 is out of range"),
    (["outputs.sample_seed=18446744073709551616"], "outputs.sample_seed=18446744073709551616 is out of range"),
    (["model=null"], "model=null: a run needs a model; choose one of: conv_ae, denoising_ae, dense_ae"),
    (["data=null"], "data=null: a run needs a data; choose one of: cifar10, digits"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_settings_that_failed_late_are_refused_before_anything_is_written(cli, args: list[str], message: str) -> None:
    assert_one_line_error(cli(*FAST, *args), message)


@pytest.mark.parametrize(("args", "message"), [
    # the four: each choice has its own keys, so a key of another choice is unknown
    (["data.path=rows.npy"], "data.path: unknown key for data=digits (a key of data=image_folder, tensor_file)"),
    (["model.channels=[8,16]"], "model.channels: unknown key for model=dense_ae (a key of model=conv_ae"),
    (["model.noise.level=0.3"], "model.noise: unknown key for model=dense_ae (a key of model=denoising_ae)"),
    (["model=sparse_ae", "model.noise.level=0.3"], "model.noise: unknown key for model=sparse_ae"),
    (["scheduler=step", "scheduler.patience=3"], "scheduler.patience: unknown key for scheduler=step"),
    (["scheduler=cosine", "scheduler.gamma=0.5"], "scheduler.gamma: unknown key for scheduler=cosine"),
    (["model=denoising_ae", "model.channels=[8]"], "model.channels=[8] is used by model.backbone=conv only"),
    # found since: keys that exist but would do nothing in this combination
    (["model=sparse_ae", "model.sparsity.target=0.1"], "model.sparsity.target=0.1 is used by model.sparsity.kind=kl "
                                                       "only; this model has model.sparsity.kind=l1"),
    (["trainer.gradient_clip_algorithm=value"], "trainer.gradient_clip_algorithm=value does nothing without "
                                                "trainer.gradient_clip_val"),
    (["scheduler=onecycle", "optimizer.betas=[0.8,0.999]"], "optimizer.betas=[0.8, 0.999]: scheduler=onecycle cycles "
                                                            "beta1 between 0.85 and 0.95"),
    (["scheduler=onecycle", "optimizer=sgd", "optimizer.momentum=0.5"], "optimizer.momentum=0.5: scheduler=onecycle "
                                                                        "cycles the momentum"),
    (["hparams_search=optuna"], "hparams_search=optuna is a search: run it as a multirun, aetrain -m "
                                "hparams_search=optuna"),
    # a launcher launches a sweep's jobs: a single run uses none (Hydra trains it here)
    (["hydra/launcher=fused"], "hydra/launcher=fused sets how a sweep's jobs are launched: run it as a multirun"),
    (["hydra/launcher=slurm"], "hydra/launcher=slurm sets how a sweep's jobs are launched: run it as a multirun"),
    (["hydra.launcher.max_group=8"], "hydra.launcher.max_group=8 sets how a sweep's jobs are launched"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_setting_that_would_be_ignored_is_one_line_error(cli, args: list[str], message: str) -> None:
    assert_one_line_error(cli(*FAST, *args), message)
