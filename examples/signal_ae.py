"""A 1-D convolutional autoencoder for signals, trained by aetrain as a model of your own.

Signals are rows of a tensor file (N x L, one signal per row, L a multiple of 4). This file registers one network
twice: as `model=signal_ae` (plain reconstruction) and `model=signal_vae` (the same layers with aetrain's VAE
objective: the encoder then emits a mean and a log-variance per code unit). From the repository's root:

    python examples/signal_ae.py signals/                    # 2000 noisy sine, square and sawtooth waves
    aetrain plugins=[examples/signal_ae.py] model=signal_ae data=tensor_file data.path=signals/signals.npy \
        data.labels=signals/labels.npy model.latent_dim=8
    aetrain eval outputs/<date>/<time>                        # and doctor, score, export, resume, sweeps: as usual
"""

from dataclasses import dataclass

from torch import nn

import aetrain


@dataclass
class SignalAEConfig(aetrain.ModelConfig):
    channels: int = 16  # channels of both convolutions
    kernel_size: int = 5  # odd width of every kernel, in samples

    RANGES = {"channels": (lambda v: v >= 1, ">= 1"), "kernel_size": (lambda v: v >= 1 and v % 2, "odd, >= 1")}


@aetrain.register_model("signal_ae", config=SignalAEConfig)
@aetrain.register_model("signal_vae", config=SignalAEConfig, objective="vae")
class SignalAE(nn.Module):
    def __init__(self, cfg: SignalAEConfig, shape: tuple[int, ...], *, code_width: int) -> None:
        super().__init__()
        (length,) = shape  # rows: one signal each
        if length % 4:
            raise ValueError(f"signals of length {length}: signal_ae needs a multiple of 4")
        c, k, p = cfg.channels, cfg.kernel_size, cfg.kernel_size // 2
        self.encoder = nn.Sequential(  # (B, L) -> (B, code_width)
            nn.Unflatten(1, (1, length)), nn.Conv1d(1, c, k, 2, p), nn.ReLU(), nn.Conv1d(c, c, k, 2, p), nn.ReLU(),
            nn.Flatten(), nn.Linear(c * length // 4, code_width))
        self.decoder = nn.Sequential(  # (B, latent_dim) -> (B, L)
            nn.Linear(cfg.latent_dim, c * length // 4), nn.ReLU(), nn.Unflatten(1, (c, length // 4)),
            nn.ConvTranspose1d(c, c, k, 2, p, output_padding=1), nn.ReLU(),
            nn.ConvTranspose1d(c, 1, k, 2, p, output_padding=1), nn.Flatten())

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)


def make_signals(n: int = 2000, length: int = 64, seed: int = 0):
    """`n` noisy waves of `length` samples (sine, square, sawtooth: labels 0, 1, 2), random frequency and phase."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    phase = rng.uniform(0, 1, (n, 1)) + rng.uniform(1, 3, (n, 1)) * np.linspace(0, 1, length)  # cycles
    waves = [np.sin(2 * np.pi * phase), np.sign(np.sin(2 * np.pi * phase)), 2 * (phase % 1) - 1]
    signals = np.choose(labels[:, None], waves) + 0.1 * rng.normal(size=(n, length))
    return signals.astype(np.float32), labels


if __name__ == "__main__":
    import sys
    from pathlib import Path

    import numpy as np

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "signals")
    out.mkdir(parents=True, exist_ok=True)
    signals, labels = make_signals(*(int(a) for a in sys.argv[2:4]))
    np.save(out / "signals.npy", signals)
    np.save(out / "labels.npy", labels)
    print(f"wrote {out / 'signals.npy'} ({signals.shape[0]} x {signals.shape[1]}) and {out / 'labels.npy'}")
