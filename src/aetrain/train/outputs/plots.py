"""The pictures a run draws: the loss curve, image reconstruction grids, tabular reconstruction heatmaps.

Pure drawing, no training logic: each function or class takes numbers or tensors and returns
an RGB array (H, W, 3) uint8, encoded once as PNG for the file and TensorBoard. Matplotlib is used
through its object API (`Figure` on an Agg canvas, no pyplot state), and each figure is built
once per run and only has its data swapped on later draws: building a figure costs more than
drawing it, and a run redraws many times.

Grid geometry (what tests and README rely on): `make_grid` with `PAD` pixels of white between
and around tiles, one row per kind of image (originals, [corrupted inputs,] reconstructions) and
one column per sample, each tile enlarged by `zoom` with nearest neighbour so small images such
as 8x8 digits stay crisp. A grid of n samples, k rows and tiles of h x w pixels is therefore
(k * (h * zoom + PAD) + PAD) x (n * (w * zoom + PAD) + PAD) pixels. `labelled_grid` puts it on
white below a HEADER_PX line of text (the epoch, what the picture shows) and right of a column
naming each row, in text of LABEL_PX pixels, with MARGIN pixels of white at the edges: its
top-left corner is at (x, y) = (label_width(names), HEADER_PX), the picture `labelled_size`.

Figures drawn by matplotlib are rendered at DPI dots per inch (a 7 x 5 inch loss curve is
1050 x 750 pixels); the loss curve can also be written as SVG or PDF (`LossCurve.vector`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

# the primitives live below the trainer (aetrain.drawing), so the commands after training draw alike without it
from aetrain.drawing import (  # noqa: F401
    DPI,
    HEADER_PX,
    MARGIN,
    PAD,
    TRAIN,
    VAL,
    encode_png,
    grid_size,
    image_grid,
    zoom_factor,
)
from aetrain.drawing import canvas as _canvas
from aetrain.drawing import figure as _figure

LABEL_PX = 15  # text height of a grid's row names and title, in pixels


def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=LABEL_PX)  # Pillow's own scalable font (a bitmap one without FreeType)


def label_width(names: Sequence[str]) -> int:
    """Pixels left of a labelled grid's tiles: the longest row name between margins, or a margin without names."""
    if not any(names):
        return MARGIN - PAD
    font = _font()
    return 2 * MARGIN + max(math.ceil(font.getlength(name)) for name in names) - PAD


def labelled_size(grid: tuple[int, int], names: Sequence[str], title: str = "") -> tuple[int, int]:
    """(height, width) of `labelled_grid`'s picture around a grid of `grid` = (height, width) pixels."""
    width = max(label_width(names) + grid[1] + MARGIN - PAD, math.ceil(_font().getlength(title)) + 2 * MARGIN)
    return HEADER_PX + grid[0] + MARGIN - PAD, width


