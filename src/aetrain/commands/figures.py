"""The pictures of the commands after training, each returned as PNG bytes: error histograms, the worst
reconstructions, ROC curves, anomaly-score histograms and the 2-D map of the codes.

Matplotlib through its object API (a `Figure` on an Agg canvas, no pyplot state), as the run's own
pictures. Colours: the autoencoder is always blue, PCA orange and IsolationForest green.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from aetrain.drawing import PAD, figure, image_grid, zoom_factor

AE, PCA, FOREST = "#1f77b4", "#ff7f0e", "#2ca02c"
NORMAL, ANOMALY = "#1f77b4", "#d62728"


def _figure(width: float, height: float) -> Any:
    return figure(width, height, layout="constrained")


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _bins(*values: np.ndarray, count: int = 40) -> tuple[np.ndarray, bool]:
    """Histogram edges shared by every series: log-spaced when the positive values span two decades or more."""
    v = np.concatenate([a[np.isfinite(a)] for a in values])
    positive = v[v > 0]
    if len(positive) == len(v) and len(v) > 1 and positive.max() / positive.min() >= 100:
        return np.geomspace(positive.min(), positive.max(), count + 1), True
    low, high = (float(v.min()), float(v.max())) if len(v) else (0.0, 1.0)
    return np.linspace(low, high if high > low else low + 1e-12, count + 1), False


def error_histogram(series: Sequence[tuple[str, np.ndarray, str]], title: str, unit: str) -> bytes:
    """Histograms of per-sample errors (label, errors, colour), each with its mean as a dashed line."""
    fig = _figure(7.0, 4.2)
    ax = fig.subplots()
    edges, log_x = _bins(*(e for _, e, _ in series))
    for label, errors, colour in series:
        _filled_histogram(ax, errors, edges, colour, f"{label} (mean {errors.mean():.4g})", shares=False)
        ax.axvline(errors.mean(), color=colour, linestyle="--", linewidth=1.2)
    _finish_histogram(fig, ax, log_x, f"per-sample mean squared error ({unit})", "samples", title)
    return _png(fig)


def _filled_histogram(ax: Any, values: np.ndarray, edges: np.ndarray, colour: str, label: str, *,
                      shares: bool) -> None:
    """A translucent histogram with a solid outline, so overlapping groups stay readable. `shares`: each bar is
    the share of the group's samples in its bin (the group's bars sum to 1), else a count."""
    weights = np.full(len(values), 1.0 / max(len(values), 1)) if shares else None
    ax.hist(values, bins=edges, color=colour, alpha=0.45, weights=weights, label=label)
    ax.hist(values, bins=edges, color=colour, histtype="step", weights=weights, linewidth=1.2)


def _finish_histogram(fig: Any, ax: Any, log_x: bool, xlabel: str, ylabel: str, title: str) -> None:
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=9)
    ax.grid(True, alpha=0.3)


def worst_images(originals: torch.Tensor, recons: torch.Tensor, errors: np.ndarray, title: str,
                 captions: Sequence[str]) -> bytes:
    """Originals above reconstructions (display values in [0, 1]), each column captioned (its error)."""
    zoom = zoom_factor(tuple(originals.shape[1:]), 32)
    grid = image_grid([originals, recons], zoom)  # (H, W, 3) uint8
    tile = originals.shape[3] * zoom + PAD
    fig = _figure(max(4.0, grid.shape[1] / 60 + 0.6), grid.shape[0] / 60 + 1.3)
    ax = fig.subplots()
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([PAD + tile * i + (tile - PAD) / 2 for i in range(len(originals))])
    ax.set_xticklabels(captions, fontsize=7)
    row = originals.shape[2] * zoom + PAD
    ax.set_yticks([PAD + row * 0.5 - PAD / 2, PAD + row * 1.5 - PAD / 2])
    ax.set_yticklabels(["original", "reconstruction"], fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title, fontsize=9)
    return _png(fig)


def worst_rows(originals: np.ndarray, recons: np.ndarray, title: str, row_names: Sequence[str], unit: str) -> bytes:
    """Tabular rows: original, reconstruction and their difference as heatmaps (sample x feature)."""
    from matplotlib.colors import Normalize

    n = len(originals)
    fig = _figure(11.0, 1.8 + 0.22 * n)
    axes = fig.subplots(1, 3, sharey=True)
    lo, hi = np.percentile(originals, [1, 99]) if originals.size > 1 else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    half = (hi - lo) / 2
    for ax, data, name, cmap, norm in zip(
            axes, [originals, recons, recons - originals], ["original", "reconstruction", "reconstruction - original"],
            ["viridis", "viridis", "RdBu_r"], [Normalize(lo, hi), Normalize(lo, hi), Normalize(-half, half)]):
        image = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm)
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"feature ({unit})")
    axes[0].set_yticks(range(n))
    axes[0].set_yticklabels(row_names, fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def roc_curves(curves: Sequence[tuple[str, np.ndarray, np.ndarray, float, str]], title: str) -> bytes:
    """ROC curves (label, false positive rates, true positive rates, AUROC, colour), the diagonal for chance."""
    fig = _figure(6.0, 6.0)
    ax = fig.subplots()
    for label, fpr, tpr, auc, colour in curves:
        ax.plot(fpr, tpr, color=colour, linewidth=1.6, label=f"{label}: AUROC {auc:.4f}")
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="chance: 0.5")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (normal samples flagged)")
    ax.set_ylabel("true positive rate (anomalies flagged)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(True, alpha=0.3)
    return _png(fig)


SCORE_SHARE_LABEL = "share of the group's samples"  # per bin: each group's bars sum to 1


def score_histograms(scores: np.ndarray, anomaly: np.ndarray | None, threshold: float, title: str, unit: str) -> bytes:
    """Anomaly scores of normal and anomalous samples (or of all, unlabelled), and the threshold."""
    return _png(score_figure(scores, anomaly, threshold, title, unit))


def score_figure(scores: np.ndarray, anomaly: np.ndarray | None, threshold: float, title: str, unit: str) -> Any:
    """The figure of `score_histograms`. Each group's bars are shares of its own samples: the groups differ in
    size by orders of magnitude, and shares (unlike a density, whose bars reach 175 when the scores are small and
    whose areas, not heights, sum to 1) read the same on the log-spaced bins of small scores."""
    fig = _figure(7.0, 4.2)
    ax = fig.subplots()
    groups = ([("normal", scores[~anomaly], NORMAL), ("anomalous", scores[anomaly], ANOMALY)] if anomaly is not None
              else [("samples", scores, NORMAL)])
    groups = [g for g in groups if len(g[1])]
    edges, log_x = _bins(*(s for _, s, _ in groups), np.array([threshold]))
    for label, values, colour in groups:
        _filled_histogram(ax, values, edges, colour, f"{label} ({len(values)})", shares=True)
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.4g}")
    _finish_histogram(fig, ax, log_x, f"anomaly score: per-sample mean squared error ({unit})", SCORE_SHARE_LABEL,
                      title)
    return fig


def code_map(points: np.ndarray, groups: np.ndarray | None, group_title: str, title: str, axes: tuple[str, str], *,
             class_names: tuple[str, ...] | None = None) -> bytes:
    """A scatter of 2-D points coloured by group (labels or split), with a legend (or a colour bar for many);
    `class_names`: each label's name (an image folder's subfolders), shown in the legend beside the number."""
    fig = _figure(6.6, 5.6)
    ax = fig.subplots()
    size = float(np.clip(8000 / max(len(points), 1), 3, 24))  # marker area: fewer points, bigger markers
    if groups is None:
        ax.scatter(points[:, 0], points[:, 1], s=size, color=AE, alpha=0.7, linewidths=0)
    else:
        names = sorted(set(groups.tolist()), key=lambda v: (isinstance(v, str), v))
        if len(names) <= 20:
            from matplotlib import colormaps

            cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
            for i, name in enumerate(names):
                mine = groups == name
                named = f"{name} {class_names[name]}" if class_names is not None and isinstance(name, int) \
                    and 0 <= name < len(class_names) else f"{name}"
                ax.scatter(points[mine, 0], points[mine, 1], s=size, color=cmap(i), alpha=0.75, linewidths=0,
                           label=f"{named} ({int(mine.sum())})")
            ax.legend(title=group_title, fontsize=8, title_fontsize=9, markerscale=max(1.0, 12 / size),
                      loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        else:
            image = ax.scatter(points[:, 0], points[:, 1], s=size, c=groups.astype(float), cmap="viridis", alpha=0.75,
                               linewidths=0)
            fig.colorbar(image, ax=ax, label=group_title)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    return _png(fig)
