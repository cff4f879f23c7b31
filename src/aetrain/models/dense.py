"""Dense (MLP) backbone: flatten -> hidden layers -> linear code; the decoder mirrors it."""

from __future__ import annotations

import math

from torch import nn

from aetrain.config import ModelConfig
from aetrain.models.blocks import hidden_block


def build_dense(cfg: ModelConfig, shape: tuple[int, ...], *, code_width: int) -> tuple[nn.Module, nn.Module]:
    """Encoder (B, *shape) -> (B, code_width) and decoder (B, latent_dim) -> (B, *shape), for inputs of
    `shape` (C, H, W) or (D,). `cfg` has `hidden_dims`."""
    in_dim = math.prod(shape)
    widths = [in_dim, *cfg.hidden_dims]
    opts = dict(activation=cfg.activation, batch_norm=cfg.batch_norm, dropout=cfg.dropout, conv=False)

    encoder: list[nn.Module] = [nn.Flatten()]  # (B, *shape) -> (B, in_dim)
    for a, b in zip(widths[:-1], widths[1:]):
        encoder += hidden_block(nn.Linear(a, b), b, **opts)
    encoder.append(nn.Linear(widths[-1], code_width))  # a linear code: regularisers see it raw

    back = [cfg.latent_dim, *reversed(cfg.hidden_dims)]
    decoder: list[nn.Module] = []
    for a, b in zip(back[:-1], back[1:]):
        decoder += hidden_block(nn.Linear(a, b), b, **opts)
    decoder += [nn.Linear(back[-1], in_dim), nn.Unflatten(1, shape)]  # (B, in_dim) -> (B, *shape)
    return nn.Sequential(*encoder), nn.Sequential(*decoder)
