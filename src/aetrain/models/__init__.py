"""Autoencoders by family name; each family builds its model and its objectives. Families of your own:
`register_model` (`aetrain.models.custom`)."""

from __future__ import annotations

import torch

from aetrain.config import ModelConfig
from aetrain.data.spec import DataSpec
from aetrain.models.base import Autoencoder, VariationalAutoencoder
from aetrain.models.blocks import ACTIVATIONS, INITS, OUTPUT_ACTIVATIONS
from aetrain.models.custom import register_model
from aetrain.models.families import BACKBONES, FAMILIES, OBJECTIVES, Family, Gallery
from aetrain.models.objective import LOSSES, NOISE, SPARSITY, Objective, Terms

__all__ = [
    "ACTIVATIONS", "BACKBONES", "FAMILIES", "INITS", "LOSSES", "NOISE", "OBJECTIVES", "OUTPUT_ACTIVATIONS",
    "SPARSITY", "Autoencoder", "Family", "Gallery", "Objective", "Terms", "VariationalAutoencoder", "build_model",
    "build_objectives", "count_parameters", "register_model",
]


def build_model(cfg: ModelConfig, spec: DataSpec) -> Autoencoder:
    """The configured autoencoder for data described by `spec`, on the CPU, freshly initialised."""
    return FAMILIES.get(cfg.name).build(cfg, spec)


def build_objectives(cfg: ModelConfig, spec: DataSpec) -> tuple[Objective, Objective]:
    """(training objective, validation objective) of the model's family."""
    return FAMILIES.get(cfg.name).objectives(cfg, spec)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
