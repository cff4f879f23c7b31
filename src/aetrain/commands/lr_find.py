"""`aetrain lr_find`: the learning-rate range test (Smith 2017, as Lightning's and fastai's lr finders run it).

The configured model trains on the configured data for `num_steps` optimizer steps while the
learning rate rises exponentially from `min_lr` to `max_lr`, one rate per step; every other
part of the run (objective, precision, clipping, accumulation) is the one `aetrain train` would
build from the same config. The configured scheduler is not used (the test sets the rate). The
loss of each step is smoothed with an exponential moving average (factor 0.98, bias-corrected);
the test stops early once the smoothed loss exceeds `divergence` times its minimum or is not
finite.

The suggestion is Lightning's rule: the rate where the smoothed loss falls fastest, i.e. the
minimum of its gradient against log(lr), leaving out the first 10 steps and the last one
(where the loss is noisy or already diverging). It is a starting point, not an optimum: the
rate of steepest descent is where the model learns fastest at the start of training.

Writes into `out_dir`: lr_find.csv (step, lr, loss, smoothed loss), lr_find.png (smoothed loss
against lr on a log axis, the suggestion marked) and lr_find.json (the suggestion and the test's
settings).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from aetrain.atomic import write_atomic
from aetrain.config import Config
from aetrain.errors import ConfigError
from aetrain.rundir import LR_FIND_FILES
from aetrain.commands.train import build_parts

log = logging.getLogger(__name__)

SMOOTHING = 0.98  # weight of the running average in the smoothed loss (fastai's and Lightning's)
SKIP_BEGIN, SKIP_END = 10, 1  # steps left out of the suggestion at either end (Lightning's defaults)


@dataclass
class LRFindConfig:
    """The range test's own settings: `aetrain lr_find lr_find.num_steps=200 ...`."""

    min_lr: float = 1e-7  # the learning rate of the first step, > 0
    max_lr: float = 1.0  # the learning rate of the last step, > min_lr
    num_steps: int = 100  # optimizer steps over which the rate rises exponentially, >= 20
    divergence: float = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum, > 1


@dataclass
class LRFindResult:
    suggestion: float | None  # the suggested optimizer.lr; None when the test had too few finite steps
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stopped_early: bool


def validate(find: LRFindConfig) -> None:
    def require(ok: bool, key: str, allowed: str, value: object) -> None:
        if not ok:
            raise ConfigError(f"lr_find.{key}={value!r} is out of range: must be {allowed}")

    require(math.isfinite(find.min_lr) and find.min_lr > 0, "min_lr", "a finite number > 0", find.min_lr)
    require(math.isfinite(find.max_lr) and find.max_lr > find.min_lr, "max_lr",
            f"a finite number > lr_find.min_lr={find.min_lr:g}", find.max_lr)
    require(find.num_steps >= SKIP_BEGIN + SKIP_END + 9, "num_steps", f">= {SKIP_BEGIN + SKIP_END + 9}", find.num_steps)
    require(math.isfinite(find.divergence) and find.divergence > 1, "divergence", "a finite number > 1", find.divergence)


