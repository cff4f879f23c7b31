"""Convolutional backbone that adapts to any image size.

Each encoder layer is a stride-2 convolution; the decoder mirrors it with transposed
convolutions whose output_padding is computed from the recorded encoder sizes, so an 8x8 digit,
a 28x28 MNIST image, a 32x32 CIFAR image or any H x W comes back at exactly its input size.
"""

from __future__ import annotations

import math

from torch import nn

from aetrain.config import ModelConfig
from aetrain.errors import ConfigError
from aetrain.models.blocks import ACTIVATIONS, hidden_block

STRIDE = 2


def _down(size: int, kernel: int) -> int:
    pad = kernel // 2
    return (size + 2 * pad - kernel) // STRIDE + 1


def _output_padding(size_in: int, target: int, kernel: int) -> int:
    pad = kernel // 2
    return target - ((size_in - 1) * STRIDE - 2 * pad + kernel)  # in {0, 1} by construction


def build_conv(cfg: ModelConfig, shape: tuple[int, ...], *, code_width: int) -> tuple[nn.Module, nn.Module]:
    """Encoder (B, C, H, W) -> (B, code_width) and decoder (B, latent_dim) -> (B, C, H, W) for images of
    `shape` (C, H, W). `cfg` has `channels` and `kernel_size`."""
    if len(shape) != 3:
        raise ConfigError(
            f"model={cfg.name} (a conv backbone) needs image data (N x C x H x W); this data has rows of "
            f"{math.prod(shape)} features: use a dense model (model=dense_ae, or model.backbone=dense)"
        )
    k = cfg.kernel_size
    opts = dict(activation=cfg.activation, batch_norm=cfg.batch_norm, dropout=cfg.dropout, conv=True)
    channels = [shape[0], *cfg.channels]
    sizes = [tuple(shape[1:])]  # (H, W) before each encoder layer, then after the last
    encoder: list[nn.Module] = []
    for a, b in zip(channels[:-1], channels[1:]):
        encoder += hidden_block(nn.Conv2d(a, b, k, stride=STRIDE, padding=k // 2), b, **opts)
        sizes.append(tuple(_down(s, k) for s in sizes[-1]))
    flat = (channels[-1], *sizes[-1])
    encoder += [nn.Flatten(), nn.Linear(math.prod(flat), code_width)]  # (B, C, h, w) -> (B, code_width)

    decoder: list[nn.Module] = [nn.Linear(cfg.latent_dim, math.prod(flat)), ACTIVATIONS.get(cfg.activation)(),
                                nn.Unflatten(1, flat)]  # (B, latent_dim) -> (B, C, h, w)
    layers = list(zip(channels[:0:-1], channels[-2::-1], sizes[:0:-1], sizes[-2::-1]))
    for i, (a, b, size_in, size_out) in enumerate(layers):
        pad_out = tuple(_output_padding(si, so, k) for si, so in zip(size_in, size_out))
        up = nn.ConvTranspose2d(a, b, k, stride=STRIDE, padding=k // 2, output_padding=pad_out)
        last = i == len(layers) - 1  # the last layer emits the image: no norm, activation or dropout
        decoder += [up] if last else hidden_block(up, b, **opts)
    return nn.Sequential(*encoder), nn.Sequential(*decoder)
