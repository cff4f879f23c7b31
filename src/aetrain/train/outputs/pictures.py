"""The pictures a run draws: loss_curve.png, reconstructions/epoch_NNN.png, and each gallery of the
model's family (the VAE's samples/epoch_NNN.png), on the epochs `DrawClock` picks.

- loss_curve.png: every loss term per epoch (train and validation) and the learning rate (also
  loss_curve.svg or .pdf with outputs.figure_format);
- reconstructions/: the same validation samples every epoch, originals above reconstructions
  (with the corrupted inputs between them for denoising runs), each row named and the epoch
  above them, or heatmaps of original against
  reconstructed features for tabular rows;
- <gallery>/: what the family draws (the VAE: decoded draws from the prior, the same draws every
  epoch, so what changes between pictures is the model).

Cost: a picture costs tens to a few hundred milliseconds, more than a whole epoch of a small
model, so pictures are drawn at the first and last epoch and otherwise only while the time spent
drawing stays within `outputs.render_budget` of the run's time.

Randomness: nothing here draws from the global RNGs. The grid's samples and the galleries' draws
come from private generators; the denoising row's corruption is drawn once, on the CPU, inside
`fork_rng`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aetrain.atomic import write_atomic
from aetrain.config import OutputsConfig
from aetrain.models import Gallery
from aetrain.models.objective import identity
from aetrain.rundir import LOSS_CURVE, RECONSTRUCTIONS, loss_curve_vector, picture_name
from aetrain.train.engine import Callback, Engine, metric_columns
from aetrain.train.outputs import plots
from aetrain.train.outputs.tensorboard import ImageSink

log = logging.getLogger(__name__)


class DrawClock:
    """Which epochs get pictures: the session's first and last always; in between every `every`
    epochs while time spent drawing, plus the next draw's expected cost, stays within `budget`
    of the time since the session started (budget 1: every `every` epochs regardless)."""

    def __init__(self, every: int, budget: float, clock: Any = time.perf_counter) -> None:
        self.every, self.budget, self.clock = every, budget, clock
        self.start = clock()
        self.spent = 0.0  # seconds spent drawing
        self.last_cost = 0.0  # seconds the latest draw took: the estimate for the next

    def restart(self) -> None:
        self.start, self.spent, self.last_cost = self.clock(), 0.0, 0.0

    def due(self, epoch: int, *, first: bool, last: bool) -> bool:
        if first or last:
            return True
        if epoch % self.every:
            return False
        return self.budget >= 1.0 or self.spent + self.last_cost <= self.budget * (self.clock() - self.start)

    def charge(self, seconds: float) -> None:
        self.spent += seconds
        self.last_cost = seconds


def fixed_samples(data: Any, num: int, seed: int) -> torch.Tensor:
    """`num` validation samples picked by `seed` with a private generator, on the training device."""
    n = min(num, data.num_val)
    idx = torch.randperm(data.num_val, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    if isinstance(data.val, torch.Tensor):
        x = data.val[idx.to(data.val.device)]
    else:  # an image folder: load just these
        x = torch.stack([data.val[i] for i in idx.tolist()])
    return x.to(data.device)


def fixed_corruption(corrupt: Any, x: torch.Tensor, seed: int) -> torch.Tensor:
    """`corrupt(x)` with noise from `seed`, leaving every global RNG as it was.

    Drawn on the CPU, whatever the training device, so one fork of the CPU generator covers it.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: that would also reseed CUDA
        return corrupt(x.cpu()).to(x.device)


