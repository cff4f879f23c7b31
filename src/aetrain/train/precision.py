"""Mixed precision and gradient clipping as objects built once.

`Precision("16-mixed", device)` autocasts to fp16 and scales the loss with a GradScaler;
"bf16-mixed" autocasts to bf16 with no scaler; "32" disables both. The same calls run on CPU
and CUDA, so the loop is identical for every setting:

    with precision.autocast:
        loss = ...
    precision.backward(loss)
    grad_norm = precision.step(optimizer, clip)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from aetrain.registry import Registry

PRECISIONS: Registry[torch.dtype | None] = Registry("trainer.precision")
PRECISIONS.add("32", None)
PRECISIONS.add("16-mixed", torch.float16)
PRECISIONS.add("bf16-mixed", torch.bfloat16)

Clip = Callable[[list[torch.Tensor]], torch.Tensor]  # parameters -> total grad norm before clipping


def _always(grad_norm: torch.Tensor) -> bool:
    return True


def _if_finite(grad_norm: torch.Tensor) -> bool:
    return bool(torch.isfinite(grad_norm))  # a host sync: the price of trainer.on_nonfinite=skip


class Precision:
    def __init__(self, name: str, device: torch.device, *, skip_nonfinite: bool = False) -> None:
        self.name = name
        self.dtype = PRECISIONS.get(name)
        self.autocast = torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None)
        # Only fp16 needs loss scaling: its gradients underflow; bf16 has fp32's exponent range.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)
        # The scaler already skips fp16 steps with inf/NaN gradients; this extends that to every precision.
        self.admit = _if_finite if skip_nonfinite else _always

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], clip: Clip) -> torch.Tensor:
        """Unscale, measure and clip the gradients, step (skipped by the scaler on inf/NaN), zero them."""
        self.scaler.unscale_(optimizer)  # clipping thresholds are in true gradient units
        grad_norm = clip(params)
        if self.admit(grad_norm):
            self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm


def clip_by_norm(max_norm: float) -> Clip:
    """Scale gradients so their total L2 norm is at most max_norm."""
    return lambda params: torch.nn.utils.clip_grad_norm_(params, max_norm)


def clip_by_value(max_value: float) -> Clip:
    def clip(params: list[torch.Tensor]) -> torch.Tensor:
        norm = measure_only(params)
        torch.nn.utils.clip_grad_value_(params, max_value)
        return norm

    return clip


def measure_only(params: list[torch.Tensor]) -> torch.Tensor:
    """The total gradient norm, gradients untouched (clip_grad_norm_ with an infinite bound would
    also rescale every gradient by 1).

    The model's gradients share one device and dtype, so this is one multi-tensor kernel and the
    norm of its results: what get_total_norm computes, without regrouping the list by device and
    dtype on every step (a third of its 0.2 ms a step for the dense AE on a CPU).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))  # (params,) -> ()


def build_clip(value: float | None, algorithm: str) -> Clip:
    """No value means no clipping; the norm is still measured and logged."""
    if value is None:
        return measure_only
    return {"norm": clip_by_norm, "value": clip_by_value}[algorithm](value)


def trainable(params: Iterable[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p for p in params if p.requires_grad]
