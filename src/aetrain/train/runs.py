"""What a run does around its engine that a single run (`aetrain.commands.train.run`) and a fused sweep's member
(`aetrain.fused`) share: seeding, a fresh run's trainer.init_from, the history a resumed run continues, the
warning about a code as wide as its input, and Python's cycle collector kept off the long-lived objects while
training."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from aetrain.config import ModelConfig
from aetrain.errors import CheckpointError
from aetrain.rundir import METRICS, read_metrics
from aetrain.train import checkpoint
from aetrain.train.engine import Parts

log = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA too
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for repeatable sums
    if deterministic or torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(deterministic)  # imports torch._inductor (~3 s): only when it changes


def warn_if_code_is_as_wide_as_the_input(model: ModelConfig, shape: tuple[int, ...]) -> None:
    """An autoencoder whose code is as wide as its input can learn to copy it: a low reconstruction loss then
    says nothing of what the code captured. Not said of families that constrain the code (input noise, a
    sparsity penalty, a KL term), where a wide, overcomplete code is a design choice."""
    size = math.prod(shape)
    if model.latent_dim >= size and model.code_constraint() is None:
        log.warning("model.latent_dim=%d is %s the input (%d values a sample): the model can learn to copy its input, "
                    "so a low reconstruction loss says little; choose a narrower code", model.latent_dim,
                    "as wide as" if model.latent_dim == size else "wider than", size)


def earlier_epochs(previous: Path | None, ckpt: dict) -> list[dict]:
    """The metrics rows of the epochs before the checkpoint, from the run it belongs to."""
    if previous is None:
        return []
    try:
        rows = read_metrics(previous / METRICS)
    except ValueError as e:
        raise CheckpointError(f"trainer.resume={previous}: {e}; cannot continue its history") from None
    return [r for r in rows if isinstance(r.get("epoch"), int) and 0 < r["epoch"] <= ckpt["state"]["epoch"]]


@contextlib.contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """Keep Python's cycle collector off what exists before training (torch, Hydra, the model...).

    Those few hundred thousand objects live as long as the run; a full collection scanning
    them took 100-200 ms mid-epoch here, triggered by whatever allocates next (matplotlib's
    first figure). Frozen, collections see only what training creates. Thawed at the end, so
    runs in one process (a sweep) do not pile up each other's cyclic garbage. No collection
    first: it would delay the first step by a full scan, and what garbage set-up left behind
    is freed after the thaw.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def start_from_weights(parts: Parts, init_from: str) -> None:
    """A fresh run's `trainer.init_from`: the weights of another run's checkpoint into `parts.model`; the optimizer,
    schedule and counters were built fresh and stay so."""
    source = checkpoint.init_weights(parts.model, parts.data.spec, init_from)
    st = source.get("state") if isinstance(source.get("state"), dict) else {}
    log.info("starting from the weights of %s (%s); optimizer, schedule and counters start fresh",
             source["path"], f"after epoch {st['epoch']} of its run" if isinstance(st.get("epoch"), int)
             else "its run's epoch unknown")