def labelled_grid(rows: Sequence[torch.Tensor], zoom: int, *, names: Sequence[str] = (), title: str = "") -> np.ndarray:
    """`image_grid` on white with `title` above it and each row named on its left (`names`, one per row; none:
    no names): (H, W, 3) uint8 of `labelled_size`, the grid's top-left corner at (label_width(names), HEADER_PX)."""
    from PIL import Image, ImageDraw

    grid = image_grid(rows, zoom)
    font = _font()
    left = label_width(names)
    height, width = labelled_size(grid.shape[:2], names, title)
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(Image.fromarray(grid), (left, HEADER_PX))
    draw = ImageDraw.Draw(canvas)
    draw.text((MARGIN, HEADER_PX // 2), title, fill="black", font=font, anchor="lm")
    tile = (grid.shape[0] - PAD) // max(len(rows), 1) - PAD  # one row's tile height
    for i, name in enumerate(names):
        middle = HEADER_PX + PAD + i * (tile + PAD) + tile // 2
        draw.text((left - MARGIN + PAD, middle), name, fill="#333333", font=font, anchor="rm")
    return np.asarray(canvas)


def _spans_decades(values: np.ndarray, factor: float = 10.0) -> bool:
    """True when positive values cover at least `factor` (a decade): then a log axis shows them better."""
    v = values[np.isfinite(values) & (values > 0)]
    return v.size > 1 and v.max() / v.min() >= factor


class LossCurve:
    """loss_curve.png: every loss term per epoch above (train and validation), the learning rate below.

    `train/loss` and `val/loss` are solid lines, their `reconstruction` dashed in the split's colour
    when it is not the loss itself (a VAE's). The other terms the objectives name (a sparsity
    penalty, a KL term) get a panel of their own between the two, with its own scale, when they are
    not zero at the first draw: a KL term that spans decades would otherwise set a log axis that
    squashes the losses into a band. Each panel's axis turns logarithmic when its values span a
    decade or more. The figure is laid out at the first draw (a run draws after its first epoch).
    """

    STYLES = ["--", ":", "-."]
    LOSSES = ("loss", "reconstruction")  # the names drawn in the loss panel; any other term gets the terms panel

    def __init__(self, title: str, columns: Sequence[str]) -> None:
        terms = [c for c in columns if c.startswith(("train/", "val/")) and c != "train/grad_norm"]
        extra = sorted({c.split("/", 1)[1] for c in terms} - {"loss"})
        style = {name: self.STYLES[i % len(self.STYLES)] for i, name in enumerate(extra)}
        # (record key, label, colour, line style)
        self.series = [(c, ("train " if c.startswith("train/") else "validation ") + c.split("/", 1)[1],
                        TRAIN if c.startswith("train/") else VAL, style.get(c.split("/", 1)[1], "-")) for c in terms]
        self.title = title
        self.fig: Any = None
        self.term_ax: Any = None

    def _build(self, records: Sequence[dict[str, Any]]) -> None:
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        others = [key for key, *_ in self.series if key.split("/", 1)[1] not in self.LOSSES]
        with_terms = any(np.nan_to_num(np.abs([r.get(k, math.nan) for r in records])).max(initial=0.0) > 0
                         for k in others)
        if with_terms:
            self.fig = _figure(7.0, 6.4)
            self.fig.subplots_adjust(left=0.12, right=0.97, top=0.93, bottom=0.08, hspace=0.1)
            self.loss_ax, self.term_ax, self.lr_ax = self.fig.subplots(
                3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.6, 1]})
            self.term_ax.set_ylabel(" / ".join(sorted({k.split("/", 1)[1] for k in others})))
        else:
            self.fig = _figure(7.0, 5.0)
            self.fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.1, hspace=0.08)
            self.loss_ax, self.lr_ax = self.fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        self.fig.suptitle(self.title, fontsize=11)
        self.lines = {key: self._axis_of(key).plot([], [], color=c, linestyle=ls, linewidth=1.6, label=label)[0]
                      for key, label, c, ls in self.series}
        (self.best,) = self.loss_ax.plot([], [], linestyle="none", marker="*", markersize=11, color=VAL,
                                         markeredgecolor="black", markeredgewidth=0.6, zorder=5)
        (self.lr_line,) = self.lr_ax.plot([], [], color="#2ca02c", linewidth=1.6)
        self.loss_ax.set_ylabel("loss")
        self.lr_ax.set_ylabel("learning rate")
        self.lr_ax.set_xlabel("epoch")
        self.lr_ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs, even for one
        self.plain = FuncFormatter(lambda v, _: f"{v:.3g}")  # 0.02, not 2x10^-2: shorter, as the log prints it
        # a log axis over one or two decades has only one or two labelled ticks: label its 2s and 5s too
        self.minor_log = FuncFormatter(lambda v, _: f"{v:.3g}" if f"{v:.0e}"[0] in "25" else "")
        for ax in self.axes:
            ax.grid(True, which="major", alpha=0.3)
            ax.grid(True, which="minor", alpha=0.1)

    @property
    def axes(self) -> list[Any]:
        return [ax for ax in (self.loss_ax, self.term_ax, self.lr_ax) if ax is not None]

    def _axis_of(self, key: str) -> Any:
        return self.term_ax if self.term_ax is not None and key.split("/", 1)[1] not in self.LOSSES else self.loss_ax

    def draw(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        if self.fig is None:
            self._build(records)
        epochs = np.array([r["epoch"] for r in records], dtype=float)
        column = lambda key: np.array([r.get(key, math.nan) for r in records], dtype=float)  # noqa: E731
        marker = "o" if len(records) <= 30 else ""  # a few epochs: show each point
        shown: dict[Any, list[Any]] = {ax: [] for ax in self.axes}
        for key, *_ in self.series:
            values, split_loss = column(key), column(key.split("/", 1)[0] + "/loss")
            nonzero = np.nan_to_num(np.abs(values)).max(initial=0.0) > 0
            visible = key.endswith("/loss") or (nonzero and not np.allclose(values, split_loss, equal_nan=True))
            line = self.lines[key]
            line.set_data(epochs, values)
            line.set_visible(visible)
            line.set_marker(marker)
            line.set_markersize(3)
            shown[self._axis_of(key)] += [line] if visible else []
        val = column("val/loss")
        if np.isfinite(val).any():
            i = int(np.nanargmin(val))
            self.best.set_data([epochs[i]], [val[i]])
            self.best.set_label(f"best validation {val[i]:.4g} (epoch {int(epochs[i])})")
            shown[self.loss_ax].append(self.best)
        for ax in (self.loss_ax, self.term_ax):
            if ax is not None:
                self._scale_values(ax, [line.get_ydata() for line in shown[ax] if line is not self.best])
        lr = column("lr")
        self.lr_line.set_data(epochs, lr)
        self.lr_line.set_marker(marker)
        self.lr_line.set_markersize(3)
        self._scale_lr(lr)
        for ax in self.axes:
            ax.relim(visible_only=True)
            ax.autoscale_view()  # the lr axis keeps the limits _scale_lr gave it
        margin = max(0.5, 0.02 * (epochs[-1] - epochs[0]))  # room for the first and last markers
        self.lr_ax.set_xlim(epochs[0] - margin, epochs[-1] + margin)
        for ax in (self.loss_ax, self.term_ax):
            if ax is not None and shown[ax]:
                ax.legend(handles=shown[ax], loc="best", fontsize=9, framealpha=0.9)  # where it hides the fewest points
        return _canvas(self.fig)

    def vector(self, fmt: str) -> bytes:
        """The figure as last drawn, in a vector format (svg, pdf): for papers and slides."""
        from matplotlib import rc_context

        buffer = io.BytesIO()
        # TrueType fonts embedded in a PDF (publishers refuse matplotlib's default Type 3); SVG text as paths,
        # so it looks the same without the font installed
        with rc_context({"pdf.fonttype": 42, "svg.fonttype": "path"}):
            self.fig.savefig(buffer, format=fmt)
        return buffer.getvalue()

    def _scale_values(self, ax: Any, series: Sequence[np.ndarray]) -> None:
        values = np.concatenate([np.asarray(v, dtype=float) for v in series]) if series else np.array([])
        ax.set_yscale("log" if _spans_decades(values) else "linear")  # resets the axis' formatters
        if _spans_decades(values):
            ax.yaxis.set_major_formatter(self.plain)
            if not _spans_decades(values, 100.0):
                ax.yaxis.set_minor_formatter(self.minor_log)

    def _scale_lr(self, lr: np.ndarray) -> None:
        """Fit the learning-rate axis to `lr`, afresh at every draw (its limits are set by hand, so they never
        follow the data by themselves). Logarithmic, with at most four labelled decades, when a linear axis
        would put a third or more of the epochs in its bottom tenth (step decay, plateau, a fast exponential
        decay: stairs and straight lines on a log axis); otherwise linear from zero, so a constant rate is
        a flat line and a cosine or one-cycle schedule keeps its familiar shape, down to zero."""
        from matplotlib.ticker import LogLocator, NullFormatter

        rates = lr[np.isfinite(lr)]
        top = float(rates.max()) if rates.size else 1.0
        squeezed = rates.size > 0 and float(np.mean(rates < top / 10)) >= 1 / 3
        if squeezed and rates.min() > 0:
            self.lr_ax.set_yscale("log")  # resets the axis' locators and formatters
            self.lr_ax.yaxis.set_major_locator(LogLocator(base=10, numticks=4))
            self.lr_ax.yaxis.set_minor_formatter(NullFormatter())  # unlabelled minor ticks: labels never crowd
            self.lr_ax.set_ylim(float(rates.min()) / 1.6, top * 1.6)
        else:
            self.lr_ax.set_yscale("linear")
            self.lr_ax.set_ylim(0, max(top, 1e-12) * 1.15)
        self.lr_ax.yaxis.set_major_formatter(self.plain)


class RowHeatmaps:
    """Tabular rows: original, reconstruction and their difference as heatmaps (sample x feature).

    Colour limits are fixed from the originals once, so pictures of different epochs compare
    directly; the difference uses a diverging map saturating at half the originals' range.
    """

    def __init__(self, originals: np.ndarray, unit: str) -> None:
        from matplotlib.colors import Normalize

        self.originals = originals  # (n, D)
        n, d = originals.shape
        lo, hi = np.percentile(originals, [1, 99]) if originals.size > 1 else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0
        # laid out once by the constrained engine, then frozen: later draws only swap pixel data
        self.fig = _figure(11.0, 1.4 + 0.2 * n, layout="constrained")
        axes = self.fig.subplots(1, 3, sharey=True)
        values = Normalize(lo, hi)
        half = (hi - lo) / 2
        blank = np.zeros_like(originals)
        self.images = []
        for ax, title, cmap, norm in zip(axes, ["original", "reconstruction", "reconstruction - original"],
                                         ["viridis", "viridis", "RdBu_r"], [values, values, Normalize(-half, half)]):
            image = ax.imshow(blank, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm)
            self.fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("feature")
            self.images.append(image)
        axes[0].set_ylabel("validation sample")
        self.images[0].set_data(originals)
        self.title = self.fig.suptitle("", fontsize=11)
        self.unit = unit

    def draw(self, reconstructions: np.ndarray, epoch: int) -> np.ndarray:
        self.images[1].set_data(reconstructions)
        self.images[2].set_data(reconstructions - self.originals)
        mse = float(np.mean((reconstructions - self.originals) ** 2))
        self.title.set_text(f"epoch {epoch}: {len(self.originals)} fixed validation rows in {self.unit}, "
                            f"mean squared error {mse:.4g}")
        image = _canvas(self.fig)
        self.fig.set_layout_engine("none")  # keeps the positions just computed
        return image


class RowMap:
    """Generated tabular rows (a family's gallery) as one heatmap (sample x feature), colour limits fixed."""

    def __init__(self, title: str, unit: str, low: float, high: float) -> None:
        from matplotlib.colors import Normalize

        self.fig = _figure(6.0, 3.0, layout="constrained")
        self.ax = self.fig.subplots()
        self.image = None
        self.norm = Normalize(low, high if high > low else low + 1.0)
        self.title, self.unit = title, unit

    def draw(self, rows: np.ndarray, epoch: int) -> np.ndarray:
        if self.image is None:
            self.image = self.ax.imshow(rows, aspect="auto", interpolation="nearest", cmap="viridis", norm=self.norm)
            self.fig.colorbar(self.image, ax=self.ax, fraction=0.05, pad=0.02)
            self.ax.set_xlabel("feature")
            self.ax.set_ylabel("sample")
        self.image.set_data(rows)
        self.ax.set_title(f"epoch {epoch}: {self.title} ({self.unit})", fontsize=10)
        return _canvas(self.fig)
