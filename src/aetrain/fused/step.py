"""The optimizer step of a fused group: one batched forward and backward, then each member's own update.

`FusedStep` has the interface of `aetrain.train.step.TrainStep` (`begin`, `forward_backward`,
`update`; see `aetrain.train.step.Step`), so a loop drives it like a single run's step and
`aetrain.train.graphs.build_step` can capture it as one CUDA graph:

- `forward_backward(x, weight)`: `x` is (B, K, *shape), sample b of every member at x[b] (so
  len(x) is the micro-batch's sample count, as for a single run). Each member's inputs are
  corrupted by its own objective from its own random stream (`Streams`), the fused network runs
  once, and each member's terms are computed by its own objective on its slice of the outputs
  (`Objective.terms`): the same code and numbers as its job alone. The loss backpropagated is the
  sum of the members' `loss * weight`, so each member's gradient is its own, at its own scale.
  Returns the terms flattened, `loss@0, reconstruction@0, ..., loss@1, ...` (`names`).
- `update()`: for each member, exactly `TrainStep.update`: unscale, the training doctor's probe,
  measure (and clip) the member's own gradient norm, the member's optimizer step (skipped for a
  non-finite norm under `trainer.on_nonfinite=skip`), then all gradients are zeroed at once.
  The members' norms land in `norms` (K,); the return value is their sum (one number, for a
  caller that wants one, as the graph wrapper's self-check does).

Gradients: the backward pass leaves one gradient per stacked weight of the fused network (autograd
keeps it, no copy); `update` points each member parameter's `.grad` at its slice (a view), so
every member's optimizer, clipping and probe see their own gradients as in a run alone, and then
drops them all (`set_to_none`, as a run's `zero_grad` does). A member that is `frozen` (it
diverged, mid-epoch) still runs in the batched pass until the group regroups, but takes no update.

Optimizer steps: members whose param groups hold equal hyperparameters (a sweep's members that
differ only in their seed, or share a learning rate) step in one call of their optimizer class
over all their tensors (`MergedSteps`): for Adam, AdamW and SGD one fused kernel instead of one per
member. The kernels compute every element alone, so this is the members' own update bit for bit;
each optimizer's state stays its own (checkpoints hold exactly a run's optimizer state).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from aetrain.fused.net import FusedAutoencoder
from aetrain.models import Objective, Terms
from aetrain.models.objective import identity
from aetrain.train.precision import Clip, Precision
from aetrain.train.step import GradientProbe, admit_always, admit_if_finite


@dataclass
class MemberStep:
    """One member's part of the step: what `TrainStep` holds for a single run."""

    objective: Objective
    optimizer: torch.optim.Optimizer
    precision: Precision
    clip: Clip
    params: list[torch.Tensor]  # the member's trainable parameters (views into the fused network's)
    admit: Callable[[torch.Tensor], bool]
    probe: GradientProbe = field(default_factory=GradientProbe)
    frozen: bool = False  # diverged: no more updates (left out when the group regroups)
    clipping: tuple[float | None, str] | None = None  # (trainer.gradient_clip_val, ..._algorithm) that `clip` does;
    # None: another clip (then measured and clipped member by member)


class Probes:
    """The members' probes as one, for a caller that asks whether this step is sampled (a graphed step runs a
    sampled step eagerly) and tells the probes of a step taken without them (a replayed graph)."""

    def __init__(self, members: Sequence[MemberStep]) -> None:
        self.members = members

    @property
    def sampling(self) -> bool:
        return any(m.probe.sampling for m in self.members)

    def before_update(self, step: Any) -> None:
        for m in self.members:
            if not m.frozen:
                m.probe.before_update(m)

    def after_update(self, step: Any) -> None:
        for m in self.members:
            if not m.frozen:
                m.probe.after_update(m)


