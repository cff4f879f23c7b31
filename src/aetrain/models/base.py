"""The autoencoder every family builds: encoder, decoder, output activation, data scaling.

Two views of the same network:
- `forward(x)` works in *model units* (the scaled tensors the engine trains on) and returns a
  tuple whose first two entries are the code and the reconstruction; a family may append what
  its objective needs (the VAE: the posterior's mean and log-variance). In eval mode the code is
  deterministic (a VAE's mean), so pictures, validation and `reconstruct` agree.
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
    def __init__(self, encoder: nn.Module, decoder: nn.Module, output: nn.Module, scaling: Scaling, *,
                 latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim  # size of the code (a plain attribute: not in the state dict)
        self.encoder = encoder
        self.decoder = decoder
        self.output = output
        self.scaling = scaling

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """Model units -> the code (B, latent_dim) that `reconstruct` decodes."""
        return self.encoder(x)  # (B, *shape) -> (B, latent_dim)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Code (B, latent_dim) -> reconstruction in model units (B, *shape)."""
        return self.output(self.decoder(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Model units in; (code, reconstruction in model units) out."""
        z = self.code(x)
        return z, self.generate(z)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Data in the training data's units -> code (B, latent_dim)."""
        return self.code(self.scaling(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Code (B, latent_dim) -> data in the training data's units."""
        return self.scaling.inverse(self.generate(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """decode(encode(x)) without gradients, in the training data's units."""
        return self.decode(self.encode(x))


class VariationalAutoencoder(Autoencoder):
    """The encoder emits (mean, log-variance) of a Gaussian code; training samples it, eval uses the mean."""

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)  # (B, 2 * latent_dim) -> 2 x (B, latent_dim)
        return mu, logvar

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]  # the mean: what `encode` and `reconstruct` use

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Model units in; (code, reconstruction, mean, log-variance) out. Training draws the code with the
        reparameterisation trick from the global generator (so it is seeded and resumable); eval takes the mean."""
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return z, self.generate(z), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` draws from the prior N(0, I) decoded, in the training data's units (on the model's device)."""
        return self.scaling.inverse(self.sample_model_units(n, generator))

    def sample_model_units(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` draws from the prior decoded, in model units. The draws are made on the CPU (with `generator`,
        or the global CPU generator), so a seed gives the same samples on every device."""
        z = torch.randn(n, self.latent_dim, generator=generator)  # (n, latent_dim)
        return self.generate(z.to(self.scaling.shift.device))
