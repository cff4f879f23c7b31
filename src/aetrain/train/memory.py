"""Will a run fit in memory? Counted and estimated before the model is built, checked against what the machine has.

A model too large for the machine used to be built, trained for minutes and OOM-killed at its first
checkpoint (a 20 x 2,000,000 array makes a dense model of a billion parameters). The estimate is a lower
bound of a run's peak, so what it refuses cannot fit:

- the model is built on the meta device (shapes only: no memory, no random numbers) to count its
  parameters P, and run once on a meta batch of the largest micro-batch to add up its layers' outputs
  (what autograd keeps for the backward pass; views are free);
- bytes = 4 P x (weights + gradients + the optimizer's state tensors + the checkpoint's copy of the
  weights + the checkpoint's serialized weights and optimizer state) + those activations (2 bytes per
  element under mixed precision, else 4). Writing a checkpoint is the peak: `clean_state_dict` copies
  the weights and `serialize` holds the file's bytes in memory. Measured on a 51M-parameter dense model
  (2 epochs on the CPU, peak resident memory less that of the same run with a 30k-parameter model, 0.8 GB):
  39 bytes per parameter with Adam (estimate 32), 28 with SGD + momentum (estimate 24);
- it must fit what is available: on the CPU, Linux's MemAvailable (capped by a cgroup's memory limit,
  as containers and SLURM jobs set, less what this process holds); on CUDA, the weights, gradients,
  optimizer state and activations must fit the device's free memory and the checkpoint's copies the
  host's. Where the available memory cannot be read (not Linux), nothing is checked.

A CUDA run whose training step is captured as a graph (`aetrain.train.graphs`) holds more at its peak: the
graph's private memory pool keeps a whole step's activations and gradients for the rest of the run, and the
steps that run eagerly beside it (the training doctor's samples, an epoch's short last step) need as much
again from the normal pool. That is not counted here, since whether a step can be captured is known only once
it has been: the pool is measured right after the capture, and when the device has less free beside it than
it holds, the graph is given back and the run trains eagerly (one logged line) instead of failing later.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from aetrain.config import Config
from aetrain.data.spec import DataSpec
from aetrain.errors import ConfigError
from aetrain.models import Family
from aetrain.train.optim import OPTIMIZERS

FLOAT_BYTES = 4  # parameters, gradients and optimizer state are fp32 under every precision
GB = 1e9


@dataclass(frozen=True)
class Need:
    """A lower bound of a run's memory, split by where it lives on a GPU run."""

    parameters: int
    device_bytes: int  # weights, gradients, optimizer state, one batch's activations: on the training device
    host_bytes: int  # a checkpoint's copy of the weights and its serialized bytes: always in host memory
    activation_bytes: int

    @property
    def parameter_bytes(self) -> int:
        return self.device_bytes + self.host_bytes - self.activation_bytes


def estimate(cfg: Config, family: Family, spec: DataSpec, *, batch_size: int) -> Need | None:
    """The memory training `family` on data of `spec` in micro-batches of `batch_size` needs at least; None for a
    model of your own that cannot be built on the meta device or probed (`_sample_outputs`; its code may read
    values; its contract is checked when it is built for real, right after)."""
    try:
        with torch.device("meta"):  # parameters and buffers get shapes, no storage; init draws no random numbers
            model = family.build(cfg.model, spec)
        p = sum(t.numel() for t in model.parameters())
        per_sample = _sample_outputs(model, spec.shape)
    except Exception:
        if not family.own:
            raise
        return None
    states = OPTIMIZERS.get(cfg.optimizer.name).states(cfg.optimizer)
    element = 4 if cfg.trainer.precision == "32" else 2
    activations = element * per_sample * batch_size
    # each at its own moment, after the other
    activations = max(activations, doctor_check_bytes(cfg, model, spec, per_sample=per_sample))
    training = FLOAT_BYTES * p * (2 + states)  # weights, gradients, optimizer state
    checkpoint = FLOAT_BYTES * p * (1 + 1 + states)  # the weights' copy, then the file's bytes (weights + state)
    return Need(p, training + activations, checkpoint, activations)


# A model of at most this many parameters gets its layer outputs counted by a real forward pass of two samples on the
# CPU (uninitialised, zeroed weights) instead of one on the meta device: the meta device's first use imports torch's
# decompositions and sympy, about 1.2 s of every command's start-up (measured on the 2-core VM); two samples through
# a model of this size take milliseconds and at most 128 MB for its weights.
CPU_PROBE_PARAMETERS = 32 * 2**20


