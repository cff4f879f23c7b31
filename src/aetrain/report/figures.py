"""Pictures for the pages: the sweep's matplotlib figures, and the PNG handling that keeps a page small
(palette or grey PNGs, a reconstruction grid cut into its rows).

Every figure is a deterministic function of its numbers (Agg, fixed size and dpi, no dates in the
files), so the same dir always gives the same bytes. Matplotlib is used through its object API.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from aetrain.drawing import LABELLED, PAD
from aetrain.report.sweeps import SEED, Sweep, number, short

BEST, OTHER, FAILED = "#2ca02c", "#1f77b4", "#d62728"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def compact_png(data: bytes, *, lossy: bool = False) -> bytes:
    """The same picture in fewer bytes: grey when every pixel is grey, a palette when it has at most 256
    colours (exact), else (`lossy`, for charts: flat colours and anti-aliased edges) 256 colours from an
    octree, without dithering; the original when none of these is smaller. Deterministic."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception:  # not a picture PIL can read: inline it as it is
        return data
    if image.mode in ("RGBA", "LA") and image.getchannel("A").getextrema()[0] < 255:
        return data  # transparency: keep it
    rgb = image.convert("RGB")
    colours = rgb.getcolors(256)  # [(count, (r, g, b))], None when there are more than 256
    if colours is not None and all(r == g == b for _, (r, g, b) in colours):
        out = rgb.convert("L")
    elif colours is not None:
        palette = np.array(sorted((r << 16) | (g << 8) | b for _, (r, g, b) in colours), dtype=np.uint32)
        pixels = np.asarray(rgb).astype(np.uint32)
        packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
        out = Image.fromarray(np.searchsorted(palette, packed).astype(np.uint8), "P")
        out.putpalette(np.stack([palette >> 16, (palette >> 8) & 255, palette & 255], 1).astype(np.uint8)
                       .ravel().tolist())
    elif lossy:
        out = rgb.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    else:
        return data
    buffer = io.BytesIO()
    out.save(buffer, format="png")
    return min(buffer.getvalue(), data, key=len)


def grid_rows(png: bytes, tile_height: int) -> list[bytes] | None:
    """A reconstruction grid (README "Outputs to look at": one row of tiles per kind, `PAD` white pixels
    between and around them) cut into its rows, each with its padding above and below; None when the
    picture does not have that geometry."""
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    if tile_height <= 0:
        return None
    for above, below in ((0, 0), LABELLED):  # a bare grid, or a labelled one: its rows are cut with their names
        height = image.height - above - below
        if height > PAD and not (height - PAD) % (tile_height + PAD):
            break
    else:
        return None
    count = (height - PAD) // (tile_height + PAD)
    rows = []
    for i in range(count):
        top = above + i * (tile_height + PAD)
        buffer = io.BytesIO()
        image.crop((0, top, image.width, top + tile_height + 2 * PAD)).save(buffer, format="png")
        rows.append(compact_png(buffer.getvalue()))
    return rows


def same_pixels(a: bytes, b: bytes) -> bool:
    from PIL import Image

    pa, pb = (np.asarray(Image.open(io.BytesIO(x)).convert("RGB")) for x in (a, b))
    return pa.shape == pb.shape and bool((pa == pb).all())


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return compact_png(buffer.getvalue(), lossy=True)


def _spans(values: Sequence[float], factor: float = 10.0) -> bool:
    v = [x for x in values if math.isfinite(x) and x > 0]
    return len(v) > 1 and max(v) / min(v) >= factor


def _plain(ax: Any, axis: str = "y") -> None:
    from matplotlib.ticker import FuncFormatter

    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    target.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.3g}" if f"{v:.0e}"[0] in "25" else ""))


