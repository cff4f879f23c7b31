"""Models: every family, backbone, activation and init builds; conv adapts to any image size."""

from __future__ import annotations

import pytest
import torch

from aetrain.config import CHOICES, ConvAEConfig, DenseAEConfig, VAEConfig, default_choice
from aetrain.data.spec import DataSpec
from aetrain.errors import ConfigError
from aetrain.models import (
    ACTIVATIONS,
    BACKBONES,
    FAMILIES,
    INITS,
    VariationalAutoencoder,
    build_model,
    build_objectives,
)
from conftest import FAST


def spec(shape: tuple[int, ...], unit: bool = True) -> DataSpec:
    return DataSpec("test", shape, unit, torch.tensor(0.0), torch.tensor(1.0), 0.0, 1.0)


IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 21, 34), (1, 5, 5)]


def test_every_family_has_a_config_shape_and_a_preset() -> None:
    from pathlib import Path

    presets = {p.stem for p in (Path(__file__).parents[1] / "configs" / "model").glob("*.yaml")}
    assert set(FAMILIES.names()) == set(CHOICES["model"]) == presets


def family_config(family: str, backbone: str, **keys: object):
    cfg = default_choice("model", family)
    if hasattr(cfg, "backbone"):
        cfg.backbone = backbone
    for key, value in keys.items():
        setattr(cfg, key, value)
    return cfg


FAMILY_BACKBONES = [(f, b) for f in FAMILIES.names() for b in BACKBONES.names()
                    if hasattr(default_choice("model", f), "backbone") or f == f"{b}_ae"]


@pytest.mark.parametrize(("family", "backbone"), FAMILY_BACKBONES)
@pytest.mark.parametrize("shape", IMAGE_SHAPES)
def test_reconstruction_has_the_input_shape(family: str, backbone: str, shape: tuple[int, ...]) -> None:
    cfg = family_config(family, backbone, latent_dim=3)
    if backbone == "conv":
        cfg.channels = [8, 16, 16]
    model = build_model(cfg, spec(shape))
    x = torch.rand(4, *shape)
    z, x_hat, *_ = model(x)
    assert z.shape == (4, 3)
    assert x_hat.shape == x.shape
    assert model.decode(model.encode(x)).shape == x.shape
    train, val = build_objectives(cfg, spec(shape))
    terms = train(model.train(), x)
    assert list(terms) == list(train.names) and train.names[0] == "loss"
    assert all(t.ndim == 0 and torch.isfinite(t) for t in terms.values())
    assert list(val(model.eval(), x)) == list(val.names)


@pytest.mark.parametrize("activation", ACTIVATIONS.names())
@pytest.mark.parametrize("init", INITS.names())
def test_every_activation_and_init_builds_and_runs(activation: str, init: str) -> None:
    torch.manual_seed(0)
    model = build_model(ConvAEConfig(activation=activation, init=init, batch_norm=True, dropout=0.1), spec((1, 8, 8)))
    z, x_hat = model(torch.rand(4, 1, 8, 8))
    assert torch.isfinite(x_hat).all()
    assert any(isinstance(m, ACTIVATIONS.get(activation)) for m in model.modules())


def test_named_init_changes_the_weights_and_zeroes_biases() -> None:
    torch.manual_seed(0)
    default = build_model(DenseAEConfig(), spec((1, 8, 8)))
    torch.manual_seed(0)
    orth = build_model(DenseAEConfig(init="orthogonal"), spec((1, 8, 8)))
    first = orth.encoder[1]
    assert not torch.equal(default.encoder[1].weight, first.weight)
    assert torch.count_nonzero(first.bias) == 0
    w = first.weight  # (256, 64): orthonormal columns up to the relu gain
    gram = w.T @ w / torch.nn.init.calculate_gain("relu") ** 2
    torch.testing.assert_close(gram, torch.eye(64), atol=1e-4, rtol=0)