class Views:
    """The fixed samples and how to picture the model on them: reconstructions and the family's galleries."""

    def __init__(self, engine: Engine, cfg: OutputsConfig) -> None:
        p = engine.parts
        self.spec, self.model, self.cfg, self.galleries = p.data.spec, p.model, cfg, p.galleries
        self.samples = fixed_samples(p.data, cfg.num_samples, cfg.sample_seed)  # (n, *shape), model units
        corrupt = p.objective.corrupt
        # denoising: the inputs the model sees; drawn once with a fixed seed, so every epoch shows the same noise
        self.inputs = self.samples if corrupt is identity else fixed_corruption(corrupt, self.samples, cfg.sample_seed)
        self.denoising = corrupt is not identity
        self.zoom = plots.zoom_factor(self.spec.shape, cfg.grid_zoom_to) if self.spec.is_image else 1
        # display range of standardized data: the originals' own, shared by every row, picture and epoch
        self.low, self.high = float(self.samples.min()), float(self.samples.max())
        if not self.spec.is_image:
            unit = "model units (0-1)" if self.spec.unit_interval else "standardized units"
            self.heatmaps = plots.RowHeatmaps(self.samples.flatten(1).float().cpu().numpy(), unit)
            self.gallery_maps = {g.folder: plots.RowMap(g.title, unit, self.low, self.high) for g in self.galleries}

    @torch.no_grad()
    def _evaluated(self, fn: Any) -> Any:
        was_training = self.model.training
        self.model.eval()  # no dropout draws, batch norm from running statistics
        try:
            return fn()
        finally:
            self.model.train(was_training)

    def reconstructions(self, epoch: int) -> np.ndarray:
        x_hat = self._evaluated(lambda: self.model(self.inputs)[1])  # (n, *shape) -> (n, *shape), model units
        if not self.spec.is_image:
            return self.heatmaps.draw(x_hat.flatten(1).float().cpu().numpy(), epoch)
        rows = [self.samples, self.inputs, x_hat] if self.denoising else [self.samples, x_hat]
        names = ["original", "corrupted input", "reconstruction"] if self.denoising else ["original", "reconstruction"]
        title = f"epoch {epoch:03d}: {len(self.samples)} validation samples, the same every epoch"
        return plots.labelled_grid([self._display(r) for r in rows], self.zoom, names=names, title=title)

    def gallery(self, gallery: Gallery, epoch: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(self.cfg.sample_seed)  # the same draws every epoch
        x = self._evaluated(lambda: gallery.draw(self.model, self.cfg.num_samples, generator))  # (n, *shape)
        if not self.spec.is_image:
            return self.gallery_maps[gallery.folder].draw(x.flatten(1).float().cpu().numpy(), epoch)
        per_row = math.ceil(math.sqrt(len(x)))
        rows = [self._display(r) for r in x.split(per_row)]
        rows[-1] = torch.cat([rows[-1], torch.ones(per_row - len(rows[-1]), *x.shape[1:], device=x.device)])
        return plots.labelled_grid(rows, self.zoom, title=f"epoch {epoch:03d}: {len(x)} {gallery.title}")

    def _display(self, x: torch.Tensor) -> torch.Tensor:
        """Model units -> [0, 1] for viewing: as they are for unit-interval data, else by the originals' range."""
        if not self.spec.unit_interval:
            x = (x - self.low) / max(self.high - self.low, 1e-12)
        return x.clamp(0.0, 1.0)


class Pictures(Callback):
    """Draws loss_curve.png, reconstructions/epoch_NNN.png and the galleries on the epochs `DrawClock` picks."""

    def __init__(self, cfg: OutputsConfig, run_dir: Path, sink: ImageSink) -> None:
        self.cfg, self.run_dir, self.sink = cfg, run_dir, sink
        self.clock = DrawClock(cfg.plot_every, cfg.render_budget)
        self.first_epoch = 1
        self.drawn_epoch = -1
        self.failed = False

    def on_fit_start(self, engine: Engine) -> None:
        # the figures are built at the first draw, after the first epoch: matplotlib's set-up (about a
        # second) would otherwise delay the first optimizer step
        self.curve: plots.LossCurve | None = None
        self.views: Views | None = None
        self.clock.clock = engine.clock  # the run's time (a fused member's share of its group's)
        self.clock.restart()
        self.first_epoch, self.drawn_epoch = engine.state.epoch + 1, -1

    def on_epoch_end(self, engine: Engine, record: dict[str, Any]) -> None:
        epoch = record["epoch"]
        if self.clock.due(epoch, first=epoch == self.first_epoch, last=epoch >= engine.parts.cfg.trainer.max_epochs):
            self.draw(engine)

    def on_fit_end(self, engine: Engine) -> None:
        if engine.history and self.drawn_epoch != engine.state.epoch:  # stopped early, or failed: show it
            self.draw(engine)

    def draw(self, engine: Engine) -> None:
        tic = time.perf_counter()
        epoch, step = engine.state.epoch, engine.state.step
        first = self.curve is None
        try:
            if first:
                p = engine.parts
                self.curve = plots.LossCurve(f"{p.cfg.model.name} on {p.data.spec.name}", metric_columns(p))
                self.views = Views(engine, self.cfg)
            write_atomic(self.run_dir / LOSS_CURVE, plots.encode_png(self.curve.draw(engine.history)))
            if self.cfg.figure_format != "png":  # the same figure as vector graphics, on request
                fmt = self.cfg.figure_format
                write_atomic(self.run_dir / loss_curve_vector(fmt), self.curve.vector(fmt))
            # a grid shows the model at an epoch's end: not one stopped part-way into the next
            if epoch > 0 and engine.state.step_in_epoch == 0 and engine.history[-1]["epoch"] == epoch:
                self._write(RECONSTRUCTIONS, self.views.reconstructions(epoch), epoch, step)
                for gallery in self.views.galleries:
                    self._write(gallery.folder, self.views.gallery(gallery, epoch), epoch, step)
        except Exception as e:  # a picture is never worth a training run
            if not self.failed:
                log.warning("could not draw the run's pictures (training goes on): %s: %s", type(e).__name__, e,
                            exc_info=log.isEnabledFor(logging.DEBUG))
            self.failed = True
        self.drawn_epoch = epoch
        if first:  # it paid one-time costs (imports, fonts, layouts): not the price of a picture
            self.clock.restart()
        else:
            self.clock.charge(time.perf_counter() - tic)

    def _write(self, folder: str, image: np.ndarray, epoch: int, step: int) -> None:
        png = plots.encode_png(image)
        write_atomic(self.run_dir / folder / picture_name(epoch), png)
        self.sink.add_image(folder, png, image.shape, step)
