"""Model families by registered name: each builds its model *and* its objectives.

`model=<name>` picks a family from `FAMILIES`; its config shape is `aetrain.config.CHOICES["model"][name]`.
A family may also draw pictures of its own (`galleries`: the VAE's samples from the prior), which
the run draws next to the reconstructions. Adding a family: a config dataclass registered with
`@choice("model", name)`, a preset configs/model/<name>.yaml naming its schema, and an entry here;
the engine, outputs and checkpoints need no change (tests parametrize over this registry).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from aetrain.config import ModelConfig
from aetrain.data.spec import DataSpec
from aetrain.errors import ConfigError
from aetrain.models.base import Autoencoder, Scaling, VariationalAutoencoder
from aetrain.models.blocks import ACTIVATIONS, OUTPUT_ACTIVATIONS, init_weights
from aetrain.models.conv import build_conv
from aetrain.models.dense import build_dense
from aetrain.models.objective import (NOISE, SPARSITY, Objective, Terms, build_reconstruction, identity,
                                      loss_function)
from aetrain.registry import Registry

Backbone = Callable[..., tuple[nn.Module, nn.Module]]  # (cfg, shape, *, code_width) -> (encoder, decoder)
BACKBONES: Registry[Backbone] = Registry("model.backbone")
BACKBONES.add("dense", build_dense)
BACKBONES.add("conv", build_conv)


@dataclass(frozen=True)
class Gallery:
    """A picture a family draws whenever the run draws its pictures, besides the reconstructions."""

    folder: str  # the run-dir folder (<folder>/epoch_NNN.png) and the TensorBoard image tag
    title: str  # what the picture shows, for people
    draw: Callable[[Autoencoder, int, torch.Generator], torch.Tensor]  # (model, n, generator) -> (n, *shape), model units


@dataclass(frozen=True)
class Family:
    build: Callable[[ModelConfig, DataSpec], Autoencoder]  # a freshly initialised model on the CPU
    objectives: Callable[[ModelConfig, DataSpec], tuple[Objective, Objective]]  # (training, validation)
    galleries: tuple[Gallery, ...] = ()


FAMILIES: Registry[Family] = Registry("model")


def assemble(cfg: ModelConfig, spec: DataSpec, backbone: Backbone, *, cls: type[Autoencoder] = Autoencoder,
             code_width: int | None = None) -> Autoencoder:
    """The backbone's encoder and decoder with the output activation and the data scaling, initialised."""
    ACTIVATIONS.get(cfg.activation)  # fail on a bad name before building anything
    encoder, decoder = backbone(cfg, spec.shape, code_width=code_width or cfg.latent_dim)
    output = ("sigmoid" if spec.unit_interval else "identity") if cfg.output_activation == "auto" else cfg.output_activation
    if output not in OUTPUT_ACTIVATIONS:
        raise ConfigError(f"model.output_activation={cfg.output_activation!r} is not one of: auto, "
                          + ", ".join(OUTPUT_ACTIVATIONS.names()))
    model = cls(encoder, decoder, OUTPUT_ACTIVATIONS.get(output)(), Scaling(spec.shift, spec.scale),
                latent_dim=cfg.latent_dim, spec=spec)
    init_weights(model, cfg.init, cfg.activation)
    return model


def chosen_backbone(cfg: ModelConfig) -> Backbone:
    return BACKBONES.get(cfg.backbone)


FAMILIES.add("dense_ae", Family(lambda cfg, spec: assemble(cfg, spec, build_dense), build_reconstruction))
FAMILIES.add("conv_ae", Family(lambda cfg, spec: assemble(cfg, spec, build_conv), build_reconstruction))
FAMILIES.add("denoising_ae", Family(
    lambda cfg, spec: assemble(cfg, spec, chosen_backbone(cfg)),
    lambda cfg, spec: build_reconstruction(cfg, spec, corrupt=NOISE.get(cfg.noise.kind)(cfg.noise, spec))))
FAMILIES.add("sparse_ae", Family(
    lambda cfg, spec: assemble(cfg, spec, chosen_backbone(cfg)),
    lambda cfg, spec: build_reconstruction(cfg, spec, penalty=SPARSITY.get(cfg.sparsity.kind)(cfg.sparsity))))


class ELBO(Objective):
    """The VAE's negative evidence lower bound per input element.

    `reconstruction` is the loss's mean over elements, as for every family; `kl` is
    KL(q(z|x) || N(0, I)) summed over the code and divided by the number of input elements D, so
    that with bce and beta = 1, `loss` x D is exactly the negative ELBO per sample (nats) and the
    numbers compare with the other families'. Training weighs kl by beta, ramped linearly from 0
    over `model.kl_warmup_epochs` (a device tensor, set before each step without a host sync);
    validation always uses the full beta.
    """

    def __init__(self, loss_fn: Callable, beta: float, warmup_epochs: float, num_elements: int, *,
                 validation: bool) -> None:
        self.loss_fn, self.beta, self.warmup, self.num_elements = loss_fn, beta, warmup_epochs, num_elements
        self.names = ("loss", "reconstruction", "kl")
        self.ramp = not validation and warmup_epochs > 0
        self.weight = torch.tensor(0.0 if self.ramp else beta)  # moved to the device by `to`
        self.warmed_up = not self.ramp

    def to(self, device: torch.device) -> ELBO:
        self.weight = self.weight.to(device)
        return self

    def set_progress(self, epochs: float) -> None:
        if self.warmed_up:
            return
        share = min(1.0, epochs / self.warmup)
        self.weight.fill_(self.beta * share)
        self.warmed_up = share >= 1.0

    def terms(self, x: torch.Tensor, outputs: tuple[torch.Tensor, ...]) -> Terms:
        _, x_hat, mu, logvar = outputs
        with torch.autocast(x.device.type, enabled=False):
            mu, logvar = mu.float(), logvar.float()
            rec = self.loss_fn(x_hat.float(), x.float())
            kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=1).mean() / self.num_elements  # (B, L) -> ()
        return {"loss": rec + self.weight * kl, "reconstruction": rec, "kl": kl}


def _vae_objectives(cfg: ModelConfig, spec: DataSpec) -> tuple[Objective, Objective]:
    loss_fn, d = loss_function(cfg, spec), math.prod(spec.shape)
    return (ELBO(loss_fn, cfg.beta, cfg.kl_warmup_epochs, d, validation=False),
            ELBO(loss_fn, cfg.beta, cfg.kl_warmup_epochs, d, validation=True))


FAMILIES.add("vae", Family(
    lambda cfg, spec: assemble(cfg, spec, chosen_backbone(cfg), cls=VariationalAutoencoder,
                               code_width=2 * cfg.latent_dim),
    _vae_objectives,
    galleries=(Gallery("samples", "decoded draws from the prior N(0, I)",
                       lambda model, n, g: model.sample_model_units(n, g)),),
))

__all__ = ["BACKBONES", "ELBO", "FAMILIES", "Family", "Gallery", "assemble", "identity"]