def objective_by_key(sweep: Sweep) -> bytes | None:
    """One panel per swept key: every finished job's best val/loss at its value of the key, the best job at
    each value joined by a line (what the key's best setting gives), the overall best starred. Numeric keys
    on a log axis when they span a decade; others (choices) evenly spaced in the order first typed."""
    ranked = [j for j in sweep.jobs if j.ranked]
    if not ranked or not sweep.keys:
        return None
    columns = min(len(sweep.keys), 3)
    rows = math.ceil(len(sweep.keys) / columns)
    fig = _figure(3.6 * columns + 0.4, 2.9 * rows)
    axes = fig.subplots(rows, columns, squeeze=False, sharey=True).ravel()
    objectives = [j.objective for j in ranked]
    log_y = _spans(objectives)
    for ax, key in zip(axes, sweep.keys):
        jobs = [j for j in ranked if key in j.values]
        values = [j.values[key] for j in jobs]
        numeric = key != SEED and all(number(v) is not None for v in values)  # a seed is a name, not a quantity
        if numeric:
            xs = [number(v) for v in values]
            order = sorted(set(xs))
            if _spans(order) and min(order) > 0:
                ax.set_xscale("log")
                _plain(ax, "x")
            if len(order) <= 8 and len(order) < len(xs):  # a grid's few, repeated values: ticks at them
                from matplotlib.ticker import NullLocator

                ax.set_xticks(order, [f"{x:.4g}" for x in order], fontsize=8)
                ax.xaxis.set_minor_locator(NullLocator())
        else:
            typed = [j.values[key] for j in sorted(sweep.jobs, key=lambda j: j.num) if key in j.values]
            order = list(dict.fromkeys(typed))  # in the order the jobs ran
            xs = [order.index(v) for v in values]
            ax.set_xticks(range(len(order)), [short(v) for v in order], rotation=30 if len(order) > 4 else 0,
                          fontsize=8)
            ax.set_xlim(-0.5, len(order) - 0.5)
        ax.scatter(xs, [j.objective for j in jobs], s=22, color=OTHER, alpha=0.75, zorder=3, label="job")
        best_at = {}
        for x, j in zip(xs, jobs):
            if x not in best_at or j.objective < best_at[x]:
                best_at[x] = j.objective
        line = sorted(best_at.items())
        if len(line) > 1:
            ax.plot([x for x, _ in line], [y for _, y in line], color=OTHER, alpha=0.45, linewidth=1.2,
                    label="best at each value")
        best = sweep.best
        if best is not None and key in best.values:
            bx = number(best.values[key]) if numeric else order.index(best.values[key])
            ax.plot([bx], [best.objective], "*", color=BEST, markersize=14, markeredgecolor="black",
                    markeredgewidth=0.6, zorder=5, label=f"best: job {best.num}")
        if log_y:
            ax.set_yscale("log")
            _plain(ax)
        ax.set_xlabel(key, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.grid(alpha=0.1, which="minor")
    for ax in axes[len(sweep.keys):]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel("best val/loss", fontsize=9)
    axes[0].legend(fontsize=7, loc="best")
    return _png(fig)


def best_so_far(sweep: Sweep) -> bytes | None:
    """Optuna: each trial's best val/loss in the order they ran, the best so far as a step line, failed
    trials as red crosses at the top."""
    ordered = sorted(sweep.jobs, key=lambda j: j.num)
    ranked = [j for j in ordered if j.ranked]
    if not ranked:
        return None
    fig = _figure(7.2, 3.2)
    ax = fig.add_subplot()
    xs, ys = [j.num for j in ranked], [j.objective for j in ranked]
    ax.plot(xs, ys, "o", color=OTHER, markersize=5, label="trial")
    running = list(np.minimum.accumulate(ys))
    ax.step(xs + [ordered[-1].num], running + [running[-1]], where="post", color=BEST, linewidth=1.6,
            label="best so far")
    best = min(ranked, key=lambda j: j.objective)
    ax.plot([best.num], [best.objective], "*", color=BEST, markersize=14, markeredgecolor="black",
            markeredgewidth=0.6, label=f"best: trial {best.num} ({best.objective:.4g})")
    failed = [j for j in ordered if not j.ranked and j.status == "failed"]
    if failed:
        ax.plot([j.num for j in failed], [0.95] * len(failed), "x", color=FAILED, markersize=8, mew=2,
                transform=ax.get_xaxis_transform(), label="failed")
    if _spans(ys):
        ax.set_yscale("log")
        _plain(ax)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (hydra.job.num), in the order they ran")
    ax.set_ylabel("best val/loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)
