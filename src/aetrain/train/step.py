"""One optimizer step, built once: the seam where a step is made.

`TrainStep` owns everything between a batch and updated weights: the forward pass and the
objective's named terms (under autocast), the scaled backward pass, and, once a window of
micro-batches has been accumulated, unscaling, measuring (and clipping) the gradient norm, the
optimizer step and zeroing the gradients. The engine only calls

    terms = step.forward_backward(x, weight)   # per micro-batch
    grad_norm = step.update()                  # per optimizer step

so a captured CUDA-graph step (`aetrain.train.graphs.GraphedTrainStep`, the same interface:
`Step`), DDP's `no_sync` or per-layer statistics change this object, never the loop. The terms
`forward_backward` returns are final once `update()` has returned (a graphed step computes the
whole window there), and valid until the next step's `update()`. Under DDP, `net` is the
DistributedDataParallel module and `accumulating` its `no_sync`: the micro-batches of a window
but its last keep their gradients local, and the last one's backward exchanges the whole
window's at once. A `GradientProbe` sees the unscaled gradients before clipping and the weights
right after the update, before the gradients are zeroed; the default probe does nothing (a
graphed step runs eagerly when there is one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, ContextManager, Protocol

import torch

from aetrain.models import Objective, Terms
from aetrain.train.precision import Clip, Precision


class GradientProbe:
    """Watches the gradients and updates of a step. This one does nothing (diagnostics off).

    `sampling`: the next optimizer step is one the probe measures. A graphed step runs such a step
    eagerly (Python has to run for the probe to see it) and replays its graph for the others."""

    sampling = False

    def before_update(self, step: TrainStep) -> None:
        """The gradients are complete and unscaled (true units), not yet clipped or applied."""

    def after_update(self, step: TrainStep) -> None:
        """The optimizer has stepped; the gradients are still there (zeroed right after)."""


def admit_always(grad_norm: torch.Tensor) -> bool:
    return True


def admit_if_finite(grad_norm: torch.Tensor) -> bool:
    return bool(torch.isfinite(grad_norm))  # a host sync: the price of trainer.on_nonfinite=skip


_OFF = contextlib.nullcontext()  # reusable, so "no context" costs nothing per micro-batch


class TrainStep:
    def __init__(self, net: torch.nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
                 precision: Precision, clip: Clip, params: list[torch.Tensor], *,
                 admit: Callable[[torch.Tensor], bool] = admit_always, probe: GradientProbe | None = None,
                 accumulating: Callable[[], ContextManager[Any]] | None = None) -> None:
        self.net = net  # the model as the loop calls it (torch.compile'd with trainer.compile; DDP-wrapped under DDP)
        self.objective = objective
        self.optimizer = optimizer
        self.precision = precision
        self.clip = clip
        self.params = params  # the trainable parameters, in a fixed order
        self.admit = admit
        self.probe = probe or GradientProbe()
        # a context for every micro-batch of a window but its last (DDP: no_sync); none by default
        self.accumulating = accumulating or (lambda: _OFF)
        self.remaining = 1  # micro-batches left in the window under way

    def begin(self, epochs: float, micro_batches: int = 1) -> None:
        """Before an optimizer step's `micro_batches`: the progress in epochs once it is done."""
        self.objective.set_progress(epochs)
        self.remaining = micro_batches

    def forward_backward(self, x: torch.Tensor, weight: float) -> Terms:
        """Forward and backward of one micro-batch; `weight` is its share of the step's samples."""
        self.remaining -= 1
        with self.accumulating() if self.remaining > 0 else _OFF:
            with self.precision.autocast:
                terms = self.objective(self.net, x)
            # gradients add up over the window; weighting each micro-batch by its share of the samples
            # makes the update equal that of one batch holding them all
            self.precision.scaler.scale(terms["loss"] * weight).backward()
        return terms

    def update(self) -> torch.Tensor:
        """Unscale, measure and clip, step (skipped by the scaler on inf/NaN), zero; returns the grad norm."""
        scaler = self.precision.scaler
        scaler.unscale_(self.optimizer)  # clipping thresholds are in true gradient units
        self.probe.before_update(self)
        grad_norm = self.clip(self.params)
        if self.admit(grad_norm):
            scaler.step(self.optimizer)
        scaler.update()
        self.probe.after_update(self)
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm


class Step(Protocol):
    """What the engine calls once per optimizer step: `begin`, then `forward_backward` per micro-batch,
    then `update`. `TrainStep` runs it eagerly; `aetrain.train.graphs.GraphedTrainStep` replays a graph."""

    def begin(self, epochs: float, micro_batches: int = 1) -> None: ...

    def forward_backward(self, x: torch.Tensor, weight: float) -> Terms: ...

    def update(self) -> torch.Tensor: ...
