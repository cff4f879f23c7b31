"""Whole-step CUDA graphs: an optimizer step captured once, then replayed for every step like it.

On a GPU a small autoencoder's step is launch-bound: Python issues a few hundred small kernels
per step and the device waits for them. `GraphedTrainStep` captures the whole step with
torch.cuda.graphs' "whole network capture" and replays it: one launch per step. It has the
interface of the eager `TrainStep` (`begin`, `forward_backward`, `update`), so the engine's loop is
the same for both; `build_step` picks one, once, from `trainer.cuda_graphs`:

- `auto` (the default): graphs whenever the run allows it; otherwise eager steps and one logged
  line naming why (on the CPU quietly: graphs are a CUDA feature).
- `true`: the same, but a run that cannot be captured is a one-line error before anything is
  written; a capture that fails, does not reproduce the eager steps or has to be left later is an
  error too.
- `false`: eager steps.

What one graph holds: every micro-batch of the step (forward pass under autocast, the objective's
named terms, the scaled backward pass), unscaling, the gradient norm, clipping, the optimizer step
(fused Adam/AdamW/SGD or foreach RMSprop, captured `capturable`) and the GradScaler's update. How
the parts that change between steps reach it:
- Inputs: `forward_backward` copies each micro-batch into a static buffer (the gather's buffer is
  reused by the next gather; an image folder's batch is a fresh tensor); `update()` replays.
- Loss terms and the gradient norm land in static tensors the engine's meter copies after the
  replay: the terms a step returns are final once `update()` has returned.
- Learning rate: the captured optimizer reads it from a device tensor, refilled from the float the
  schedule sets (one small fill when it changed), so every learning-rate schedule works unchanged
  and checkpoints keep plain floats.
- Every other optimizer setting (betas, momentum, weight decay, eps...) is a host value the
  captured kernels keep from the capture: torch's fused and capturable kernels take them as Python
  numbers (a tensor beta1 or momentum is not captured by fused Adam or SGD, in any torch the project
  allows). They are recorded at the capture and compared before every replay; one that changed
  ends the graph for the rest of the run, with one logged line naming it (an error when strict).
  `scheduler=onecycle` with `cycle_momentum=true` rewrites the momentum every step, so it trains
  eagerly from the start (`graph_blockers`).
- Random numbers (denoising noise, dropout, the VAE's draws): the default CUDA generator, which
  torch registers with every capture; each replay draws fresh numbers, and the same ones an eager
  step would draw from that generator state (torch's graph-safe Philox offsets).
- The VAE's KL weight is a device tensor filled in place before each step (`begin`).

Which steps are graphed: the regular window (`trainer.accumulate_grad_batches` micro-batches of
`data.batch_size`). The window at an epoch's end that is shorter runs eagerly, through the same
`TrainStep` on the same tensors, where it falls in every run.

Capture, once per run: three eager steps warm up on the capture's side stream (lazy optimizer
state, cuDNN autotuning, cuBLAS workspaces are set up there, not under capture), then everything
they changed (weights, buffers, optimizer and GradScaler state, RNG states) is put back in place.
The warm-up therefore leaves no trace in the numbers, and a resumed run replays the graph at the
same steps as the run it continues. The optimizer's `capturable` flags, which torch requires of a
step it captures, are set for the warm-up and the capture and put back right after it: eager steps
and checkpoints of a graphed run are an eager run's (`keep_own_capturable` loads the checkpoints of
graphed runs written before that, which hold capturable=True, like any other).

Self-check, once per run: the first two warm-up steps, the second at half the learning rate, are
compared with two consecutive replays of the graph from the same state, the second at the same
changed rate: loss terms, gradient norm, the update of every weight, and where the random-number
generator is left (a replay must advance it as the eager step does, so two replays on the same
input draw different noise). That catches a frozen host value, a stale learning rate, random
numbers drawn once, inputs that do not reach the graph. A mismatch means a capture bug nobody could
see, and the run continues eagerly with one logged line (auto) or stops with an error (true). Graph
and eager steps agree to float rounding (a device tensor learning rate is float32), not bit for
bit. The check costs the two replays and host reads, on top of the warm-up that any capture needs.

A capture that fails (a host sync in the step, an unsupported operation): the stream in force
before it is restored (torch's `graph.__exit__` raises before it restores the stream), the log
line names the error that broke the capture (not torch's "operation failed due to a previous error
during capture" over it), the failed graph and its private memory pool are given back, and one
random number is drawn on the device: torch releases whose CUDA generator keeps a capture flag
leave it set after a failed capture, and every later draw would fail, so the run stops there with
one line naming `trainer.cuda_graphs=false`. Memory: the graph's private pool holds a whole step's
activations and gradients for the rest of the run, while the steps that run eagerly beside it (the
doctor's samples, an epoch's short last step) need as much again; when the device has less free
after the capture than the pool holds, the graph is given back and the run trains eagerly, logged.

What keeps a run eager (see `graph_blockers`): a device other than CUDA; an optimizer not checked
under capture; fp16 with an unfused optimizer (the GradScaler reads its inf check on the host);
`trainer.on_nonfinite=skip` (reads each gradient norm on the host); a torch.compile mode that
captures CUDA graphs of its own; a schedule that changes a host setting every step (onecycle's
cycled momentum); no regular window in an epoch.

The training doctor's per-layer sampling (`diagnostics.*`) does not: the one step in
`diagnostics.every_n_steps` that its `GradientProbe` measures runs eagerly (its hooks and reads
are Python), the others replay the graph; the probe is told of every replayed step, so it samples
the same steps as in an eager run. The warm-up and capture run without it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from aetrain.config import Config
from aetrain.errors import ConfigError
from aetrain.models import Terms
from aetrain.registry import Registry
from aetrain.train.engine import NONFINITE
from aetrain.train.memory import GB
from aetrain.train.optim import OPTIMIZERS
from aetrain.train.step import GradientProbe, Step, TrainStep

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps before the capture, as torch.cuda.make_graphed_callables takes
CHECK_RATE = 0.5  # the self-check's second step runs at this multiple of the learning rate
READ_FROM_DEVICE = ("params", "lr")  # the param-group entries a captured step does not keep as host values


@dataclass(frozen=True)
class GraphsPolicy:
    wanted: bool  # try to capture the training step
    strict: bool  # a run that cannot be captured is an error (else: eager, logged)


CUDA_GRAPHS: Registry[GraphsPolicy] = Registry("trainer.cuda_graphs")
CUDA_GRAPHS.add("auto", GraphsPolicy(wanted=True, strict=False))
CUDA_GRAPHS.add("true", GraphsPolicy(wanted=True, strict=True))
CUDA_GRAPHS.add("false", GraphsPolicy(wanted=False, strict=False))


def graphs_policy(value: object) -> GraphsPolicy:
    """trainer.cuda_graphs as typed: Hydra hands `true` over as the string 'True'."""
    return CUDA_GRAPHS.get(str(value).lower())


@dataclass(frozen=True)
class CompileMode:
    own_cuda_graphs: bool  # inductor captures CUDA graphs itself: no whole-step capture around it


# trainer.compile_mode: torch.compile's modes (torch._inductor.list_mode_options())
COMPILE_MODES: Registry[CompileMode] = Registry("trainer.compile_mode")
COMPILE_MODES.add("default", CompileMode(own_cuda_graphs=False))
COMPILE_MODES.add("max-autotune-no-cudagraphs", CompileMode(own_cuda_graphs=False))
COMPILE_MODES.add("reduce-overhead", CompileMode(own_cuda_graphs=True))
COMPILE_MODES.add("max-autotune", CompileMode(own_cuda_graphs=True))


def graph_blockers(cfg: Config, device: torch.device, step: TrainStep, batch_sizes: list[int],
                   eager_only: str | None = None) -> list[str]:
    """Why this run's training step cannot be captured as a CUDA graph; empty when it can. `eager_only`: a
    reason from outside the step (data-parallel training: `aetrain.train.distributed.World.eager_only`)."""
    t, name = cfg.trainer, cfg.optimizer.name
    full = sum(1 for n in batch_sizes if n == max(batch_sizes))
    checks = [
        (device.type == "cuda", f"it trains on {device.type} (CUDA graphs need trainer.device=cuda)"),
        (OPTIMIZERS.get(name).capturable, f"optimizer={name} has not been checked under capture"),
        (t.precision != "16-mixed" or OPTIMIZERS.get(name).fused,
         f"trainer.precision=16-mixed with optimizer={name}, which has no fused kernel: its GradScaler step reads "
         "the inf check on the host (use bf16-mixed, or adam, adamw or sgd)"),
        (not NONFINITE.get(t.on_nonfinite).reads_host,
         f"trainer.on_nonfinite={t.on_nonfinite} reads every step's gradient norm on the host"),
        (not (t.compile and COMPILE_MODES.get(t.compile_mode).own_cuda_graphs),
         f"trainer.compile_mode={t.compile_mode} captures CUDA graphs of its own"),
        (not getattr(cfg.scheduler, "cycle_momentum", False),  # see the module docstring: host settings
         f"scheduler={cfg.scheduler.name} with scheduler.cycle_momentum=true sets the optimizer's momentum (beta1) "
         "every step, which a captured step would keep at its value at capture (scheduler.cycle_momentum=false "
         "keeps the step graphed)"),
        (full >= t.accumulate_grad_batches, f"no optimizer step of an epoch has {t.accumulate_grad_batches} full "
                                            f"batches of data.batch_size={max(batch_sizes)}"),
        (eager_only is None, eager_only or ""),
    ]
    return [why for ok, why in checks if not ok]


def build_step(cfg: Config, step: TrainStep, device: torch.device, batch_sizes: list[int], *,
               eager_only: str | None = None) -> Step:
    """`step` itself (eager), or `step` captured in a CUDA graph when trainer.cuda_graphs asks and the run allows.

    `batch_sizes`: the micro-batches of an epoch (the largest is data.batch_size). `eager_only`: see
    `graph_blockers`.
    """
    for optimizer in getattr(step.optimizer, "optimizers", None) or [step.optimizer]:  # a fused group: each member's
        keep_own_capturable(optimizer)  # whichever step this run takes, and on whichever device it resumes
    policy = graphs_policy(cfg.trainer.cuda_graphs)
    if not policy.wanted:
        return step
    blockers = graph_blockers(cfg, device, step, batch_sizes, eager_only)
    if blockers:
        if policy.strict:
            raise ConfigError(f"trainer.cuda_graphs=true: this run's training step cannot be captured: "
                              f"{'; '.join(blockers)}. Use trainer.cuda_graphs=auto or false")
        (log.info if device.type == "cuda" else log.debug)("CUDA graphs off: %s", "; ".join(blockers))
        return step
    return GraphedTrainStep(step, CudaGraphs(device), batch_size=max(batch_sizes),
                            accumulate=cfg.trainer.accumulate_grad_batches, strict=policy.strict)


def keep_own_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Load checkpoints with the optimizer's own `capturable` flag (False: aetrain builds no capturable optimizer).

    Graphed runs of aetrain before the flags were put back after the capture saved capturable=True in every
    checkpoint; loaded as saved, it makes torch keep RMSprop's step counts on the device and refuse to step
    on the CPU ("If capturable=True, params and state_steps must be on supported devices"). A capture sets
    the flag again for itself (`CudaGraphs.prepare`).
    """
    own = optimizer.defaults.get("capturable")
    if own is None:  # SGD: no such flag
        return

    def as_built(opt: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
        groups = [{**group, "capturable": own} if "capturable" in group else group for group in state["param_groups"]]
        return {**state, "param_groups": groups}  # a new dict: the caller's checkpoint stays as it was read

    optimizer.register_load_state_dict_pre_hook(as_built)


def host_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Each param group's entries that a captured step keeps as they were at the capture: all but the parameters
    and the learning rate (which it reads from a device tensor)."""
    return [{k: v for k, v in group.items() if k not in READ_FROM_DEVICE} for group in optimizer.param_groups]


def changed_setting(then: list[dict[str, Any]], now: list[dict[str, Any]]) -> str:
    """The first difference between two `host_settings`, in words."""
    if len(then) != len(now):
        return f"the optimizer has {len(now)} param groups, {len(then)} when the step was captured"
    for i, (a, b) in enumerate(zip(then, now)):
        for key in [*a, *(k for k in b if k not in a)]:
            if key not in a or key not in b or a[key] != b[key]:
                group = f" (param group {i})" if len(now) > 1 else ""
                return (f"the optimizer's {key}{group} changed from {a.get(key, '(unset)')!r} to "
                        f"{b.get(key, '(unset)')!r} after the capture")
    return "the optimizer's settings changed after the capture"


def root_cause(error: BaseException) -> BaseException:
    """The error a chain started with: a capture broken in its body ends with torch raising "operation failed due
    to a previous error during capture" from `capture_end`, over the error that broke it."""
    seen = {id(error)}
    while (inner := error.__cause__ or error.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        error = inner
    return error


def describe(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


class Replayable(Protocol):
    def replay(self) -> None: ...


class GraphBackend(Protocol):
    """Where graphs come from: `CudaGraphs`; the tests' CPU stand-in re-runs the captured Python."""

    device: torch.device

    def side_stream(self) -> contextlib.AbstractContextManager[None]: ...

    def capture(self, body: Callable[[], None]) -> Replayable:
        """A graph of `body`. When that fails, the error is raised with the stream as it was before and the failed
        graph and its memory given back."""
        ...

    def release(self, graph: Replayable) -> None:
        """Give back a captured graph that will not be replayed again, and its memory."""
        ...

    def headroom(self) -> tuple[int, int] | None:
        """(bytes the last captured graph's private pool holds, bytes free on the device beside it); None: not
        measured."""
        ...

    def check_generator(self) -> None:
        """After a failed capture: the device's default generator draws a random number (raises when it cannot)."""
        ...

    def lr_tensor(self, value: float) -> torch.Tensor: ...

    def prepare(self, optimizer: torch.optim.Optimizer) -> None: ...

    def rng_state(self) -> Any: ...

    def set_rng_state(self, state: Any) -> None: ...


_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}  # one per device for the process (see CudaGraphs)


class CudaGraphs:
    """torch.cuda graphs on one device.

    Warm-up and capture share one side stream: cuBLAS (and hipBLASLt) keep a workspace per stream,
    created at first use, which must not happen under capture. The stream is the device's for the
    whole process, as torch.cuda.graph keeps its own: runs one after another in a process (a sweep)
    would otherwise leave a workspace behind each. Each graph gets its own private memory pool, so
    nothing else ever reuses the addresses a replay writes. capture_error_mode is thread_local: an
    image folder's pin-memory thread may call CUDA while the main thread captures.
    """

    def __init__(self, device: torch.device) -> None:
        index = device.index if device.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        if index not in _SIDE_STREAMS:
            _SIDE_STREAMS[index] = torch.cuda.Stream(self.device)
        self.stream = _SIDE_STREAMS[index]
        self.pool_bytes = 0  # what the last capture's private pool holds

    @contextlib.contextmanager
    def side_stream(self) -> Iterator[None]:
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)  # the staged inputs and the step before are done first
        try:
            with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
                yield
        finally:
            current.wait_stream(self.stream)  # and what ran here is done before the next step

    def capture(self, body: Callable[[], None]) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        pool = torch.cuda.graph_pool_handle()  # named here: a capture that fails must give it back by name
        current = torch.cuda.current_stream(self.device)
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()  # as torch.cuda.graph does on entry: what is reserved from here on is the pool
        reserved = torch.cuda.memory_reserved(self.device)
        try:
            try:
                with torch.cuda.device(self.device), torch.cuda.graph(graph, pool=pool, stream=self.stream,
                                                                       capture_error_mode="thread_local"):
                    body()
            finally:
                # torch.cuda.graph's __exit__ raises from capture_end before it restores the stream: without this
                # the rest of the run would queue its kernels on the side stream
                torch.cuda.set_stream(current)
        except BaseException:
            self._release_failed(graph, pool)
            raise
        self.pool_bytes = torch.cuda.memory_reserved(self.device) - reserved
        return graph

    def _release_failed(self, graph: torch.cuda.CUDAGraph, pool: Any) -> None:
        """A failed capture's graph and private pool. torch's capture_end raises as soon as the capture was
        invalidated, before it takes the pool off the allocator's captures and before the graph owns it; the
        pool is then ended and released here (once: only when this call ended it). Private torch functions,
        named differently across the releases the project allows (endAllocateCurrentStreamToPool before 2.8)."""
        with contextlib.suppress(Exception):
            graph.reset()
        end = getattr(torch._C, "_cuda_endAllocateToPool", None) or getattr(
            torch._C, "_cuda_endAllocateCurrentStreamToPool", None)
        if end is None:
            return
        try:
            end(self.device.index, pool)
        except Exception:  # noqa: BLE001 - capture_end got as far as ending it: the graph gives it back itself
            return
        with contextlib.suppress(Exception):
            torch._C._cuda_releasePool(self.device.index, pool)

    def release(self, graph: Replayable) -> None:
        if isinstance(graph, torch.cuda.CUDAGraph):
            graph.reset()  # gives its pool back to the allocator (freed at the next empty_cache or when needed)

    def headroom(self) -> tuple[int, int]:
        torch.cuda.empty_cache()  # what the normal pools cache but do not use counts as free
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.pool_bytes, free

    def check_generator(self) -> None:
        """torch before 2.13 keeps a capture flag on the CUDA generator that capture_end clears only after a capture
        that succeeded: after a failed one every draw outside a capture fails ("Offset increment outside graph
        capture encountered unexpectedly"). A capture of one draw, which sets the flag and clears it, puts it right
        (its numbers are never drawn: it is not replayed). Raises when the device still cannot draw."""
        try:
            self._draw()
        except RuntimeError:
            self.release(self.capture(lambda: torch.empty(1, device=self.device).uniform_()))
            self._draw()

    def _draw(self) -> None:
        torch.empty(1, device=self.device).uniform_()
        torch.cuda.synchronize(self.device)

    def lr_tensor(self, value: float) -> torch.Tensor:
        return torch.full((), value, dtype=torch.float32, device=self.device)  # fused kernels read a float32 rate

    def prepare(self, optimizer: torch.optim.Optimizer) -> None:
        """Capturable optimizers keep their step count on the device and read nothing on the host; torch
        refuses to capture a step whose param groups do not say so (`GraphedTrainStep` puts the flags back after
        the capture). A checkpoint of an eager run may hold RMSprop's step counts on the CPU: moved over (before
        any graph refers to them; they stay there, where the graph writes them)."""
        for group in optimizer.param_groups:
            if "capturable" in group:  # Adam, AdamW, RMSprop; SGD has no host reads to avoid
                group["capturable"] = True
        for param, state in optimizer.state.items():
            count = state.get("step")
            if isinstance(count, torch.Tensor) and count.device != param.device:
                state["step"] = count.to(param.device, torch.float32)

    def rng_state(self) -> Any:
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.device)

    def set_rng_state(self, state: Any) -> None:
        torch.set_rng_state(state[0])
        torch.cuda.set_rng_state(state[1], self.device)


