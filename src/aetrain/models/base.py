"""The autoencoder every backbone builds: encoder, decoder, output activation, data scaling.

Two views of the same network:
- `forward(x)` works in *model units* (the scaled tensors the engine trains on) and returns the
  code and the reconstruction, which is what the training objective needs;
- `encode`, `decode` and `reconstruct` take and return data in the units the user gave
  (images in [0, 1], tabular rows as they were), applying the stored scaling themselves.
"""

from __future__ import annotations

import torch
from torch import nn


class Scaling(nn.Module):
    """x -> (x - shift) / scale with buffers saved in the checkpoint; identity values for [0, 1] data."""

    def __init__(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("shift", shift.clone().float())
        self.register_buffer("scale", scale.clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class Autoencoder(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, output: nn.Module, scaling: Scaling) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.output = output
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model units in, (code, reconstruction in model units) out."""
        z = self.encoder(x)  # (B, *shape) -> (B, latent_dim)
        return z, self.output(self.decoder(z))  # (B, latent_dim) -> (B, *shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Data in the training data's units -> code (B, latent_dim)."""
        return self.encoder(self.scaling(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Code (B, latent_dim) -> data in the training data's units."""
        return self.scaling.inverse(self.output(self.decoder(z)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x)) without gradients, in the training data's units."""
        return self.decode(self.encode(x))