class Optimizers:
    """The members' optimizers seen as one (param groups and state of all), for the graph wrapper's capture."""

    def __init__(self, members: Sequence[MemberStep], stacked: Sequence[torch.Tensor]) -> None:
        self.members = members
        self.stacked = stacked  # the fused network's weights, whose gradients the members' are views of

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The members' own optimizers, which their checkpoints load into (`aetrain.train.graphs.build_step`)."""
        return [m.optimizer for m in self.members]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for m in self.members for g in m.optimizer.param_groups]

    @property
    def state(self) -> dict[Any, Any]:
        return {p: s for m in self.members for p, s in m.optimizer.state.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for m in self.members:
            m.optimizer.zero_grad(set_to_none)
        for p in self.stacked:
            p.grad = None


class Clipping:
    """Every member's gradient norm and clipping, on the stacked gradients: one norm kernel per stacked weight for
    all members instead of one per member tensor, and one multiply (or clamp) for all.

    Each member's numbers are those of its own clip (`aetrain.train.precision`: measure only, torch's
    `clip_grad_norm_`, `clip_grad_value_`), bit for bit: each of its tensors' norms is reduced over the tensor's
    memory in order, as for the tensor alone; its total norm is the norm of those norms, in its parameters'
    order; norm clipping multiplies by torch's coefficient, min(max_norm * 1 / (norm + 1e-6), 1), the members
    that clip otherwise by exactly 1; value clipping clamps at the member's bound (+-inf for the others)."""

    def __init__(self, stacked: Sequence[torch.Tensor], members: Sequence[MemberStep], slices: list[list[Any]]) -> None:
        device = stacked[0].device
        position = {id(p): j for j, p in enumerate(stacked)}
        self.order = [position[id(base)] for base, *_ in slices[0]]  # a member's parameters, as stacked weights
        self.sizes = [p.numel() // len(members) for p in stacked]  # each member's elements of each stacked weight
        self.stacked = list(stacked)
        values = [m.clipping[0] if m.clipping is not None and m.clipping[0] is not None else math.inf for m in members]
        by_norm = [m.clipping is not None and m.clipping[0] is not None and m.clipping[1] == "norm" for m in members]
        self.max_norm = torch.tensor(values, dtype=torch.float32, device=device)[:, None]  # (K, 1)
        self.by_norm = torch.tensor(by_norm, device=device)[:, None] if any(by_norm) else None
        by_value = [m.clipping is not None and m.clipping[0] is not None and m.clipping[1] == "value" for m in members]
        bound = torch.tensor([v if b else math.inf for v, b in zip(values, by_value)], device=device)[:, None]
        self.bounds = (-bound, bound) if any(by_value) else None

    @staticmethod
    def supports(members: Sequence[MemberStep]) -> bool:
        return all(m.clipping is not None and m.clipping[1] in ("norm", "value") for m in members)

    def rows(self, j: int) -> torch.Tensor:
        """Stacked weight j's gradient as (K, n): each member's tensor, in its memory order."""
        grad = self.stacked[j].grad
        k = grad.numel() // self.sizes[j]
        return grad.as_strided((k, self.sizes[j]), (self.sizes[j], 1))

    def __call__(self) -> torch.Tensor:
        """(K,): each member's total gradient norm before clipping; clips the members that clip."""
        per_tensor = [torch.linalg.vector_norm(self.rows(j), dim=1) for j in range(len(self.stacked))]  # P x (K,)
        norms = torch.linalg.vector_norm(torch.stack([per_tensor[j] for j in self.order], dim=1), dim=1)  # (K,)
        if self.by_norm is not None:
            coef = torch.clamp((norms[:, None] + 1e-6).reciprocal() * self.max_norm, max=1.0)  # torch's, per member
            coef = torch.where(self.by_norm, coef, torch.ones_like(coef))
            for j in range(len(self.stacked)):
                self.rows(j).mul_(coef)
        if self.bounds is not None:
            for j in range(len(self.stacked)):
                self.rows(j).clamp_(min=self.bounds[0], max=self.bounds[1])
        return norms


class MergedSteps:
    """The optimizer steps of members as few calls: the param groups of all of them, merged where their
    hyperparameters are equal, stepped by one optimizer of their class (the `umbrella`) whose state is the
    members' own state dicts. LR schedules keep changing the members' groups; they are read at every step."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        first = optimizers[0]
        params = [p for opt in optimizers for g in opt.param_groups for p in g["params"]]
        hyper = {k: v for k, v in first.param_groups[0].items() if k in first.defaults}
        self.umbrella = type(first)(params, **hyper)  # checks nothing new; its groups and state are set per step

    def step(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        merged: dict[tuple, dict[str, Any]] = {}
        state: dict[torch.Tensor, Any] = {}
        for opt in optimizers:
            for group in opt.param_groups:
                key = tuple((k, id(v) if isinstance(v, torch.Tensor) else v) for k, v in group.items() if k != "params")
                target = merged.setdefault(key, {**group, "params": []})
                for p in group["params"]:
                    target["params"].append(p)
                    if p.grad is not None:
                        state[p] = opt.state[p]  # the member's own dict: the umbrella fills and updates it in place
            opt._opt_called = True  # what an LR schedule checks before its first step
        self.umbrella.param_groups = list(merged.values())
        self.umbrella.state = state
        self.umbrella.step()


class FusedObjective:
    """The members' objectives as one: flattened term names, and progress set on each."""

    def __init__(self, members: Sequence[MemberStep]) -> None:
        self.members = members
        self.terms_per_member = members[0].objective.names
        self.names = tuple(f"{n}@{k}" for k in range(len(members)) for n in self.terms_per_member)

    def set_progress(self, epochs: float) -> None:
        for m in self.members:
            m.objective.set_progress(epochs)


class FusedStep:
    def __init__(self, net: FusedAutoencoder, members: Sequence[MemberStep], *, memory_format: torch.memory_format,
                 autocast: Any) -> None:
        self.net = net  # the fused network; its stacked weights are the members' parameters
        self.members = list(members)
        self.memory_format = memory_format  # each member's samples' layout in its job alone (4-d images)
        self.autocast = autocast  # the group's precision's autocast (the same for every member)
        self.objective = FusedObjective(self.members)
        self.names = self.objective.names
        self.params = [p for p in net.parameters() if p.requires_grad]  # the stacked weights
        self.optimizer = Optimizers(self.members, self.params)
        self.probe = Probes(self.members)
        self.precision = members[0].precision  # for a caller that reads the scaler's state (disabled: 32 and bf16)
        # what a graph wrapper checks: a member that reads its gradient norm on the host keeps the group eager
        self.admit = admit_always if all(m.admit is admit_always for m in members) else admit_if_finite
        self.accumulating = lambda: contextlib.nullcontext()
        self.corrupts = any(m.objective.corrupt is not identity for m in members)
        self.norms = torch.zeros(len(members), device=self.params[0].device)  # (K,): each member's grad norm
        self.merged = MergedSteps([m.optimizer for m in members]) \
            if not any(m.precision.scaler.is_enabled() for m in members) else None  # fp16: each its scaler's step
        # each member parameter: (its stacked weight, its slice's offset there), for pointing its .grad at its slice
        where = {p.untyped_storage().data_ptr(): p for p in self.params}
        self.slices = [[(where[p.untyped_storage().data_ptr()], p.shape, p.stride(), p.storage_offset())
                        for p in m.params] for m in self.members]
        self.clipping = Clipping(self.params, self.members, self.slices) if Clipping.supports(self.members) else None
        self.indices: dict[tuple[int, ...], torch.Tensor] = {}

    def _index(self, members: list[int]) -> torch.Tensor:
        """`members` as a device tensor, made once per set (an eager step makes it before a graph captures one)."""
        key = tuple(members)
        if key not in self.indices:
            self.indices[key] = torch.tensor(members, device=self.norms.device)
        return self.indices[key]

    def _link_grads(self) -> None:
        """Each member parameter's gradient: its slice of its stacked weight's gradient (views, no copy)."""
        for m, slices in zip(self.members, self.slices):
            for p, (base, shape, stride, offset) in zip(m.params, slices):
                grad = base.grad
                p.grad = None if grad is None else grad.as_strided(shape, stride, offset - base.storage_offset())

    def begin(self, epochs: float, micro_batches: int = 1) -> None:
        """Before an optimizer step's `micro_batches`: each member's progress in epochs once it is done."""
        self.objective.set_progress(epochs)

    def forward_backward(self, x: torch.Tensor, weight: float) -> Terms:
        """Forward and backward of one micro-batch (B, K, *shape) of every member; `weight`: its share of the
        step's samples (the same for every member: they share the batch sizes)."""
        xs = member_major(x, self.memory_format)  # (K, B, *shape), each member's batch laid out as its job's
        inputs = self._corrupted(xs) if self.corrupts else xs
        self.net.hooks = self.probe.sampling
        with self.autocast:
            outputs = self.net(inputs)  # each (K, B, ...)
            parts = [o.unbind(0) for o in outputs]  # unbind's backward stacks: one gradient tensor, not K
            terms = [m.objective.terms(xs[k], tuple(p[k] for p in parts)) for k, m in enumerate(self.members)]
        total = torch.stack([m.precision.scaler.scale(t["loss"] * weight) for m, t in zip(self.members, terms)])
        total.sum().backward()  # d(sum)/d(member loss) = 1: each member's gradient is its own
        return {f"{n}@{k}": t[n] for k, t in enumerate(terms) for n in self.objective.terms_per_member}

    def _corrupted(self, xs: torch.Tensor) -> torch.Tensor:
        """Each member's inputs as its objective corrupts them, drawn from its own stream."""
        streams = self.net.streams()
        out = []
        for k, m in enumerate(self.members):
            with streams.of(k):
                out.append(m.objective.corrupt(xs[k]))
        return torch.stack(out)

    def update(self) -> torch.Tensor:
        """Each member's update, as `TrainStep.update` makes it (unscale, probe, measure and clip, step, scaler
        update, probe), the optimizer steps merged (`MergedSteps`); then every gradient is dropped."""
        self._link_grads()
        live = [(k, m) for k, m in enumerate(self.members) if not m.frozen]
        for _, m in live:
            m.precision.scaler.unscale_(m.optimizer)  # clipping thresholds are in true gradient units
        # every member's probe (a graph wrapper swaps `probe` for one that does nothing while it warms up)
        self.probe.before_update(self)
        if self.clipping is not None:  # every member's own norm and clipping, on the stacked gradients
            every = self.clipping()
            norms = [every[k] for k, _ in live]
        else:
            norms = [m.clip(m.params) for _, m in live]  # each member's own gradients: never the stack's
        admitted = [m for (_, m), grad_norm in zip(live, norms) if m.admit(grad_norm)]
        if self.merged is not None:
            if admitted:
                self.merged.step([m.optimizer for m in admitted])
        else:
            for m in admitted:
                m.precision.scaler.step(m.optimizer)
        for _, m in live:
            m.precision.scaler.update()
        self.probe.after_update(self)
        if live:
            self.norms.index_copy_(0, self._index([k for k, _ in live]), torch.stack(norms).to(self.norms.dtype))
        for p in self.params:
            p.grad = None
        for _, m in live:
            for p in m.params:
                p.grad = None
        return self.norms.sum()


def member_major(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """(B, K, *shape) -> (K, B, *shape): one copy, each member's batch laid out as the data's samples are (a
    channels-last image batch stays channels-last), as the batch its job alone gathers."""
    b, k = x.shape[:2]
    if x.dim() == 5 and memory_format == torch.channels_last:
        out = torch.empty((k * b, *x.shape[2:]), dtype=x.dtype, device=x.device, memory_format=memory_format)
        out = out.view(k, b, *x.shape[2:])
    else:
        out = torch.empty((k, b, *x.shape[2:]), dtype=x.dtype, device=x.device)
    return out.copy_(x.transpose(0, 1))