def run(cfg: Config, find: LRFindConfig, out_dir: Path) -> LRFindResult:
    """The range test on `cfg`'s model and data; writes its files into `out_dir` and returns the result."""
    validate(find)
    cfg = replace(cfg, diagnostics=replace(cfg.diagnostics, enabled=False))  # nothing to diagnose in 100 steps
    parts = build_parts(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    lrs = np.geomspace(find.min_lr, find.max_lr, find.num_steps).tolist()
    losses: list[float] = []
    smoothed: list[float] = []
    average, best, stopped = 0.0, math.inf, False
    steps_per_epoch = len(parts.windows)
    parts.model.train()
    epoch, batches = 0, parts.data.train.epoch(0)
    for i, lr in enumerate(lrs):
        if i and i % steps_per_epoch == 0:
            epoch += 1
            batches = parts.data.train.epoch(epoch)
        window = parts.windows[i % steps_per_epoch]
        for group in parts.optimizer.param_groups:
            group["lr"] = lr
        parts.step.begin(epoch + (i % steps_per_epoch + 1) / steps_per_epoch)
        loss = torch.zeros(())
        for weight in window:
            loss = loss + parts.step.forward_backward(next(batches), weight)["loss"].detach().float().cpu() * weight
        parts.step.update()
        value = float(loss)  # one host read a step: the test needs each step's loss to decide when to stop
        losses.append(value)
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smooth = average / (1 - SMOOTHING ** (i + 1))  # bias-corrected
        smoothed.append(smooth)
        if not math.isfinite(smooth) or smooth > find.divergence * best:
            stopped = i < len(lrs) - 1
            break
        best = min(best, smooth)
    result = LRFindResult(suggest(lrs[: len(smoothed)], smoothed), lrs[: len(smoothed)], losses, smoothed, stopped)
    _write(result, cfg, find, out_dir)
    return result


def suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    """The rate where the smoothed loss falls fastest against log(lr), without the first SKIP_BEGIN and
    last SKIP_END steps (Lightning's `suggestion`); None when fewer than 3 finite steps remain."""
    loss = np.asarray(smoothed[SKIP_BEGIN : len(smoothed) - SKIP_END], dtype=float)
    rates = np.asarray(lrs[SKIP_BEGIN : len(smoothed) - SKIP_END], dtype=float)
    finite = np.isfinite(loss)
    loss, rates = loss[finite], rates[finite]
    if len(loss) < 3:
        return None
    return float(rates[np.gradient(loss, np.log(rates)).argmin()])


def _write(result: LRFindResult, cfg: Config, find: LRFindConfig, out_dir: Path) -> None:
    table_name, plot_name, json_name = LR_FIND_FILES
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["step", "lr", "loss", "smoothed_loss"])
    for i, (lr, loss, smooth) in enumerate(zip(result.lrs, result.losses, result.smoothed)):
        writer.writerow([i + 1, f"{lr:.6g}", f"{loss:.8g}", f"{smooth:.8g}"])
    write_atomic(out_dir / table_name, text.getvalue())
    write_atomic(out_dir / json_name, json.dumps({
        "suggested_lr": result.suggestion,
        "rule": "steepest descent of the smoothed loss against log(lr) (Lightning's suggestion)",
        "model": cfg.model.name, "data": cfg.data.name, "optimizer": cfg.optimizer.name,
        "configured_lr": cfg.optimizer.lr, "steps": len(result.lrs), "stopped_early": result.stopped_early,
        "settings": asdict(find),
    }, indent=2) + "\n")
    from aetrain.train.outputs.plots import encode_png

    write_atomic(out_dir / plot_name, encode_png(plot(result, cfg)))


def plot(result: LRFindResult, cfg: Config) -> np.ndarray:
    """lr_find.png: the smoothed loss (and each step's loss, faint) against the learning rate, log x axis."""
    from aetrain.train.outputs.plots import TRAIN, VAL, _canvas, _figure

    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    fig.subplots_adjust(left=0.13, right=0.97, top=0.88, bottom=0.13)
    lrs, smoothed = np.asarray(result.lrs), np.asarray(result.smoothed)
    ax.plot(lrs, result.losses, color=TRAIN, alpha=0.25, linewidth=1.0, label="loss of each step")
    ax.plot(lrs, smoothed, color=TRAIN, linewidth=1.8, label="smoothed loss")
    ax.set_xscale("log")
    raw = np.asarray(result.losses)
    finite = np.concatenate([smoothed[np.isfinite(smoothed)], raw[np.isfinite(raw)]])
    if finite.size:  # the diverging tail would squash the curve: show from the lowest loss to a little above the start
        low, top = finite.min(), max(smoothed[0], finite.min()) * 1.15
        ax.set_ylim(low - 0.05 * (top - low), top)
    if result.suggestion is not None:
        at = int(np.argmin(np.abs(np.log(lrs) - math.log(result.suggestion))))
        ax.axvline(result.suggestion, color=VAL, linewidth=1.0, linestyle="--")
        ax.plot([result.suggestion], [smoothed[at]], marker="o", color=VAL, markersize=8,
                label=f"suggested optimizer.lr={result.suggestion:.2g}")
    ax.axvline(cfg.optimizer.lr, color="grey", linewidth=1.0, linestyle=":", label=f"configured {cfg.optimizer.lr:g}")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower left", fontsize=9, frameon=False)
    fig.suptitle(f"LR range test: {cfg.model.name} on {cfg.data.name}, {cfg.optimizer.name}", fontsize=11)
    return _canvas(fig)
