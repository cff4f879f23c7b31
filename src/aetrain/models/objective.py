"""The training objective: corrupt -> reconstruct -> loss (+ latent penalty).

Denoising and sparsity are objects built once from the config; "off" is an identity
corruption and a zero penalty, so the engine computes `objective(model, x)` the same way
for every model family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aetrain.config import ModelConfig, NoiseConfig, SparsityConfig
from aetrain.data.spec import DataSpec
from aetrain.errors import ConfigError
from aetrain.registry import Registry

Corruption = Callable[[torch.Tensor], torch.Tensor]
Penalty = Callable[[torch.Tensor], torch.Tensor]

LOSSES: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry("model.loss")
LOSSES.add("mse", F.mse_loss)
LOSSES.add("l1", F.l1_loss)
LOSSES.add("smooth_l1", F.smooth_l1_loss)
LOSSES.add("bce", F.binary_cross_entropy)

NOISE: Registry[Callable[[NoiseConfig, DataSpec], Corruption]] = Registry("model.noise.kind")
SPARSITY: Registry[Callable[[SparsityConfig], Penalty]] = Registry("model.sparsity.kind")


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


@NOISE.register("none")
def _no_noise(cfg: NoiseConfig, spec: DataSpec) -> Corruption:
    return identity


@NOISE.register("gaussian")
def _gaussian(cfg: NoiseConfig, spec: DataSpec) -> Corruption:
    return lambda x: x + cfg.level * torch.randn_like(x)


@NOISE.register("masking")
def _masking(cfg: NoiseConfig, spec: DataSpec) -> Corruption:
    return lambda x: x * (torch.rand_like(x) >= cfg.level)  # zero a `level` share of the entries


@NOISE.register("salt_pepper")
def _salt_pepper(cfg: NoiseConfig, spec: DataSpec) -> Corruption:
    def corrupt(x: torch.Tensor) -> torch.Tensor:
        u = torch.rand_like(x)  # half of the hit entries go to the data's minimum, half to its maximum
        return torch.where(u < cfg.level / 2, spec.low, torch.where(u < cfg.level, spec.high, x))

    return corrupt


@SPARSITY.register("none")
def _no_penalty(cfg: SparsityConfig) -> Penalty:
    return lambda z: z.new_zeros(())


@SPARSITY.register("l1")
def _l1(cfg: SparsityConfig) -> Penalty:
    return lambda z: cfg.weight * z.abs().sum(dim=1).mean()  # (B, latent) -> (): L1 per sample, batch mean


@SPARSITY.register("kl")
def _kl(cfg: SparsityConfig) -> Penalty:
    rho = cfg.target

    def penalty(z: torch.Tensor) -> torch.Tensor:
        rho_hat = torch.sigmoid(z).mean(dim=0).clamp(1e-6, 1 - 1e-6)  # (B, latent) -> (latent,) mean activation
        kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
        return cfg.weight * kl.sum()

    return penalty


@dataclass
class Terms:
    """One batch's loss and its parts, as 0-d tensors (kept on the device; no host sync)."""

    loss: torch.Tensor  # what is optimised: reconstruction + penalty
    reconstruction: torch.Tensor
    penalty: torch.Tensor


@dataclass
class Objective:
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    corrupt: Corruption
    penalty: Penalty

    def __call__(self, model: torch.nn.Module, x: torch.Tensor) -> Terms:
        z, x_hat = model(self.corrupt(x))  # the loss compares against the clean input
        with torch.autocast(x.device.type, enabled=False):  # losses in fp32; bce refuses autocast
            rec = self.loss_fn(x_hat.float(), x.float())
            pen = self.penalty(z.float())
        return Terms(rec + pen, rec, pen)


def build_objectives(cfg: ModelConfig, spec: DataSpec) -> tuple[Objective, Objective]:
    """(training objective, validation objective). Validation sees clean inputs."""
    loss_fn = LOSSES.get(cfg.loss)
    if cfg.loss == "bce" and not spec.unit_interval:
        raise ConfigError(f"model.loss=bce needs data in [0, 1]; data '{spec.name}' is standardized: use mse, l1 or smooth_l1")
    penalty = SPARSITY.get(cfg.sparsity.kind)(cfg.sparsity)
    train = Objective(loss_fn, NOISE.get(cfg.noise.kind)(cfg.noise, spec), penalty)
    return train, Objective(loss_fn, identity, penalty)