def _sample_outputs(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Elements of every layer's output per training sample of `model` (built on the meta device), views excluded:
    counted for two samples and halved (every layer aetrain builds is linear in the batch), on the CPU for a model
    of at most CPU_PROBE_PARAMETERS parameters, else on the meta device, where nothing is computed."""
    total = 0

    def count(module: torch.nn.Module, inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor) and output._base is None:
            total += output.numel()

    samples = 2  # batch norm in training mode refuses one sample
    small = sum(t.numel() for t in model.parameters()) <= CPU_PROBE_PARAMETERS
    device = "cpu" if small else "meta"
    if small:
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                t.zero_()
    leaves = [m for m in model.modules() if not any(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        model.train()
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # dropout and a VAE's draws leave the run's stream
            model(torch.zeros(samples, *shape, device=device))  # (2, *shape)
    finally:
        for hook in hooks:
            hook.remove()
    return total // samples


def doctor_check_bytes(cfg: Config, model: torch.nn.Module, spec: DataSpec, *, per_sample: int | None = None) -> int:
    """The training doctor's code-unit check (`ReconstructionCheck`, once an epoch, diagnostics.enabled): the
    shuffled codes of one chunk and the model's layer outputs for each, in float32. It runs between epochs, when
    a training batch's activations are gone, so it counts against them, not on top. 0 with diagnostics off.
    `per_sample`: the model's layer outputs per sample, when counted already (`_sample_outputs`)."""
    from aetrain.train.diagnostics import EFFECT_SAMPLES, unit_check_elements

    if not cfg.diagnostics.enabled:
        return 0
    if per_sample is None:
        per_sample = _sample_outputs(model, spec.shape)
    return FLOAT_BYTES * unit_check_elements(cfg.model.latent_dim, EFFECT_SAMPLES, per_sample)


def check_fits(cfg: Config, family: Family, spec: DataSpec, device: torch.device, *, batch_size: int) -> None:
    """ConfigError in one line when the run cannot fit in the memory this machine has available."""
    need = estimate(cfg, family, spec, batch_size=batch_size)
    if need is None:
        return
    host = available_host_memory()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        limits = [(need.device_bytes, free, f"is free on {device}"),
                  (need.host_bytes, host, "of host memory is available")]
    else:
        limits = [(need.device_bytes + need.host_bytes, host, "is available")]
    for needed, available, where in limits:
        if available is not None and needed > available:
            raise ConfigError(_refusal(cfg, need, spec, needed, available, where))


def _refusal(cfg: Config, need: Need, spec: DataSpec, needed: int, available: int, where: str) -> str:
    if need.activation_bytes > needed - need.activation_bytes:  # one batch's activations are most of it
        fix = "lower data.batch_size" + (" or data.image_size" if hasattr(cfg.data, "image_size") else "")
    else:
        keys = [f"model.{k}" for k in ("hidden_dims", "channels", "latent_dim") if hasattr(cfg.model, k)]
        data = (" or data.image_size" if hasattr(cfg.data, "image_size") else
                "" if spec.is_image else " or the rows narrower")
        fix = "make the model smaller (" + ", ".join(keys) + ")" + data
    inputs = "x".join(map(str, spec.shape))
    return (f"the model does not fit in memory: {cfg.model.name} on {inputs} inputs has {need.parameters:,} parameters "
            f"and training needs at least {needed / GB:.1f} GB (weights, gradients, {cfg.optimizer.name} state, a "
            f"checkpoint's copies, one batch's activations) but {available / GB:.1f} GB {where}; {fix}")


def available_host_memory() -> int | None:
    """Bytes this process could still get: MemAvailable, capped by a cgroup memory limit; None where unknown.

    An upper bound (other processes in the cgroup are not subtracted), so that a refusal is certain.
    """
    try:
        match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    except OSError:
        return None
    if match is None:
        return None
    available = int(match.group(1)) * 1024
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # cgroup v2, v1
        try:
            limit = int(Path(limit_file).read_text())  # "max" (no limit) is not a number
        except (OSError, ValueError):
            continue
        available = min(available, max(limit - _resident_bytes(), 0))
        break
    return available


def _resident_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


__all__ = ["Need", "available_host_memory", "check_fits", "estimate"]
