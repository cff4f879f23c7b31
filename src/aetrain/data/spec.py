"""What the model and the objective need to know about a dataset, without the data itself."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DataSpec:
    name: str  # dataset name, for logs
    shape: tuple[int, ...]  # one sample: (C, H, W) for images, (D,) for tabular rows
    unit_interval: bool  # True when model-unit values lie in [0, 1] (images): sigmoid output and bce fit
    shift: torch.Tensor  # data units -> model units: (x - shift) / scale; broadcastable to (B, *shape)
    scale: torch.Tensor
    low: float  # smallest and largest model-unit value in the training split (salt-and-pepper noise)
    high: float

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3
