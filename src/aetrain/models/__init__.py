"""Autoencoders by name: a backbone (dense | conv) wrapped with its scaling and output activation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from aetrain.config import ModelConfig
from aetrain.data.spec import DataSpec
from aetrain.errors import ConfigError
from aetrain.models.base import Autoencoder, Scaling
from aetrain.models.blocks import ACTIVATIONS, INITS, OUTPUT_ACTIVATIONS, init_weights
from aetrain.models.conv import build_conv
from aetrain.models.dense import build_dense
from aetrain.models.objective import LOSSES, NOISE, SPARSITY, Objective, Terms, build_objectives
from aetrain.registry import Registry

BACKBONES: Registry[Callable[[ModelConfig, tuple[int, ...]], tuple[nn.Module, nn.Module]]] = Registry("model.backbone")
BACKBONES.add("dense", build_dense)
BACKBONES.add("conv", build_conv)

__all__ = [
    "ACTIVATIONS", "BACKBONES", "INITS", "LOSSES", "NOISE", "OUTPUT_ACTIVATIONS", "SPARSITY",
    "Autoencoder", "Objective", "Terms", "build_model", "build_objectives", "count_parameters",
]


def build_model(cfg: ModelConfig, spec: DataSpec) -> Autoencoder:
    """The configured autoencoder for data described by `spec`, on the CPU, freshly initialised."""
    ACTIVATIONS.get(cfg.activation)  # fail on a bad name before building anything
    encoder, decoder = BACKBONES.get(cfg.backbone)(cfg, spec.shape)
    output_name = ("sigmoid" if spec.unit_interval else "identity") if cfg.output_activation == "auto" else cfg.output_activation
    if output_name not in OUTPUT_ACTIVATIONS:
        raise ConfigError(f"model.output_activation={cfg.output_activation!r} is not one of: auto, "
                          + ", ".join(OUTPUT_ACTIVATIONS.names()))
    model = Autoencoder(encoder, decoder, OUTPUT_ACTIVATIONS.get(output_name)(), Scaling(spec.shift, spec.scale))
    init_weights(model, cfg.init, cfg.activation)
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