def test_output_activation_follows_the_data_range() -> None:
    x = torch.randn(8, 5) * 10
    unit = build_model(DenseAEConfig(), spec((5,), unit=True))
    free = build_model(DenseAEConfig(), spec((5,), unit=False))
    assert unit(x)[1].min() >= 0 and unit(x)[1].max() <= 1  # sigmoid for [0, 1] data
    assert isinstance(free.output, torch.nn.Identity)  # linear for standardized data


def test_batch_norm_and_dropout_switches_add_layers() -> None:
    plain = build_model(DenseAEConfig(), spec((1, 8, 8)))
    both = build_model(DenseAEConfig(batch_norm=True, dropout=0.2), spec((1, 8, 8)))
    kinds = lambda m: {type(x) for x in m.modules()}  # noqa: E731
    assert torch.nn.BatchNorm1d not in kinds(plain) and torch.nn.Dropout not in kinds(plain)
    assert {torch.nn.BatchNorm1d, torch.nn.Dropout} <= kinds(both)


def test_conv_backbone_on_tabular_rows_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"model=conv_ae \(a conv backbone\) needs image data"):
        build_model(ConvAEConfig(), spec((10,)))


@pytest.mark.parametrize(("key", "value"), [("activation", "swish"), ("init", "he"), ("output_activation", "relu6"),
                                            ("backbone", "transformer")])
def test_unknown_component_names_list_the_choices(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"model.{key}='{value}' is not one of: "):
        build_model(VAEConfig(**{key: value}), spec((1, 8, 8)))


def test_vae_samples_its_code_in_training_and_uses_the_mean_otherwise() -> None:
    torch.manual_seed(0)
    model = build_model(VAEConfig(latent_dim=3), spec((1, 8, 8)))
    assert isinstance(model, VariationalAutoencoder)
    x = torch.rand(5, 1, 8, 8)
    z_train, _, mu, logvar = model.train()(x)
    assert mu.shape == logvar.shape == (5, 3) and not torch.equal(z_train, mu)
    z_eval, x_hat, mu_eval, _ = model.eval()(x)
    assert torch.equal(z_eval, mu_eval)
    torch.testing.assert_close(model.encode(x), mu_eval)
    torch.testing.assert_close(model.reconstruct(x), x_hat)
    g = torch.Generator().manual_seed(1)
    samples = model.sample(6, g)
    assert samples.shape == (6, 1, 8, 8) and (0 <= samples).all() and (samples <= 1).all()
    assert torch.equal(samples, model.sample(6, torch.Generator().manual_seed(1)))


def test_encode_decode_work_in_data_units() -> None:
    shift, scale = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([2.0, 0.5, 4.0])
    s = DataSpec("rows", (3,), False, shift, scale, -2.0, 2.0)
    model = build_model(DenseAEConfig(latent_dim=2), s).eval()
    x = torch.randn(6, 3)
    z, x_hat_model_units = model((x - shift) / scale)
    torch.testing.assert_close(model.encode(x), z)
    torch.testing.assert_close(model.reconstruct(x), x_hat_model_units * scale + shift)


# --- a code as wide as the input is flagged, unless the family constrains it ----------------------------------------

@pytest.mark.parametrize("model, latent, warned", [("dense_ae", 64, True), ("conv_ae", 80, True),
                                                   ("dense_ae", 63, False), ("sparse_ae", 64, False)])
def test_a_code_as_wide_as_the_input_is_warned_about_in_one_line(cli, model: str, latent: int, warned: bool) -> None:
    result = cli(*FAST, "trainer.max_epochs=1", f"model={model}", f"model.latent_dim={latent}", "outputs.plot_every=0")
    assert result.returncode == 0, result.output
    lines = [line for line in result.out.splitlines() if "the input (64 values a sample)" in line]
    assert len(lines) == int(warned), result.out
    if warned:
        wide = "as wide as" if latent == 64 else "wider than"
        assert lines[0].startswith(f"model.latent_dim={latent} is {wide} the input (64 values a sample): ")
