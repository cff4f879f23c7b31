"""The autoencoder every family builds: encoder, decoder, output activation, data scaling.

Two views of the same network:
- `forward(x)` works in *model units* (the scaled tensors the engine trains on) and returns a
  tuple whose first two entries are the code and the reconstruction; a family may append what
  its objective needs (the VAE: the posterior's mean and log-variance). In eval mode the code is
  deterministic (a VAE's mean), so pictures, validation and `reconstruct` agree.
- `encode`, `decode` and `reconstruct` (the Python API) take and return data in *data units*,
  the form the training data had, applying the stored scaling themselves: images of the
  digits, torchvision sets and image folders as floats in [0, 1]; a tensor file's own values
  (a uint8 file's 0..255, float rows and images in their own units). They check what they are
  given (array type, dtype, shape, and the value range of data known to lie in an interval) and
  raise `InputError`, a ValueError, with one line saying what the model takes. They are inference:
  no autograd graph unless asked for with `grad=True`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from aetrain.data.spec import DataSpec
from aetrain.errors import DataError


class InputError(DataError, ValueError):
    """Data given to `encode`/`decode`/`reconstruct` that the model cannot take: its type, shape or units."""


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
                 latent_dim: int, spec: DataSpec | None = None) -> None:
        super().__init__()
        self.latent_dim = latent_dim  # size of the code (a plain attribute: not in the state dict)
        self.encoder = encoder
        self.decoder = decoder
        self.output = output
        self.scaling = scaling
        # what the Python API accepts (plain attributes): one sample's shape, and the data-unit interval of data
        # known to lie in one ([0, 1] images, a uint8 file's [0, 255]); None = not checked
        self.input_shape = tuple(spec.shape) if spec is not None else None
        unit = spec is not None and spec.unit_interval and spec.shift.numel() == 1 and spec.scale.numel() == 1
        self.input_range = (float(spec.shift), float(spec.shift + spec.scale)) if unit else None

    @property
    def input_units(self) -> str:
        """What `encode` and `reconstruct` take, in words."""
        if self.input_range == (0.0, 1.0):
            return "values in [0, 1], as the training data had them (images as float tensors in [0, 1])"
        if self.input_range is not None:
            return f"values in [{self.input_range[0]:g}, {self.input_range[1]:g}], as in the training file"
        return "values in the training data's own units (the model standardizes them itself)"

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

    def encode(self, x: torch.Tensor | np.ndarray, *, grad: bool = False) -> torch.Tensor:
        """Data in the training data's units (N, *input_shape) -> code (N, latent_dim).

        Inference: no autograd graph is kept (the result has requires_grad=False and `.numpy()` works);
        `grad=True` keeps it, for gradients with respect to `x` or the weights."""
        with torch.set_grad_enabled(grad):
            return self.code(self.scaling(self._data(x, "x")))

    def decode(self, z: torch.Tensor | np.ndarray, *, grad: bool = False) -> torch.Tensor:
        """Code (N, latent_dim) -> data in the training data's units (N, *input_shape); `grad` as for `encode`."""
        with torch.set_grad_enabled(grad):
            return self.scaling.inverse(self.generate(self._batch(z, "z", (self.latent_dim,), "codes")))

    def reconstruct(self, x: torch.Tensor | np.ndarray, *, grad: bool = False) -> torch.Tensor:
        """decode(encode(x)) in the training data's units; `grad` as for `encode`."""
        with torch.set_grad_enabled(grad):
            return self.scaling.inverse(self.generate(self.code(self.scaling(self._data(x, "x")))))

    def _data(self, x: Any, name: str) -> torch.Tensor:
        """`x` as a float32 batch on the model's device, checked against the data the model was trained on."""
        what = "images N x C x H x W" if self.input_shape is not None and len(self.input_shape) == 3 else "rows N x D"
        x = self._batch(x, name, self.input_shape, what)
        if self.input_range is None or x.numel() == 0:
            return x
        lo, hi = self.input_range
        low, high = float(x.min()), float(x.max())
        slack = 1e-4 * (hi - lo)  # float rounding of values computed in another dtype or library
        if low < lo - slack or high > hi + slack:
            hint = "; divide 0-255 pixel values by 255" if hi == 1.0 and high <= 255.0 and high > 1.5 else ""
            raise InputError(f"{name}: values span [{low:.4g}, {high:.4g}]; this model takes {self.input_units}{hint}")
        if hi > 1.0 and 0.0 < high <= 1.0 and x.numel() > 1:
            warnings.warn(f"{name}: every value is within [0, 1], but this model takes {self.input_units}; "
                          f"multiply [0, 1] values by {hi:g}", UserWarning, stacklevel=3)
        return x

    def _batch(self, x: Any, name: str, shape: tuple[int, ...] | None, what: str) -> torch.Tensor:
        expected = f"(N, {', '.join(map(str, shape))})" if shape is not None else "(N, ...)"
        if isinstance(x, np.ndarray):
            if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
                raise InputError(f"{name}: a numpy array of dtype {x.dtype}; this model takes numbers, {expected}")
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{name}: a {type(x).__name__}; this model takes a torch.Tensor or numpy array of "
                             f"shape {expected} ({what})")
        if x.dtype == torch.bool or x.is_complex():
            raise InputError(f"{name}: dtype {x.dtype}; this model takes real numbers (float32; others are converted)")
        if shape is not None and (x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape):
            single = " (one sample? add the batch axis: x[None])" if tuple(x.shape) == shape else ""
            raise InputError(f"{name}: shape {tuple(x.shape)}; this model takes {expected} ({what}){single}")
        x = x.to(self.scaling.shift.device, torch.float32)
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise InputError(f"{name}: contains NaN or infinite values")
        return x


def sample_code(mu: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The reparameterisation trick: a draw of N(mu, exp(logvar)) from standard normal `noise` of mu's shape."""
    return mu + noise * torch.exp(0.5 * logvar)


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
        z = sample_code(mu, logvar, torch.randn_like(mu)) if self.training else mu
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
