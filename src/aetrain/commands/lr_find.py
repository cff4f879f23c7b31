"""`aetrain lr_find`: the learning-rate range test (Smith 2017, as Lightning's and fastai's lr finders run it).

The configured model trains on the configured data for `num_steps` optimizer steps while the
learning rate rises exponentially from `min_lr` to `max_lr`, one rate per step; every other
part of the run (objective, precision, clipping, accumulation) is the one `aetrain train` would
build from the same config. The configured scheduler is not used (the test sets the rate). The
test stops early once an exponential moving average of the loss (factor 0.98, bias-corrected,
as Lightning and fastai stop) exceeds `divergence` times its minimum or is not finite.

The suggestion: the rate where the loss falls fastest against log(lr), on the losses smoothed by
a centered moving average over about a tenth of the steps (9 of 100), between the 11th step and
the lowest smoothed loss. Lightning applies the same steepest-descent rule to the moving average
above; that average is causal and lags about 1/(1 - 0.98) = 50 steps, half of a 100-step test, so
its steepest point comes late: on the default dense AE it suggested 1.7e-3 where the loss of each
step falls fastest near 1e-3, and 1.7e-3 trained worse than the default 1e-3 (best val/loss
0.00704 against 0.00666). The centered average has no lag (the suggestion is made after the test),
and the search ends at the lowest averaged loss before it first climbs to twice its lowest so
far, which keeps the fall after a divergence spike out of it. No suggestion when the average
never falls by 5% of where it started (a loss that stays flat, or saturates, over the range). It is a starting point, not an optimum: where the model learns fastest at the start.

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

from aetrain.atomic import write_atomic
from aetrain.config import Config
from aetrain.errors import ConfigError
from aetrain.rundir import LR_FIND_FILES
from aetrain.commands.train import build_parts

log = logging.getLogger(__name__)

SMOOTHING = 0.98  # weight of the running average that decides when to stop (fastai's and Lightning's)
SKIP_BEGIN = 10  # steps left out of the suggestion at the start, where the loss is noise (Lightning's default)
MIN_FALL = 0.05  # no suggestion unless the averaged loss falls by this share of where it started


@dataclass
class LRFindConfig:
    """The range test's own settings: `aetrain lr_find lr_find.num_steps=200 ...`."""

    min_lr: float = 1e-7  # the learning rate of the first step, > 0
    max_lr: float = 1.0  # the learning rate of the last step, > min_lr
    num_steps: int = 100  # optimizer steps over which the rate rises exponentially, >= 20
    divergence: float = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum, > 1


@dataclass
class LRFindResult:
    suggestion: float | None  # the suggested optimizer.lr; None when the loss did not fall (see `suggest`)
    why_none: str  # why there is no suggestion; "" when there is one
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]  # the centered moving average the suggestion is read from
    stopped_early: bool


def validate(find: LRFindConfig) -> None:
    def require(ok: bool, key: str, allowed: str, value: object) -> None:
        if not ok:
            raise ConfigError(f"lr_find.{key}={value!r} is out of range: must be {allowed}")

    require(math.isfinite(find.min_lr) and find.min_lr > 0, "min_lr", "a finite number > 0", find.min_lr)
    require(math.isfinite(find.max_lr) and find.max_lr > find.min_lr, "max_lr",
            f"a finite number > lr_find.min_lr={find.min_lr:g}", find.max_lr)
    require(find.num_steps >= SKIP_BEGIN + 10, "num_steps", f">= {SKIP_BEGIN + 10}", find.num_steps)
    require(math.isfinite(find.divergence) and find.divergence > 1, "divergence", "a finite number > 1", find.divergence)


