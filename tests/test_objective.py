"""Objectives: named terms, noise only in training, loss against the clean input, penalties, the ELBO."""

from __future__ import annotations

import math

import pytest
import torch

from aetrain.config import DenoisingAEConfig, DenseAEConfig, NoiseConfig, SparseAEConfig, SparsityConfig, VAEConfig
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
    train, val = build_objectives(DenoisingAEConfig(noise=NoiseConfig(kind, 0.3)), SPEC)
    x = torch.rand(16, 1, 8, 8)
    model = Recorder()
    terms = train(model, x)
    assert not torch.equal(model.seen, x)
    expected = torch.nn.functional.mse_loss(model.seen.clamp(0, 1), x)  # against the clean input
    torch.testing.assert_close(terms["reconstruction"], expected)
    assert list(terms) == ["loss", "reconstruction", "penalty"]
    val(model, x)
    assert torch.equal(model.seen, x)


def test_noise_levels_mean_what_the_docs_say() -> None:
    torch.manual_seed(0)
    x = torch.full((200, 1, 8, 8), 0.5)
    masked = build_objectives(DenoisingAEConfig(noise=NoiseConfig("masking", 0.25)), SPEC)[0].corrupt(x)
    assert abs((masked == 0).float().mean().item() - 0.25) < 0.02
    sp = build_objectives(DenoisingAEConfig(noise=NoiseConfig("salt_pepper", 0.2)), SPEC)[0].corrupt(x)
    assert abs((sp == 0).float().mean().item() - 0.1) < 0.02 and abs((sp == 1).float().mean().item() - 0.1) < 0.02
    g = build_objectives(DenoisingAEConfig(noise=NoiseConfig("gaussian", 0.1)), SPEC)[0].corrupt(x)
    assert abs((g - x).std().item() - 0.1) < 0.005


def test_l1_penalty_is_weight_times_batch_mean_of_code_l1() -> None:
    _, val = build_objectives(SparseAEConfig(sparsity=SparsityConfig("l1", 0.5)), SPEC)
    z = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    assert val.penalty(z).item() == pytest.approx(0.5 * (3 + 3) / 2)


def test_kl_penalty_is_zero_at_the_target_activation_and_positive_elsewhere() -> None:
    _, val = build_objectives(SparseAEConfig(sparsity=SparsityConfig("kl", 1.0, 0.2)), SPEC)
    at_target = torch.full((4, 3), math.log(0.2 / 0.8))  # sigmoid(z) == 0.2
    assert val.penalty(at_target).item() == pytest.approx(0.0, abs=1e-6)
    assert val.penalty(torch.zeros(4, 3)).item() > 0.1


def test_no_regulariser_means_zero_penalty_and_identity_inputs() -> None:
    train, _ = build_objectives(DenseAEConfig(), SPEC)
    x = torch.rand(3, 1, 8, 8)
    assert train.corrupt(x) is x
    assert train.penalty(torch.randn(3, 4)).item() == 0.0


@pytest.mark.parametrize("loss", LOSSES.names())
def test_every_loss_trains_under_autocast(loss: str) -> None:
    model = build_model(DenseAEConfig(loss=loss), SPEC)
    train, _ = build_objectives(DenseAEConfig(loss=loss), SPEC)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = train(model, torch.rand(8, 1, 8, 8))
    terms["loss"].backward()
    assert terms["loss"].dtype == torch.float32 and torch.isfinite(terms["loss"])


def test_bce_on_standardized_data_is_refused() -> None:
    spec = DataSpec("rows", (4,), False, torch.zeros(4), torch.ones(4), -3.0, 3.0)
    with pytest.raises(ConfigError, match="model.loss=bce needs data in \\[0, 1\\]"):
        build_objectives(DenseAEConfig(loss="bce"), spec)


def test_validation_loss_of_a_reconstruction_objective_is_the_reconstruction_alone() -> None:
    train, val = build_objectives(SparseAEConfig(sparsity=SparsityConfig("l1", 0.5)), SPEC)
    model = build_model(SparseAEConfig(), SPEC)
    x = torch.rand(4, 1, 8, 8)
    t, v = train(model, x), val(model, x)
    assert val.names == ("loss", "penalty") and v["penalty"] > 0
    torch.testing.assert_close(t["loss"], t["reconstruction"] + t["penalty"])
    torch.testing.assert_close(v["loss"], t["reconstruction"])  # no noise: the same reconstruction


def test_elbo_is_the_negative_evidence_lower_bound_per_element_and_warms_up() -> None:
    cfg = VAEConfig(latent_dim=3, beta=2.0, kl_warmup_epochs=4)
    torch.manual_seed(0)
    model = build_model(cfg, SPEC).eval()  # eval: the code is the mean, so the terms are repeatable
    train, val = build_objectives(cfg, SPEC)
    x = torch.rand(5, 1, 8, 8)
    mu, logvar = model.posterior(x)
    kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1).mean() / 64  # per input element
    rec = torch.nn.functional.binary_cross_entropy(model(x)[1], x)  # loss=auto: bce for data in [0, 1]
    v = val(model, x)
    torch.testing.assert_close(v["kl"], kl)
    torch.testing.assert_close(v["reconstruction"], rec)
    torch.testing.assert_close(v["loss"], rec + 2.0 * kl)  # validation: the full beta
    train.set_progress(1.0)  # a quarter of the warm-up
    torch.testing.assert_close(train(model, x)["loss"], rec + 0.5 * kl)
    train.set_progress(10.0)
    torch.testing.assert_close(train(model, x)["loss"], rec + 2.0 * kl)