@contextlib.contextmanager
def rates_from(optimizer: torch.optim.Optimizer, rates: list[torch.Tensor]) -> Iterator[None]:
    """Inside: the optimizer reads its learning rates from `rates` (device tensors, what a captured step
    keeps reading). After: the floats the schedules set, as before."""
    floats = [group["lr"] for group in optimizer.param_groups]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    try:
        yield
    finally:
        for group, value in zip(optimizer.param_groups, floats):
            group["lr"] = value


@contextlib.contextmanager
def rates_scaled(optimizer: torch.optim.Optimizer, factor: float) -> Iterator[None]:
    """Inside: every learning rate times `factor` (the self-check's second step); after: as before."""
    floats = [group["lr"] for group in optimizer.param_groups]
    for group, value in zip(optimizer.param_groups, floats):
        group["lr"] = value * factor
    try:
        yield
    finally:
        for group, value in zip(optimizer.param_groups, floats):
            group["lr"] = value


def same_state(a: Any, b: Any) -> bool:
    """Two RNG states (a tensor, or a tuple of them) are equal."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))


class Snapshot:
    """Everything a training step changes, taken to be put back in place (the same tensors: a graph that
    refers to them stays valid): weights and buffers, optimizer state, the GradScaler, the RNG states.

    Optimizer state that did not exist yet (a fresh run) is put back as zeros: for Adam, AdamW,
    RMSprop (moments, step count 0) and SGD (a zero momentum buffer gives momentum * 0 + grad, its
    first-step rule) that is the state their first step would create (tested on the CPU).
    """

    def __init__(self, step: TrainStep, backend: GraphBackend) -> None:
        self.step, self.backend = step, backend
        self.tensors = [*step.net.parameters(), *step.net.buffers()]
        self.saved = [t.detach().clone() for t in self.tensors]
        self.optimizer = {param: {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                          for param, s in step.optimizer.state.items()}
        scaler = step.precision.scaler
        self.scaler = scaler.state_dict() if scaler.is_enabled() else None  # reads the scale (a host sync)
        self.rng = backend.rng_state()

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, saved in zip(self.tensors, self.saved):
            tensor.copy_(saved)
        for param, state in self.step.optimizer.state.items():
            saved = self.optimizer.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    value.copy_(saved[key]) if key in saved else value.zero_()
                elif key in saved:
                    state[key] = saved[key]
        if self.scaler is not None:
            self.step.precision.scaler.load_state_dict(self.scaler)  # fills its tensors in place
        self.backend.set_rng_state(self.rng)


@dataclass
class Outcome:
    """What one step produced: each micro-batch's terms, the gradient norm, the change of every weight, and the
    RNG states it left."""

    rows: list[torch.Tensor]
    grad_norm: torch.Tensor
    update: torch.Tensor  # all weights' changes, flattened
    rng: Any  # the backend's RNG states after the step

    def mismatch(self, reference: Outcome) -> str | None:
        """How this differs from `reference` beyond float rounding (host syncs), or None."""
        if not same_state(self.rng, reference.rng):
            # each replay must advance the generator as an eager step does: else the next draws the same numbers
            return "the random-number generator is not where the eager step leaves it (random numbers drawn once)"
        terms, ref_terms = torch.stack(self.rows), torch.stack(reference.rows)
        if not torch.allclose(terms, ref_terms, rtol=1e-3, atol=1e-6, equal_nan=True):
            return f"loss terms {terms.tolist()} against {ref_terms.tolist()}"
        if not torch.allclose(self.grad_norm, reference.grad_norm, rtol=1e-3, atol=1e-6, equal_nan=True):
            return f"gradient norm {self.grad_norm.item():.6g} against {reference.grad_norm.item():.6g}"
        # Adam's first step moves a weight by about lr * sign(grad): a gradient within rounding of 0 may
        # flip it, so compare the update as a whole; a wrong capture is off by far more than 1%
        off, size = (self.update - reference.update).norm().item(), reference.update.norm().item()
        if not off <= 1e-2 * size + 1e-12:
            return f"the weights' update differs by {off:.3g} (its size {size:.3g})"
        return None


class GraphedTrainStep:
    """A `TrainStep` whose regular optimizer steps replay one captured graph (see the module docstring).

    `eager` is the step as built for eager training; it runs the short windows, the warm-up, and the
    captured body itself, so graph and eager steps compute the same thing by construction.
    """

    def __init__(self, eager: TrainStep, backend: GraphBackend, *, batch_size: int, accumulate: int,
                 strict: bool) -> None:
        self.eager = eager
        self.backend = backend
        self.regular = (batch_size,) * accumulate  # micro-batch sizes of the window that is captured
        self.strict = strict  # a failed capture or self-check is an error (trainer.cuda_graphs=true)
        self.names = eager.objective.names
        self.slots: list[torch.Tensor] = []  # static inputs, one per micro-batch of a window
        self.rows: list[torch.Tensor] = []  # static loss terms (names,), one per micro-batch
        self.terms: list[Terms] = []  # `rows` by name: what forward_backward returns
        self.grad_norm = torch.zeros((), device=backend.device)  # static: the captured step's norm
        self.window: list[tuple[int, float]] = []  # (samples, weight) of the micro-batches staged so far
        self.graph: Replayable | None = None
        self.captured: tuple[tuple[int, float], ...] = ()  # the window the graph replays
        self.settings: list[dict[str, Any]] = []  # the optimizer's host settings the graph keeps (host_settings)
        self.rates: list[torch.Tensor] = []  # learning rates on the device, read by the graph
        self.loaded: list[float] = []  # the floats `rates` hold
        self.off: str | None = None  # why steps run eagerly after all (a failed capture or self-check)
        self.replays = 0  # optimizer steps taken by replaying the graph
        self.capture_s = 0.0  # wall time of the warm-up and the capture, once per run
        self.check_s = 0.0  # wall time of the self-check (two replays against the warm-up's steps)

    def __getattr__(self, name: str) -> Any:
        """The eager step's parts (optimizer, objective, params, precision, net...) read through."""
        if name == "eager":  # not yet set (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.eager, name)

    @property
    def probe(self) -> GradientProbe:
        return self.eager.probe

    @probe.setter
    def probe(self, probe: GradientProbe) -> None:
        """Per-layer diagnostics: the steps the probe samples run eagerly, the others replay the graph."""
        self.eager.probe = probe

    def begin(self, epochs: float, micro_batches: int = 1) -> None:
        self.eager.begin(epochs, micro_batches)
        self.window = []

    def forward_backward(self, x: torch.Tensor, weight: float) -> Terms:
        """Stage one micro-batch; its terms are computed by `update()`."""
        i = len(self.window)
        if i == len(self.slots):
            self._add_slot(x)
        self.slots[i][: len(x)].copy_(x)  # x's buffer is refilled by the next gather; the graph reads its own
        self.window.append((len(x), weight))
        return self.terms[i]

    def update(self) -> torch.Tensor:
        """The staged window as one replay (or eagerly); returns the gradient norm before clipping."""
        window, self.window = tuple(self.window), []
        probe = self.eager.probe
        if probe.sampling:  # the training doctor measures this step: it runs eagerly, where the probe sees it
            return self._eager(window)
        if self.graph is None and self.off is None and tuple(n for n, _ in window) == self.regular:
            self.graph = self._capture(window)
        if self.graph is not None and window == self.captured and self._settings_kept():
            self._load_rates()
            self.graph.replay()
            self.replays += 1
            probe.after_update(self.eager)  # counts the step (not sampled: it reads nothing)
            return self.grad_norm
        return self._eager(window)

    # -- the step's computation -------------------------------------------------------------------

    def _eager(self, window: tuple[tuple[int, float], ...]) -> torch.Tensor:
        """The window through the eager step on the staged inputs, its terms into the static rows."""
        for i, (n, weight) in enumerate(window):
            terms = self.eager.forward_backward(self.slots[i][:n], weight)
            torch.stack([terms[name].detach() for name in self.names], out=self.rows[i])
        return self.eager.update()

    def _body(self, window: tuple[tuple[int, float], ...]) -> None:
        """What the graph holds: the eager window, the optimizer reading its rates from device tensors; no
        probe (`update` tells it of each replay)."""
        with rates_from(self.eager.optimizer, self.rates), self._unprobed():
            self.grad_norm.copy_(self._eager(window))

    @contextlib.contextmanager
    def _unprobed(self) -> Iterator[None]:
        """The eager step without the diagnostics probe: steps that are not the run's own."""
        probe, self.eager.probe = self.eager.probe, GradientProbe()
        try:
            yield
        finally:
            self.eager.probe = probe

    def _add_slot(self, x: torch.Tensor) -> None:
        # the layout of x (channels_last images stay channels_last), room for a full batch
        stride = (math.prod(x.shape[1:]), *x.stride()[1:])
        self.slots.append(torch.empty_strided((self.regular[0], *x.shape[1:]), stride, dtype=x.dtype,
                                              device=x.device))
        row = torch.zeros(len(self.names), device=x.device)
        self.rows.append(row)
        self.terms.append({name: row[j] for j, name in enumerate(self.names)})

    def _load_rates(self) -> None:
        for i, group in enumerate(self.eager.optimizer.param_groups):
            if group["lr"] != self.loaded[i]:  # per-step schedules: one small fill per step; others: none
                self.rates[i].fill_(group["lr"])
                self.loaded[i] = group["lr"]

    def _settings_kept(self) -> bool:
        """The optimizer's host settings are still those the graph keeps (a dict compare, before every replay).
        Else the graph is given back and the run trains eagerly from here, logged (an error when strict)."""
        now = host_settings(self.eager.optimizer)
        if now == self.settings:
            return True
        assert self.graph is not None
        self.backend.release(self.graph)
        self.graph = None
        self._give_up(f"{changed_setting(self.settings, now)}, and a captured step keeps the value it had then")
        return False

    # -- capture ----------------------------------------------------------------------------------

    def _capture(self, window: tuple[tuple[int, float], ...]) -> Replayable | None:
        """Warm up, capture and self-check the graph of `window`, leaving the state as it was; None when
        that failed (logged, or an error when strict)."""
        tic = time.perf_counter()
        step, backend, optimizer = self.eager, self.backend, self.eager.optimizer
        flags = [group.get("capturable") for group in optimizer.param_groups]
        backend.prepare(optimizer)
        self.rates = [backend.lr_tensor(group["lr"]) for group in optimizer.param_groups]
        self.loaded = [group["lr"] for group in optimizer.param_groups]
        before = Snapshot(step, backend)
        graph: Replayable | None = None
        try:
            try:
                with backend.side_stream(), self._unprobed():  # the warm-up steps are not steps of the run
                    references = self._warm_up(window)
                before.restore()
                graph = backend.capture(lambda: self._body(window))
            finally:  # torch reads them only while capturing; eager steps and checkpoints keep the run's own
                for group, flag in zip(optimizer.param_groups, flags):
                    if flag is not None:
                        group["capturable"] = flag
            captured = time.perf_counter()
            problem = self._too_big() or self._self_check(graph, references)
        except Exception as e:  # noqa: BLE001 - whatever broke the capture, the run goes on eagerly
            reason = f"capturing the training step failed ({describe(root_cause(e))})"
            if graph is not None:  # captured, then broken in a replay or the check
                backend.release(graph)
            self._clean_up()
            self._check_generator(reason)
            before.restore()
            self._load_rates()
            return self._give_up(reason)
        before.restore()
        self._load_rates()  # the schedule's rates again (the check ran the second replay at another)
        self.capture_s, self.check_s = captured - tic, time.perf_counter() - captured
        if problem is not None:
            backend.release(graph)
            return self._give_up(problem)
        self.captured = window
        self.settings = host_settings(optimizer)
        log.info("CUDA graphs on: each optimizer step of %d micro-batch(es) of %d replays one captured graph; "
                 "shorter steps run eagerly (warm-up and capture %.2f s, self-check %.2f s)", len(window), window[0][0],
                 self.capture_s, self.check_s)
        return graph

    def _warm_up(self, window: tuple[tuple[int, float], ...]) -> list[Outcome]:
        """WARMUP_STEPS eager steps from the state the graph starts from; the outcomes of the first two, the second
        at CHECK_RATE times the learning rate: what two replays must reproduce."""
        references = []
        for i in range(WARMUP_STEPS):
            start = self._weights()
            with rates_scaled(self.eager.optimizer, CHECK_RATE if i == 1 else 1.0):
                grad_norm = self._eager(window)
            if i < 2:
                references.append(self._outcome(len(window), grad_norm, start))
        return references

    def _self_check(self, graph: Replayable, references: list[Outcome]) -> str | None:
        """Two consecutive replays from the state the warm-up started from, against its first two eager steps (the
        second at CHECK_RATE times the learning rate, replayed at the same); what differs, or None."""
        for i, reference in enumerate(references):
            start = self._weights()
            with rates_scaled(self.eager.optimizer, CHECK_RATE if i == 1 else 1.0):
                self._load_rates()
                graph.replay()
            mismatch = self._outcome(len(reference.rows), self.grad_norm, start).mismatch(reference)
            if mismatch is not None:
                which = "" if i == 0 else f" at a second replay (learning rate times {CHECK_RATE:g})"
                return f"the captured step does not reproduce the eager step{which}: {mismatch}"
        return None

    def _too_big(self) -> str | None:
        """Why the graph's private pool leaves too little for the steps that run eagerly beside it, or None."""
        room = self.backend.headroom()
        if room is None or room[1] >= room[0]:
            return None
        pool, free = room
        return (f"the captured step's private memory pool holds {pool / GB:.2f} GB and leaves {free / GB:.2f} GB free "
                f"on {self.backend.device}, less than the steps that run eagerly beside it (the doctor's samples, an "
                "epoch's short last step) need")

    def _weights(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.eager.params]

    def _outcome(self, n: int, grad_norm: torch.Tensor, start: list[torch.Tensor]) -> Outcome:
        update = torch.cat([(p.detach() - s).flatten() for p, s in zip(self.eager.params, start)])
        return Outcome([r.clone() for r in self.rows[:n]], grad_norm.detach().clone(), update,
                       self.backend.rng_state())

    def _clean_up(self) -> None:
        """After an exception inside a step: nothing of it may leak into the next (eager) one."""
        optimizer = self.eager.optimizer
        for name in ("grad_scale", "found_inf"):  # set by GradScaler.step for the fused kernels
            optimizer.__dict__.pop(name, None)
        states = getattr(self.eager.precision.scaler, "_per_optimizer_states", None)
        if states is not None:  # the scaler's per-step stages (unscaled, stepped) start afresh
            states.clear()
        optimizer.zero_grad(set_to_none=True)

    def _check_generator(self, reason: str) -> None:
        """After a failed capture, one random number on the device. torch releases whose CUDA generator keeps a
        capture flag leave it set when a capture fails (capture_end raises before it clears it), and every later
        draw (noise, dropout, the VAE's) would then fail with "Offset increment outside graph capture"; the backend
        puts that right where it can. Where it cannot, the run stops here, in one line, rather than at some later
        step. The draw is undone with the rest of the warm-up."""
        try:
            self.backend.check_generator()
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"trainer.cuda_graphs: {reason}, and after it {self.backend.device} cannot draw random "
                              f"numbers any more ({describe(e)}), so this run cannot go on. Run with "
                              "trainer.cuda_graphs=false") from None

    def _give_up(self, reason: str) -> None:
        if self.strict:
            raise ConfigError(f"trainer.cuda_graphs=true: {reason}. Use trainer.cuda_graphs=auto to train eagerly "
                              "when this happens, or false")
        log.warning("CUDA graphs off: %s; training eagerly", reason)
        self.off = reason
        return None
