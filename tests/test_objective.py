"""The objective: noise only in training, loss against the clean input, sparsity penalties."""

from __future__ import annotations

import math

import pytest
import torch

from aetrain.config import ModelConfig, NoiseConfig, SparsityConfig
from aetrain.data.spec import DataSpec
from aetrain.errors import ConfigError
from aetrain.models import LOSSES, NOISE, build_model, build_objectives

SPEC = DataSpec("digits", (1, 8, 8), True, torch.tensor(0.0), torch.tensor(1.0), 0.0, 1.0)


class Recorder(torch.nn.Module):
    """Returns what it was given, so a test can see the model's input."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen = x
        return x.flatten(1), x.clamp(0, 1)


@pytest.mark.parametrize("kind", [k for k in NOISE.names() if k != "none"])
def test_noise_corrupts_training_inputs_but_not_validation_inputs_and_loss_uses_clean_x(kind: str) -> None:
    torch.manual_seed(0)
    train, val = build_objectives(ModelConfig(noise=NoiseConfig(kind, 0.3)), SPEC)
    x = torch.rand(16, 1, 8, 8)
    model = Recorder()
    terms = train(model, x)
    assert not torch.equal(model.seen, x)
    expected = torch.nn.functional.mse_loss(model.seen.clamp(0, 1), x)  # against the clean input
    torch.testing.assert_close(terms.reconstruction, expected)
    val(model, x)
    assert torch.equal(model.seen, x)


def test_noise_levels_mean_what_the_docs_say() -> None:
    torch.manual_seed(0)
    x = torch.full((200, 1, 8, 8), 0.5)
    masked = build_objectives(ModelConfig(noise=NoiseConfig("masking", 0.25)), SPEC)[0].corrupt(x)
    assert abs((masked == 0).float().mean().item() - 0.25) < 0.02
    sp = build_objectives(ModelConfig(noise=NoiseConfig("salt_pepper", 0.2)), SPEC)[0].corrupt(x)
    assert abs((sp == 0).float().mean().item() - 0.1) < 0.02 and abs((sp == 1).float().mean().item() - 0.1) < 0.02
    g = build_objectives(ModelConfig(noise=NoiseConfig("gaussian", 0.1)), SPEC)[0].corrupt(x)
    assert abs((g - x).std().item() - 0.1) < 0.005


def test_l1_penalty_is_weight_times_batch_mean_of_code_l1() -> None:
    _, val = build_objectives(ModelConfig(sparsity=SparsityConfig("l1", 0.5)), SPEC)
    z = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    assert val.penalty(z).item() == pytest.approx(0.5 * (3 + 3) / 2)


def test_kl_penalty_is_zero_at_the_target_activation_and_positive_elsewhere() -> None:
    _, val = build_objectives(ModelConfig(sparsity=SparsityConfig("kl", 1.0, 0.2)), SPEC)
    at_target = torch.full((4, 3), math.log(0.2 / 0.8))  # sigmoid(z) == 0.2
    assert val.penalty(at_target).item() == pytest.approx(0.0, abs=1e-6)
    assert val.penalty(torch.zeros(4, 3)).item() > 0.1


def test_no_regulariser_means_zero_penalty_and_identity_inputs() -> None:
    train, _ = build_objectives(ModelConfig(), SPEC)
    x = torch.rand(3, 1, 8, 8)
    assert train.corrupt(x) is x
    assert train.penalty(torch.randn(3, 4)).item() == 0.0


@pytest.mark.parametrize("loss", LOSSES.names())
def test_every_loss_trains_under_autocast(loss: str) -> None:
    model = build_model(ModelConfig(loss=loss), SPEC)
    train, _ = build_objectives(ModelConfig(loss=loss), SPEC)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = train(model, torch.rand(8, 1, 8, 8))
    terms.loss.backward()
    assert terms.loss.dtype == torch.float32 and torch.isfinite(terms.loss)


def test_bce_on_standardized_data_is_refused() -> None:
    spec = DataSpec("rows", (4,), False, torch.zeros(4), torch.ones(4), -3.0, 3.0)
    with pytest.raises(ConfigError, match="model.loss=bce needs data in \\[0, 1\\]"):
        build_objectives(ModelConfig(loss="bce"), spec)
