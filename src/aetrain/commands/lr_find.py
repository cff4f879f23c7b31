"""`aetrain lr_find`: the learning-rate range test (Smith 2017, as Lightning's and fastai's lr finders run it).

The configured model trains on the configured data for `num_steps` optimizer steps while the
learning rate rises exponentially from `min_lr` to `max_lr`, one rate per step. It trains on the
engine of `aetrain train`, with the parts `aetrain train` builds from the same config (objective,
precision, clipping, accumulation, the step), two pieces swapped in: a range schedule
(`RangeSchedule`, in place of the configured scheduler) and a callback (`RangeTest`) that reads
each step's loss once the step's update is done and ends the fit after `num_steps` steps, or
early once an exponential moving average of the loss (factor 0.98, bias-corrected, as Lightning
and fastai stop) exceeds `divergence` times its minimum or is not finite.

The suggestion: the rate where the loss falls fastest against log(lr), on the losses smoothed by
a centered moving average over about a tenth of the steps (9 of 100), between the 11th step and
the lowest smoothed loss. Lightning applies the same steepest-descent rule to the moving average
above; that average is causal and lags about 1/(1 - 0.98) = 50 steps, half of a 100-step test, so
its steepest point comes late: on the default dense AE it suggested 1.7e-3 where the loss of each
step falls fastest near 1e-3, and 1.7e-3 trained worse than the default 1e-3 (best val/loss
0.00704 against 0.00666). The centered average has no lag (the suggestion is made after the test),
and the search ends at the lowest averaged loss before it first climbs to twice its lowest so
far, which keeps the fall after a divergence spike out of it. No suggestion when the average
never falls by 5% of where it started (a loss that stays flat, or saturates, over the range). It is
a starting point, not an optimum: where the model learns fastest at the start.

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
from aetrain.commands.train import RecordInvocation, build_parts
from aetrain.config import Config, LRFindConfig, validate_command
from aetrain.errors import AetrainError
from aetrain.rundir import LR_FIND_FILES, Invocation, RunDir
from aetrain.train.engine import NONFINITE, Callback, Engine
from aetrain.train.optim import Schedule

log = logging.getLogger(__name__)

SMOOTHING = 0.98  # weight of the running average that decides when to stop (fastai's and Lightning's)
SKIP_BEGIN = 10  # steps left out of the suggestion at the start, where the loss is noise (Lightning's default)
MIN_FALL = 0.05  # no suggestion unless the averaged loss falls by this share of where it started


@dataclass
class LRFindResult:
    suggestion: float | None  # the suggested optimizer.lr; None when the loss did not fall (see `suggest`)
    why_none: str  # why there is no suggestion; "" when there is one
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]  # the centered moving average the suggestion is read from
    stopped_early: bool


class NoSuggestion(AetrainError):
    """The loss did not fall over the range: no rate to suggest. The test ran (its files show what happened)."""

    exit_code = 1  # the command was fine; the test found nothing
    label = ""  # `aetrain: lr_find: no suggestion: ...`


def lr_find(cfg: Config, find: LRFindConfig, run_dir: RunDir, invocation: Invocation | None = None) -> LRFindResult:
    """`aetrain lr_find`: the range test into `run_dir` (what was run recorded there once the test starts), the
    suggestion and where the files are logged; NoSuggestion when the loss did not fall over the range."""
    result = run(cfg, find, run_dir.path, invocation=invocation)
    table, picture, summary = (run_dir.path / name for name in LR_FIND_FILES)
    if result.suggestion is None:
        last = result.lrs[-1] if result.lrs else find.min_lr
        raise NoSuggestion(f"lr_find: no suggestion: {result.why_none} over {len(result.lrs)} steps from "
                           f"lr_find.min_lr={find.min_lr:g} to {last:.2g}; try a wider range (see {picture})")
    note = " (the loss diverged before lr_find.max_lr)" if result.stopped_early else ""
    log.info("suggested optimizer.lr=%.2g  (steepest descent of the averaged loss over %d steps%s; configured: %g)",
             result.suggestion, len(result.lrs), note, cfg.optimizer.lr)
    log.info("  plot: %s", picture)
    log.info("  loss per step: %s; suggestion and settings: %s", table, summary)
    return result


class RangeSchedule(Schedule):
    """The test's learning rates, one per optimizer step (`lrs[i]` for step i), set in place of a schedule."""

    per_step = True

    def __init__(self, optimizer: torch.optim.Optimizer, lrs: list[float]) -> None:
        super().__init__()
        self.optimizer, self.lrs, self.steps = optimizer, lrs, 0
        self._set()

    def after_step(self) -> None:
        self.steps += 1
        self._set()

    def _set(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lrs[min(self.steps, len(self.lrs) - 1)]


class RangeTestOver(Exception):
    """Ends the fit from `RangeTest.on_step`, mid-epoch (the engine ends a fit early only between epochs)."""


class RangeTest(Callback):
    """Each step's loss, read once the step's update is done (one host read a step: the test decides after every
    step whether to go on), and the end of the test: after `num_steps` steps, or once the smoothed loss diverges."""

    def __init__(self, find: LRFindConfig) -> None:
        self.find = find
        self.losses: list[float] = []
        self.average, self.best, self.stopped_early = 0.0, math.inf, False

    def on_step(self, engine: Engine) -> None:
        meter, window = engine.meter, engine.parts.windows[engine.state.step_in_epoch - 1]
        loss = torch.zeros(())
        for row, weight in zip(meter.terms[meter.batches - len(window) : meter.batches], window):
            loss = loss + row[0].float().cpu() * weight  # the step's loss: its micro-batches' by their share
        value = float(loss)
        self.losses.append(value)
        i = len(self.losses) - 1
        self.average = SMOOTHING * self.average + (1 - SMOOTHING) * value
        smooth = self.average / (1 - SMOOTHING ** (i + 1))  # bias-corrected
        if not math.isfinite(smooth) or smooth > self.find.divergence * self.best:
            self.stopped_early = i < self.find.num_steps - 1
            raise RangeTestOver
        self.best = min(self.best, smooth)
        if len(self.losses) == self.find.num_steps:
            raise RangeTestOver


def run(cfg: Config, find: LRFindConfig, out_dir: Path, *, invocation: Invocation | None = None) -> LRFindResult:
    """The range test on `cfg`'s model and data, on the engine; writes its files into `out_dir` (and `invocation`
    into .hydra/ when the test starts) and returns the result."""
    validate_command("lr_find", find)
    cfg = replace(cfg, diagnostics=replace(cfg.diagnostics, enabled=False))  # nothing to diagnose in 100 steps
    parts = build_parts(cfg)
    lrs = np.geomspace(find.min_lr, find.max_lr, find.num_steps).tolist()
    parts.schedule = RangeSchedule(parts.optimizer, lrs)
    epochs = math.ceil(find.num_steps / len(parts.windows))  # enough for every step; the test ends the fit
    parts.cfg = replace(parts.cfg, trainer=replace(parts.cfg.trainer, max_epochs=epochs))
    test = RangeTest(find)
    recorded = [RecordInvocation(RunDir(out_dir), invocation)] if invocation is not None else []
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        Engine(parts, [*recorded, test], nonfinite=NONFINITE.get(cfg.trainer.on_nonfinite)()).fit()
    except RangeTestOver:
        pass
    losses = test.losses
    lrs = lrs[: len(losses)]
    smoothed = centered_average(losses, window_for(find.num_steps))
    suggestion, why_none = suggest(lrs, losses, window_for(find.num_steps))
    result = LRFindResult(suggestion, why_none, lrs, losses, smoothed, test.stopped_early)
    _write(result, cfg, find, out_dir)
    return result


def window_for(num_steps: int) -> int:
    """The centered average's width: about a tenth of the steps, odd (9 for 100 steps), at least 3."""
    return max(3, 2 * (num_steps // 22) + 1)


def centered_average(losses: list[float], window: int) -> list[float]:
    """Each step's loss averaged with the window // 2 steps on either side (fewer at the ends, where the
    window is cut short); a non-finite loss stays as it is and is left out of its neighbours' averages."""
    values = np.asarray(losses, dtype=float)
    if not len(values):
        return []
    finite = np.isfinite(values)
    kernel = np.ones(window)
    same = slice((window - 1) // 2, (window - 1) // 2 + len(values))  # numpy's "same", also for fewer steps than
    sums = np.convolve(np.where(finite, values, 0.0), kernel)[same]  # the window (its "same" is then as long as it)
    counts = np.convolve(finite.astype(float), kernel)[same]
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
    from aetrain.drawing import encode_png

    write_atomic(out_dir / plot_name, encode_png(plot(result, cfg)))


def plot(result: LRFindResult, cfg: Config) -> np.ndarray:
    """lr_find.png: the centered average of the loss (and each step's loss, faint) against the learning rate,
    log x axis."""
    from aetrain.drawing import TRAIN, VAL, canvas, figure

    fig = figure(6.4, 4.2)
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
    return canvas(fig)
