"""Models: every backbone, activation and init builds; conv adapts to any image size."""

from __future__ import annotations

import pytest
import torch

from aetrain.config import ModelConfig
from aetrain.data.spec import DataSpec
from aetrain.errors import ConfigError
from aetrain.models import ACTIVATIONS, BACKBONES, INITS, build_model


def spec(shape: tuple[int, ...], unit: bool = True) -> DataSpec:
    return DataSpec("test", shape, unit, torch.tensor(0.0), torch.tensor(1.0), 0.0, 1.0)


IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 21, 34), (1, 5, 5)]


@pytest.mark.parametrize("backbone", BACKBONES.names())
@pytest.mark.parametrize("shape", IMAGE_SHAPES)
def test_reconstruction_has_the_input_shape(backbone: str, shape: tuple[int, ...]) -> None:
    model = build_model(ModelConfig(backbone=backbone, latent_dim=3, channels=[8, 16, 16]), spec(shape))
    x = torch.rand(4, *shape)
    z, x_hat = model(x)
    assert z.shape == (4, 3)
    assert x_hat.shape == x.shape
    assert model.decode(model.encode(x)).shape == x.shape


@pytest.mark.parametrize("activation", ACTIVATIONS.names())
@pytest.mark.parametrize("init", INITS.names())
def test_every_activation_and_init_builds_and_runs(activation: str, init: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="conv", activation=activation, init=init, batch_norm=True, dropout=0.1),
                        spec((1, 8, 8)))
    z, x_hat = model(torch.rand(4, 1, 8, 8))
    assert torch.isfinite(x_hat).all()
    assert any(isinstance(m, ACTIVATIONS.get(activation)) for m in model.modules())


def test_named_init_changes_the_weights_and_zeroes_biases() -> None:
    torch.manual_seed(0)
    default = build_model(ModelConfig(), spec((1, 8, 8)))
    torch.manual_seed(0)
    orth = build_model(ModelConfig(init="orthogonal"), spec((1, 8, 8)))
    first = orth.encoder[1]
    assert not torch.equal(default.encoder[1].weight, first.weight)
    assert torch.count_nonzero(first.bias) == 0
    w = first.weight  # (256, 64): orthonormal columns up to the relu gain
    gram = w.T @ w / torch.nn.init.calculate_gain("relu") ** 2
    torch.testing.assert_close(gram, torch.eye(64), atol=1e-4, rtol=0)


def test_output_activation_follows_the_data_range() -> None:
    x = torch.randn(8, 5) * 10
    unit = build_model(ModelConfig(), spec((5,), unit=True))
    free = build_model(ModelConfig(), spec((5,), unit=False))
    assert unit(x)[1].min() >= 0 and unit(x)[1].max() <= 1  # sigmoid for [0, 1] data
    assert isinstance(free.output, torch.nn.Identity)  # linear for standardized data


def test_batch_norm_and_dropout_switches_add_layers() -> None:
    plain = build_model(ModelConfig(), spec((1, 8, 8)))
    both = build_model(ModelConfig(batch_norm=True, dropout=0.2), spec((1, 8, 8)))
    kinds = lambda m: {type(x) for x in m.modules()}  # noqa: E731
    assert torch.nn.BatchNorm1d not in kinds(plain) and torch.nn.Dropout not in kinds(plain)
    assert {torch.nn.BatchNorm1d, torch.nn.Dropout} <= kinds(both)


def test_conv_backbone_on_tabular_rows_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="model.backbone=conv needs image data"):
        build_model(ModelConfig(backbone="conv"), spec((10,)))


@pytest.mark.parametrize(("key", "value"), [("activation", "swish"), ("init", "he"), ("output_activation", "relu6"),
                                            ("backbone", "transformer")])
def test_unknown_component_names_list_the_choices(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"model.{key}='{value}' is not one of: "):
        build_model(ModelConfig(**{key: value}), spec((1, 8, 8)))


def test_encode_decode_work_in_data_units() -> None:
    shift, scale = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([2.0, 0.5, 4.0])
    s = DataSpec("rows", (3,), False, shift, scale, -2.0, 2.0)
    model = build_model(ModelConfig(latent_dim=2), s).eval()
    x = torch.randn(6, 3)
    z, x_hat_model_units = model((x - shift) / scale)
    torch.testing.assert_close(model.encode(x), z)
    torch.testing.assert_close(model.reconstruct(x), x_hat_model_units * scale + shift)
