"""Drawing primitives every picture of aetrain uses: a figure on an Agg canvas, its pixels, PNG bytes, image grids.

Below the trainer, so the pictures of a run (`aetrain.train.outputs.plots`) and those of the
commands after training (`aetrain.commands.figures`, the doctor's, lr_find's) draw alike without
the after-training commands importing `aetrain.train`. Matplotlib is used through its object API
(`Figure` on an Agg canvas, no pyplot state), imported when a figure is first made.

Grid geometry (what tests and README rely on): `make_grid` with `PAD` pixels of white between
and around tiles, one row per kind of image and one column per sample, each tile enlarged by
`zoom` with nearest neighbour so small images such as 8x8 digits stay crisp. A grid of n samples,
k rows and tiles of h x w pixels is therefore (k * (h * zoom + PAD) + PAD) x (n * (w * zoom + PAD) + PAD)
pixels. A labelled grid (`aetrain.train.outputs.plots.labelled_grid`) has HEADER_PX of title line above
it and MARGIN - PAD of white below it (`LABELLED`): the report cuts the trainer's grids into their rows by
these numbers, so both read them here.

Torch is imported when a grid is first drawn, so the report, which reads pictures and draws none, imports none.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

PAD = 2  # pixels of white between grid tiles and around the grid
HEADER_PX = 28  # the title line above a labelled grid
MARGIN = 8  # pixels of white around a labelled grid's text and tiles (PAD of it inside the grid's own frame)
LABELLED = (HEADER_PX, MARGIN - PAD)  # pixels above and below a labelled grid's tiles' frame
TRAIN, VAL = "#1f77b4", "#d62728"  # the same two colours in every picture: blue train, red validation


DPI = 150  # pixels per inch of every matplotlib figure written as PNG (100 made 7-inch figures too coarse to print)

def encode_png(image: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 image as PNG bytes: encoded once for the file and for TensorBoard."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png")
    return buffer.getvalue()


def zoom_factor(shape: Sequence[int], zoom_to: int) -> int:
    """The whole factor that brings a (C, H, W) image closest to `zoom_to` pixels without passing it."""
    return max(1, zoom_to // max(shape[1:])) if zoom_to else 1


def grid_size(num_samples: int, num_rows: int, shape: Sequence[int], zoom: int) -> tuple[int, int]:
    """(height, width) in pixels of `image_grid`'s picture."""
    h, w = shape[1] * zoom, shape[2] * zoom
    return num_rows * (h + PAD) + PAD, num_samples * (w + PAD) + PAD


def image_grid(rows: Sequence[torch.Tensor], zoom: int) -> np.ndarray:
    """One row per tensor (n, C, H, W) of display values in [0, 1] -> (H', W', 3) uint8 with white gaps."""
    import torch
    from torchvision.utils import make_grid

    n = rows[0].shape[0]
    tiles = torch.cat([r.detach().float().cpu() for r in rows])  # (rows * n, C, H, W)
    if tiles.shape[1] not in (1, 3):  # make_grid and PNG know grey and RGB; show other stacks by their first channel
        tiles = tiles[:, :1]
    tiles = tiles.repeat_interleave(zoom, dim=2).repeat_interleave(zoom, dim=3)  # nearest neighbour: pixels stay sharp
    grid = make_grid(tiles, nrow=n, padding=PAD, pad_value=1.0)  # (3, H', W'); grey tiles become RGB
    return grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def canvas(fig: Any) -> np.ndarray:
    """Draw `fig` and return its pixels as (H, W, 3) uint8."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def figure(width: float, height: float, **options: Any) -> Any:
    """A matplotlib Figure of `width` x `height` inches at DPI on its own Agg canvas (no pyplot, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, **options)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: rendering without pyplot or a GUI backend
    return fig
