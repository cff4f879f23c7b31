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

from aetrain.config import DenoisingKeys, ModelConfig, SparsityKeys, VariationalKeys
from aetrain.data.spec import DataSpec
from aetrain.errors import ConfigError
from aetrain.models.base import Autoencoder, Scaling, VariationalAutoencoder
from aetrain.models.blocks import ACTIVATIONS, OUTPUT_ACTIVATIONS, init_weights
from aetrain.models.conv import build_conv
from aetrain.models.dense import build_dense
from aetrain.models.objective import (
    NOISE,
    SPARSITY,
    Objective,
    Terms,
    build_reconstruction,
    check_output_range,
    identity,
    loss_function,
    output_activation,
)
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
    # (model, n, generator) -> (n, *shape), model units
    draw: Callable[[Autoencoder, int, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Family:
    """A model family: `model=<name>` builds its model and its objectives."""

    build: Callable[[ModelConfig, DataSpec], Autoencoder]  # a freshly initialised model on the CPU
    objectives: Callable[[ModelConfig, DataSpec], tuple[Objective, Objective]]  # (training, validation)
    galleries: tuple[Gallery, ...] = ()
    own: bool = False  # registered by your own code (`aetrain.register_model`), which may not run on the meta device


FAMILIES: Registry[Family] = Registry("model")


def assemble(cfg: ModelConfig, spec: DataSpec, backbone: Backbone, *, cls: type[Autoencoder] = Autoencoder,
             code_width: int | None = None) -> Autoencoder:
    """The backbone's encoder and decoder with the output activation and the data scaling, initialised."""
    ACTIVATIONS.get(cfg.activation)  # fail on a bad name before building anything
    output = build_output(cfg, spec)
    encoder, decoder = backbone(cfg, spec.shape, code_width=code_width or cfg.latent_dim)
    model = cls(encoder, decoder, output, Scaling(spec.shift, spec.scale), latent_dim=cfg.latent_dim, spec=spec)
    init_weights(model, cfg.init, cfg.activation)
    return model


def build_output(cfg: ModelConfig, spec: DataSpec) -> nn.Module:
    """The output activation `model.output_activation` names; auto = sigmoid for data in [0, 1], else identity."""
    output = output_activation(cfg, spec)
    if output not in OUTPUT_ACTIVATIONS:
        raise ConfigError(f"model.output_activation={cfg.output_activation!r} is not one of: auto, "
                          + ", ".join(OUTPUT_ACTIVATIONS.names()))
    return OUTPUT_ACTIVATIONS.get(output)()


def chosen_backbone(cfg: ModelConfig) -> Backbone:
    return BACKBONES.get(cfg.backbone)


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
    check_output_range(cfg, spec)
    loss_fn, d = loss_function(cfg, spec), math.prod(spec.shape)
    return (ELBO(loss_fn, cfg.beta, cfg.kl_warmup_epochs, d, validation=False),
            ELBO(loss_fn, cfg.beta, cfg.kl_warmup_epochs, d, validation=True))


@dataclass(frozen=True)
class ObjectiveKind:
    """A built-in objective: what it trains, the config keys it adds (a mixin of `aetrain.config`), and what it needs
    of the model. The built-in families use them, and so may a model of your own (`register_model(objective=)`)."""

    objectives: Callable[[ModelConfig, DataSpec], tuple[Objective, Objective]]  # (training, validation)
    keys: type | None = None  # the config keys it adds (DenoisingKeys, ...); None: none
    variational: bool = False  # the encoder emits a mean and a log-variance per code unit (2 x latent_dim)
    galleries: tuple[Gallery, ...] = ()  # pictures of its own


OBJECTIVES: Registry[ObjectiveKind] = Registry("objective")
OBJECTIVES.add("reconstruction", ObjectiveKind(build_reconstruction))
OBJECTIVES.add("denoising", ObjectiveKind(
    lambda cfg, spec: build_reconstruction(cfg, spec, corrupt=NOISE.get(cfg.noise.kind)(cfg.noise, spec)),
    keys=DenoisingKeys))
OBJECTIVES.add("sparse", ObjectiveKind(
    lambda cfg, spec: build_reconstruction(cfg, spec, penalty=SPARSITY.get(cfg.sparsity.kind)(cfg.sparsity)),
    keys=SparsityKeys))
OBJECTIVES.add("vae", ObjectiveKind(
    _vae_objectives, keys=VariationalKeys, variational=True,
    galleries=(Gallery("samples", "decoded draws from the prior N(0, I)",
                       lambda model, n, g: model.sample_model_units(n, g)),)))


def builtin(backbone: Callable[[ModelConfig], Backbone], objective: str) -> Family:
    """A built-in family: a backbone of aetrain's (chosen by the config) trained with a built-in objective."""
    kind = OBJECTIVES.get(objective)
    cls = VariationalAutoencoder if kind.variational else Autoencoder

    def build(cfg: ModelConfig, spec: DataSpec) -> Autoencoder:
        return assemble(cfg, spec, backbone(cfg), cls=cls, code_width=2 * cfg.latent_dim if kind.variational else None)

    return Family(build, kind.objectives, kind.galleries)


FAMILIES.add("dense_ae", builtin(lambda cfg: build_dense, "reconstruction"))
FAMILIES.add("conv_ae", builtin(lambda cfg: build_conv, "reconstruction"))
FAMILIES.add("denoising_ae", builtin(chosen_backbone, "denoising"))
FAMILIES.add("sparse_ae", builtin(chosen_backbone, "sparse"))
FAMILIES.add("vae", builtin(chosen_backbone, "vae"))

__all__ = ["BACKBONES", "ELBO", "FAMILIES", "OBJECTIVES", "Family", "Gallery", "ObjectiveKind", "assemble",
           "build_output", "builtin", "identity"]