def run(cfg: Config, find: LRFindConfig, out_dir: Path) -> LRFindResult:
    """The range test on `cfg`'s model and data; writes its files into `out_dir` and returns the result."""
    validate(find)
    cfg = replace(cfg, diagnostics=replace(cfg.diagnostics, enabled=False))  # nothing to diagnose in 100 steps
    parts = build_parts(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    lrs = np.geomspace(find.min_lr, find.max_lr, find.num_steps).tolist()
    losses: list[float] = []
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
        parts.step.begin(epoch + (i % steps_per_epoch + 1) / steps_per_epoch, len(window))
        terms = [parts.step.forward_backward(next(batches), weight) for weight in window]
        parts.step.update()  # the window's terms are final from here (a graphed step computes them now)
        loss = sum(t["loss"].detach().float() * weight for t, weight in zip(terms, window))
        value = float(loss)  # one host read a step: the test needs each step's loss to decide when to stop
        losses.append(value)
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smooth = average / (1 - SMOOTHING ** (i + 1))  # bias-corrected
        if not math.isfinite(smooth) or smooth > find.divergence * best:
            stopped = i < len(lrs) - 1
            break
        best = min(best, smooth)
    lrs = lrs[: len(losses)]
    smoothed = centered_average(losses, window_for(find.num_steps))
    suggestion, why_none = suggest(lrs, losses, window_for(find.num_steps))
    result = LRFindResult(suggestion, why_none, lrs, losses, smoothed, stopped)
    _write(result, cfg, find, out_dir)
    return result


def window_for(num_steps: int) -> int:
    """The centered average's width: about a tenth of the steps, odd (9 for 100 steps), at least 3."""
    return max(3, 2 * (num_steps // 22) + 1)


def centered_average(losses: list[float], window: int) -> list[float]:
    """Each step's loss averaged with the window // 2 steps on either side (fewer at the ends, where the
    window is cut short); a non-finite loss stays as it is and is left out of its neighbours' averages."""
    values = np.asarray(losses, dtype=float)
    if not values.size:
        return []
    finite = np.isfinite(values)
    kernel = np.ones(window)
    # the full convolution cut to the steps: what mode="same" gives, also for fewer steps than the window
    # (a test that stopped early), where "same" returns the window's length instead
    centred = slice((window - 1) // 2, (window - 1) // 2 + len(values))
    sums = np.convolve(np.where(finite, values, 0.0), kernel)[centred]
    counts = np.convolve(finite.astype(float), kernel)[centred]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(finite, sums / counts, values)
    return out.tolist()


def suggest(lrs: list[float], losses: list[float], window: int = 9) -> tuple[float | None, str]:
    """The rate where the centered average of `losses` falls fastest against log(lr), from step SKIP_BEGIN + 1
    up to its lowest point before it first climbs to twice the lowest so far (a divergence, whatever the loss
    does after it); and why there is none (None, reason) when the average never falls by MIN_FALL of where
    it started, or fewer than 3 finite steps lie there. See the module docstring."""
    smoothed = np.asarray(centered_average(losses, window), dtype=float)
    rates = np.asarray(lrs, dtype=float)
    finite = np.isfinite(smoothed)
    loss, rates = smoothed[finite][SKIP_BEGIN:], rates[finite][SKIP_BEGIN:]
    if len(loss) < 3:
        return None, (f"only {int(finite.sum())} step{'' if finite.sum() == 1 else 's'} with a finite loss, too few "
                      f"to read a slope from (it takes {SKIP_BEGIN + 3})")
    climbed = np.nonzero(loss > 2 * np.minimum.accumulate(loss))[0]
    loss, rates = (loss[: climbed[0]], rates[: climbed[0]]) if climbed.size else (loss, rates)
    end = int(loss.argmin()) + 1
    if loss[end - 1] > (1 - MIN_FALL) * loss[0]:
        return None, f"the loss did not fall by {MIN_FALL:.0%} from where it started"
    loss, rates = loss[:end], rates[:end]
    if len(loss) < 3:
        return None, "the loss was lowest at once and then diverged"
    return float(rates[np.gradient(loss, np.log(rates)).argmin()]), ""


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
        **({"no_suggestion": result.why_none} if result.suggestion is None else {}),
        "rule": f"steepest descent against log(lr) of the loss's centered {window_for(find.num_steps)}-step average, "
                "up to its lowest point",
        "model": cfg.model.name, "data": cfg.data.name, "optimizer": cfg.optimizer.name,
        "configured_lr": cfg.optimizer.lr, "steps": len(result.lrs), "stopped_early": result.stopped_early,
        "settings": asdict(find),
    }, indent=2) + "\n")
    from aetrain.train.outputs.plots import encode_png

    write_atomic(out_dir / plot_name, encode_png(plot(result, cfg)))


def plot(result: LRFindResult, cfg: Config) -> np.ndarray:
    """lr_find.png: the centered average of the loss (and each step's loss, faint) against the learning rate,
    log x axis."""
    from aetrain.train.outputs.plots import TRAIN, VAL, _canvas, _figure

    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    fig.subplots_adjust(left=0.13, right=0.97, top=0.88, bottom=0.13)
    lrs, smoothed = np.asarray(result.lrs), np.asarray(result.smoothed)
    ax.plot(lrs, result.losses, color=TRAIN, alpha=0.25, linewidth=1.0, label="loss of each step")
    ax.plot(lrs, smoothed, color=TRAIN, linewidth=1.8, label="centered average")
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
