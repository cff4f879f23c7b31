"""The numbers the commands after training report: reconstruction errors, PSNR, SSIM, the PCA baseline,
linear probes and anomaly scores. scikit-learn does the statistics; SSIM is computed here because
no installed library provides it (torch, torchvision and scikit-learn do not; torchmetrics and
scikit-image are not dependencies).

Every error is measured in *model units*, the scaled values the network trains on, so the numbers
compare with the run's `val/loss` (for an mse model they are the same quantity): images in [0, 1]
as they are, a uint8 file divided by 255, standardized data in standard deviations.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from aetrain.data.spec import DataSpec

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03  # Wang et al. (2004)


def data_range(spec: DataSpec) -> float:
    """The value range R of PSNR and SSIM, in model units: 1 for data in [0, 1] (images, uint8 files);
    for standardized data, the range of the training split (its largest minus its smallest value)."""
    return 1.0 if spec.unit_interval else max(spec.high - spec.low, 1e-12)


def per_sample_errors(x: torch.Tensor, x_hat: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(MSE, MAE) of each sample, means over its elements, as float64 arrays (n,)."""
    diff = (x_hat.double() - x.double()).flatten(1)  # (n, *shape) -> (n, D)
    return diff.square().mean(1).numpy(), diff.abs().mean(1).numpy()


def psnr(mse: float, value_range: float) -> float | None:
    """Peak signal-to-noise ratio in dB, 10 log10(R^2 / MSE); None for a perfect reconstruction."""
    return 10.0 * math.log10(value_range**2 / mse) if mse > 0 else None


def ssim_window(shape: tuple[int, ...]) -> int:
    """The Gaussian window's side: 11 (Wang et al.), shrunk to the largest odd size the image holds."""
    side = min(SSIM_WINDOW, *shape[1:])
    return side if side % 2 else side - 1


def ssim(x: torch.Tensor, y: torch.Tensor, value_range: float) -> np.ndarray:
    """Structural similarity of each image pair (n,), as in Wang et al. (2004), "Image quality assessment:
    from error visibility to structural similarity": local means, variances and covariance under an 11x11
    Gaussian window (sigma 1.5) at every position where the window fits inside the image (no padding, as
    the authors' reference code), K1 = 0.01, K2 = 0.03, C = (K R)^2; the SSIM map is averaged over
    positions and channels. Images smaller than 11 pixels get the largest odd window that fits (7 for
    8x8 digits, which leaves 2x2 positions)."""
    side = ssim_window(tuple(x.shape[1:]))
    coords = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
    g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    channels = x.shape[1]
    window = (g[:, None] * g[None, :]).expand(channels, 1, side, side).contiguous()  # (C, 1, k, k), depthwise
    out = []
    for a, b in zip(x.double().split(256), y.double().split(256)):
        blur = lambda t: F.conv2d(t, window, groups=channels)  # noqa: E731  (n, C, H, W) -> (n, C, H-k+1, W-k+1)
        mu_a, mu_b = blur(a), blur(b)
        var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
        cov = blur(a * b) - mu_a * mu_b
        c1, c2 = (SSIM_K1 * value_range) ** 2, (SSIM_K2 * value_range) ** 2
        ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        out.append(ssim_map.flatten(1).mean(1))
    return torch.cat(out).numpy() if out else np.zeros(0)


@dataclass
class Quality:
    """Per-sample reconstruction errors of one method on some samples, and their summary."""

    mse: np.ndarray  # (n,)
    mae: np.ndarray  # (n,)
    ssim: np.ndarray | None  # (n,) for images, None for rows

    def summary(self, value_range: float) -> dict[str, float | None]:
        mse = float(self.mse.mean()) if len(self.mse) else math.nan
        return {"mse": mse, "mae": float(self.mae.mean()) if len(self.mae) else math.nan,
                "psnr_db": psnr(mse, value_range),
                "ssim": float(self.ssim.mean()) if self.ssim is not None and len(self.ssim) else None}


def quality(x: torch.Tensor, x_hat: torch.Tensor, spec: DataSpec) -> Quality:
    mse, mae = per_sample_errors(x, x_hat)
    return Quality(mse, mae, ssim(x, x_hat, data_range(spec)) if spec.is_image else None)


class PCABaseline:
    """PCA with as many components as the autoencoder's code, fitted on the run's training split (model
    units, flattened). Its reconstructions are not clipped to the data's range."""

    def __init__(self, train: torch.Tensor, components: int) -> None:
        from sklearn.decomposition import PCA

        flat = train.flatten(1).numpy()
        self.components = min(components, *flat.shape)  # PCA has at most min(samples, features) components
        self.pca = PCA(n_components=self.components, svd_solver="full" if flat.shape[1] <= 1000 else "randomized",
                       random_state=0).fit(flat)
        self.fit_samples = len(flat)

    @property
    def name(self) -> str:
        return f"PCA-{self.components}"

    def codes(self, x: torch.Tensor) -> np.ndarray:
        return self.pca.transform(x.flatten(1).numpy())  # (n, components)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        flat = self.pca.inverse_transform(self.codes(x))  # (n, D)
        return torch.from_numpy(np.asarray(flat, dtype=np.float32)).view_as(x)


def probe_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray
                   ) -> tuple[float, bool]:
    """(accuracy on `test`, converged) of a logistic regression fitted on standardized `train` features."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe.fit(train.reshape(len(train), -1), train_labels)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return float((probe.predict(test.reshape(len(test), -1)) == test_labels).mean()), converged


def isolation_forest_scores(train: torch.Tensor, x: torch.Tensor, seed: int) -> np.ndarray:
    """scikit-learn's IsolationForest (its defaults: 100 trees of 256 samples) fitted on `train`; the
    anomaly score of each of `x` (higher = more anomalous: minus `score_samples`)."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(random_state=seed).fit(train.flatten(1).numpy())
    return -forest.score_samples(x.flatten(1).numpy())
