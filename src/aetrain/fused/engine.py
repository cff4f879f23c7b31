"""The training loop of a fused group: K runs in lockstep, each seen by its own callbacks as a run alone.

Every member has a real `aetrain.train.engine.Engine` (`Member.engine`): its parts (its config,
model, objectives, optimizer, schedule, data with its own batch order), its callbacks (the
checkpointer, early stopping and every output writer a run alone gets), its `TrainState`,
history, meter and status. `FusedEngine` never calls a member engine's `fit`; it runs the loop of
`Engine.fit`/`run_epoch`/`train_epoch` once for the whole group, with the batched `FusedStep`
for the step and one batched validation, and then does for each member what `Engine` does for a
run: its state's counters, its schedule, its epoch record, its callbacks' hooks, its non-finite
policy, its end. So the writers are the same code, reading the same things (`engine.parts`,
`engine.state`, `engine.history`, `engine.meter`), and a member's run dir is a run dir.

Members are independent:
- a member that diverges (its meter's non-finite read under `trainer.on_nonfinite=stop`) or whose
  callbacks fail (a checkpoint that cannot be written) ends with that error in its own summary
  and takes no further update; the others go on;
- a member that stops early or reaches its own `trainer.max_epochs` ends as a run does;
- at the end of an epoch in which members ended, the group regroups: the fused network and step
  are rebuilt from the members still training, so an ended member stops costing compute too.
- a signal (SIGINT, SIGTERM; `aetrain.train.signals.Interrupt`) ends the group after the step
  under way: every member still training writes its `last.pt` at that point, as a run alone
  would, and `Interrupted` is raised.

Random streams: a member's callbacks that may save a checkpoint (epoch ends, the end, steps with
`trainer.checkpoint_every_n_steps`) run with the member's streams installed as the global ones, so
its checkpoint holds its own RNG states: resumed alone it continues as it would have in the group.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ContextManager

import torch

from aetrain.data import Data
from aetrain.errors import DivergenceError, Interrupted
from aetrain.fused.net import FusedAutoencoder, RngState, Streams
from aetrain.fused.step import FusedStep, MemberStep, member_major
from aetrain.rundir import Status
from aetrain.train.diagnostics import ReconstructionCheck
from aetrain.train.engine import Engine, Meter, memory_mb
from aetrain.train.signals import Interrupt

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One job of a fused group."""

    index: int  # its position in the group as given
    engine: Engine  # what its callbacks see: a run alone
    step: MemberStep
    rng: RngState
    done: bool = False  # ended (ok, stopped early, diverged, failed, interrupted): out of the group
    closed: bool = False  # its end is written (its callbacks' on_fit_end have all run)
    error: BaseException | None = None  # what ended it, when it failed

    @property
    def cfg(self) -> Any:
        return self.engine.parts.cfg


class GroupMeter:
    """The epoch's loss terms and gradient norms of every member, in one device buffer: a micro-batch's
    terms of all members are written with one copy. Each member's `Meter` is a view of its part
    (`member`), which the member's callbacks and checkpoints read as a run's own meter."""

    def __init__(self, names: tuple[str, ...], size: int, batch_sizes: list[int], accumulate: int,
                 device: torch.device) -> None:
        self.names = names  # each member's terms, "loss" first
        self.flat = tuple(f"{n}@{k}" for k in range(size) for n in names)  # the fused step's term names
        self.sizes = torch.tensor(batch_sizes, dtype=torch.float32, device=device)
        self.terms = torch.zeros(len(batch_sizes), size, len(names), device=device)  # (batches, K, terms)
        self.norms = torch.zeros(math.ceil(len(batch_sizes) / accumulate), size, device=device)  # (steps, K)
        self.accumulate = accumulate
        self.batches = 0
        self.steps = 0

    def add_batch(self, terms: dict[str, torch.Tensor]) -> None:
        torch.stack([terms[n].detach() for n in self.flat], out=self.terms[self.batches].view(-1))
        self.batches += 1

    def add_step(self, norms: torch.Tensor) -> None:
        self.norms[self.steps] = norms.detach()
        self.steps += 1

    def member(self, k: int, restored: Meter | None) -> Meter:
        """Member k's meter: a view of its part; `restored` (a mid-epoch checkpoint's) is copied in first."""
        if restored is not None:
            self.terms[:, k].copy_(restored.terms)
            self.norms[:, k].copy_(restored.norms)
            self.batches, self.steps = restored.batches, restored.steps  # every member resumes at the same point
        return MemberMeter(self, k)


class MemberMeter(Meter):
    """A member's part of a `GroupMeter`, with `Meter`'s reads (and checkpoint state)."""

    def __init__(self, group: GroupMeter, k: int) -> None:  # no super().__init__: the buffers are the group's
        self.group = group
        self.names = group.names
        self.sizes = group.sizes
        self.terms = group.terms[:, k]  # (batches, terms), a view
        self.norms = group.norms[:, k]  # (steps,)
        self.accumulate = group.accumulate

    @property
    def batches(self) -> int:  # type: ignore[override]
        return self.group.batches

    @property
    def steps(self) -> int:  # type: ignore[override]
        return self.group.steps


class FusedEngine:
    """Trains `members` (built by `aetrain.fused.build`) to their ends; see the module docstring."""

    def __init__(self, members: Sequence[Member], data: Data, *, autocast: Any, interrupt: Interrupt,
                 context: Callable[[Member], ContextManager[Any]] | None = None,
                 wrap_step: Callable[[FusedStep], Any] | None = None, notes: Callable[[Member], dict] | None = None,
                 name: str = "0", labels: Sequence[str] | None = None) -> None:
        self.members = list(members)
        self.data = data  # shared: the same samples and split for every member (each has its own batch order)
        self.device = data.device
        self.autocast = autocast
        self.interrupt = interrupt
        self.context = context or (lambda m: contextlib.nullcontext())  # e.g. where the member's log lines go
        self.wrap_step = wrap_step or (lambda step: step)  # e.g. a CUDA graph of the fused step
        self.notes = notes or (lambda m: {})
        self.name = name  # the group's, in its progress lines
        # each member's name in the group's lines (labels[index]; by default its index)
        self.labels = {m.index: (labels[m.index] if labels is not None else str(m.index)) for m in self.members}
        self.started = time.perf_counter()
        self.shares = {m.index: 0.0 for m in self.members}  # seconds of the group's time each member accounts for
        self.since = self.started
        for m in self.members:
            m.engine.clock = self.clock_of(m)
        self.active: list[Member] = []  # the members in the fused network, in its order
        self.net: FusedAutoencoder | None = None
        self.step: Any = None
        self.fused: FusedStep | None = None
        self.meter: GroupMeter | None = None

    # --- the group ----------------------------------------------------------------------------------

    @property
    def live(self) -> list[Member]:
        return [m for m in self.active if not m.done]

    def fit(self) -> None:
        """Train every member to its end; raises `Interrupted` (after every member saved) on a signal."""
        try:
            self._fit()
        except KeyboardInterrupt:  # a second Ctrl-C, in training or while members ended: as a run alone aborts
            for m in self.members:
                if not m.closed:  # its end not (fully) written: summary.json as its last.pt has it
                    with self._scope(m, False), self.context(m):
                        m.engine._abort()
            raise

    def _fit(self) -> None:
        for m in self.members:
            self._note(m)
            if not m.done:
                self._call(m, "on_fit_start", full=True)
        self._regroup(force=True)
        try:
            while self.live:
                self.run_epoch()
        except Interrupted as e:
            signum = e.exit_code - 128
            for m in self.live:
                self._end(m, Status.INTERRUPTED, Interrupted(f"interrupted by {signal.Signals(signum).name} "
                                                        f"{m.engine.where()}", signum))
            raise
        except Exception as e:  # the group's own computation failed: every member still training with it
            for m in self.live:
                self._end(m, Status.FAILED, e)
            raise

    def trial(self) -> None:
        """One forward and backward pass of the whole group on a full training batch, in eval mode: no update,
        no random draw, no running statistic changed. What the group's steps need in memory, tried before
        anything is written (out of memory raises here)."""
        self._regroup(force=True)
        x = next(self.batches(self.active[0].engine.state.epoch))  # (B, K, *shape)
        self.net.eval()
        try:
            xs = member_major(x, self.data.memory_format)
            with self.autocast:
                outputs = self.net(xs)
            torch.stack([o.float().sum() for o in outputs]).sum().backward()
        finally:
            self.fused.optimizer.zero_grad(set_to_none=True)
            self.net.train()

    def _regroup(self, *, force: bool = False) -> None:
        """The fused network and step over the members still training (after members ended)."""
        keep = [m for m in self.members if not m.done]
        if not force and [m.index for m in keep] == [m.index for m in self.active]:
            return
        if self.net is not None:
            self.net.release()
            for m in self.active:
                for p in m.step.params:
                    p.grad = None
        self.active, self.meter = keep, None
        if not keep:
            self.net = self.step = self.fused = None
            return
        streams = Streams([m.rng for m in keep], self.device)
        fmt = self.data.memory_format
        self.net = FusedAutoencoder.of([m.engine.parts.model for m in keep], fmt, lambda: streams)
        self.streams = streams
        self.fused = FusedStep(self.net, [m.step for m in keep], memory_format=fmt, autocast=self.autocast)
        self.step = self.wrap_step(self.fused)

    # --- one epoch ----------------------------------------------------------------------------------

    def run_epoch(self) -> None:
        self.check_interrupt()
        for m in self.live:
            self._call(m, "on_epoch_start")
        tic = time.perf_counter()
        train, samples = self.train_epoch()
        train_time = time.perf_counter() - tic
        if not self.live:  # every member diverged during the epoch
            self._regroup()
            return
        val = self.validate()
        self.measure_checks()
        memory = memory_mb(self.device)  # the group's: one process holds every member
        for m in self.live:
            p, st = m.engine.parts, m.engine.state
            p.schedule.after_epoch(val[m.index]["val/loss"])
            st.epoch += 1
            st.step_in_epoch = 0
            m.engine.meter = None
            improved = val[m.index]["val/loss"] < st.best_val_loss  # False for NaN
            if improved:
                st.best_val_loss, st.best_epoch = val[m.index]["val/loss"], st.epoch
            st.bad_epochs = 0 if improved else st.bad_epochs + 1
            record = {"epoch": st.epoch, "step": st.step, **train[m.index], **val[m.index], "improved": improved,
                      "epoch_time_s": time.perf_counter() - tic, "samples_per_s": samples / max(train_time, 1e-9),
                      "memory_mb": memory}
            m.engine.history.append(record)
        self._account()
        live = self.live
        for m in live:
            self._note(m)
            if not self._call(m, "on_epoch_end", m.engine.history[-1], full=True):
                continue
            if m.engine.state.epoch >= m.cfg.trainer.max_epochs or m.engine.stop_reason is not None:
                self._end(m, Status.OK if m.engine.stop_reason is None else Status.STOPPED_EARLY)
        self._progress(live)
        self._regroup()

    def _progress(self, trained: list[Member]) -> None:
        """The group's line of an epoch (its members' own lines go to their logs)."""
        losses = sorted((m.engine.history[-1]["val/loss"], self.labels[m.index]) for m in trained
                        if math.isfinite(m.engine.history[-1]["val/loss"]))
        best = f"best val/loss {losses[0][0]:.5g} (run dir {losses[0][1]}), worst {losses[-1][0]:.5g}" if losses \
            else "no finite val/loss"
        ended = len(trained) - len(self.live)
        log.info("fused group %s: epoch %d, %d member(s) trained, %s%s", self.name, trained[0].engine.state.epoch,
                 len(trained), best, f"; {ended} ended" if ended else "")

    def train_epoch(self) -> tuple[dict[int, dict[str, float]], int]:
        """The epoch's steps (from step_in_epoch on) for every member; returns each member's mean terms and last
        lr, and the samples each member trained on."""
        group = self.active
        first = group[0].engine
        p0, st0 = first.parts, first.state
        self.net.train()
        accumulate = p0.cfg.trainer.accumulate_grad_batches
        if self.meter is None or first.meter is None:
            self.meter = GroupMeter(p0.objective.names, len(group), p0.data.train.plan.sizes, accumulate,
                                    self.device)
            for k, m in enumerate(group):
                m.engine.meter = self.meter.member(k, m.engine.meter)  # a restored mid-epoch meter is copied in
        steps_per_epoch = len(p0.windows)
        batches = self.batches(st0.epoch, start=st0.step_in_epoch * accumulate)
        samples = 0
        lrs = {m.index: m.engine.lr for m in group}
        for window in p0.windows[st0.step_in_epoch :]:
            self.step.begin(st0.epoch + (st0.step_in_epoch + 1) / steps_per_epoch, len(window))
            terms = []
            for weight in window:
                x = next(batches)  # (B, K, *shape)
                terms.append(self.step.forward_backward(x, weight))
                samples += x.shape[0]
            lrs = {m.index: m.engine.lr for m in group}  # the rates this step uses
            self.step.update()
            for t in terms:
                self.meter.add_batch(t)
            self.meter.add_step(self.fused.norms)
            for m in self.live:
                m.engine.parts.schedule.after_step()
                m.engine.state.step += 1
                m.engine.state.step_in_epoch += 1
            for m in self.live:
                every = m.cfg.trainer.checkpoint_every_n_steps
                self._call(m, "on_step", full=bool(every) and m.engine.state.step % every == 0)
            for m in self.live:
                st = m.engine.state
                if st.step % m.cfg.trainer.log_every_n_steps == 0:
                    metrics = self._read(m)
                    if metrics is not None:
                        self._call(m, "on_log", {"step": st.step, "lr": lrs[m.index], **metrics})
            if not self.live:
                break
            self.check_interrupt()
        out = {}
        for m in self.live:
            metrics = self._read(m)
            if metrics is not None:
                out[m.index] = {**metrics, "lr": lrs[m.index]}
        return out, samples

    def batches(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """The group's micro-batches of an epoch from `start` on: (B, K, *shape), sample b of each member's own
        batch (its own order, `BatchPlan.order` of its seed) at [b]; one gather per micro-batch."""
        plans = [m.engine.parts.data.train.plan for m in self.active]
        k = len(plans)
        data = self.data.train.data
        order = torch.stack([plan.order(epoch) for plan in plans], dim=1).flatten()  # (samples * K,), sample-major
        order = order.to(data.device)
        chunks = order.split([n * k for n in plans[0].sizes])[start:]
        shape = data.shape[1:]
        if data.device != self.device:
            for idx in chunks:
                yield data[idx].to(self.device, non_blocking=True).view(-1, k, *shape)
            return
        buffers = [torch.empty_like(data[: plans[0].batch_size * k]) for _ in range(2)]
        for i, idx in enumerate(chunks):
            batch = torch.index_select(data, 0, idx, out=buffers[i % 2][: len(idx)])
            yield batch.view(-1, k, *shape)

    @torch.inference_mode()
    def validate(self) -> dict[int, dict[str, float]]:
        """Each member's validation terms over the (shared) validation inputs, val/loss first, as
        `Engine.validate` computes them for a run alone."""
        group = self.active
        self.net.eval()
        names = group[0].engine.parts.val_objective.names
        sums = torch.zeros(len(group), len(names), device=self.device)
        fmt = self.data.memory_format
        for x in self.data.val_batches():
            xs = member_major(x.unsqueeze(1).expand(x.shape[0], len(group), *x.shape[1:]), fmt)  # (K, B, *shape)
            with group[0].engine.parts.precision.autocast:
                outputs = self.net(xs)
                parts = [o.unbind(0) for o in outputs]
                terms = [m.engine.parts.val_objective.terms(xs[k], tuple(p[k] for p in parts))
                         for k, m in enumerate(group)]
            sums += torch.stack([torch.stack([t[n] for n in names]) for t in terms]) * x.shape[0]
        values = (sums / self.data.num_val).tolist()
        return {m.index: {f"val/{n}": v for n, v in zip(names, row)} for m, row in zip(group, values)}

    @torch.inference_mode()
    def measure_checks(self) -> None:
        """The training doctor's reconstruction check (`ReconstructionCheck`) of every member still training, each
        forward pass batched over the group; each member's check then returns its numbers (`preset`) when its
        diagnostics output asks at its epoch's end. The same numbers as each member's own check: the same inputs
        and code, each member's slice of the fused network's outputs."""
        group = self.active
        checks = {k: c.check for k, m in enumerate(group) if not m.done for c in m.engine.callbacks
                  if isinstance(getattr(c, "check", None), ReconstructionCheck)}
        if not checks:
            return
        first = next(iter(checks.values()))
        fmt = self.data.memory_format

        def stacked(inputs: Callable[[ReconstructionCheck], torch.Tensor]) -> torch.Tensor:
            """Each member's check input (n, *shape) as the group's (K, n, *shape); a member without one (ended
            this epoch) computes on the first's, unread."""
            return member_major(torch.stack([inputs(checks.get(k, first)) for k in range(len(group))], dim=1), fmt)

        was_training = self.net.training
        self.net.eval()
        try:
            x_hat = self.net(stacked(lambda c: c.samples))[1]  # (K, n, *shape)
            noise_hat = self.net(stacked(lambda c: c.noise))[1]
            z = self.net.code(stacked(lambda c: c.samples[: c.num_effect])).float()  # (K, m, latent)
            base = self.net.generate(z)  # (K, m, *shape)
            changes = {k: torch.full((z.shape[2],), math.nan, device=z.device) for k in checks}
            for units in first.unit_chunks(z.shape[2], z.device):  # every member's chunk of shuffled codes at once
                codes = torch.stack([checks.get(k, first).shuffled(z[k], units) for k in range(len(group))])
                out = self.net.generate(codes)  # (K, units * m, *shape)
                for k, check in checks.items():
                    check.add_change(changes[k], units, out[k], base[k])
        finally:
            self.net.train(was_training)
        for k, check in checks.items():
            check.preset = check.numbers(x_hat[k], noise_hat[k], changes[k])

    def check_interrupt(self) -> None:
        """Stop here if a signal came in: between optimizer steps, where every member's state is complete."""
        if self.interrupt.signum is not None:
            first = self.live[0].engine if self.live else None
            where = f" {first.where()}" if first is not None else ""
            raise Interrupted(f"interrupted by {signal.Signals(self.interrupt.signum).name}{where}",
                              self.interrupt.signum)

    # --- one member ---------------------------------------------------------------------------------

    def _read(self, m: Member) -> dict[str, float] | None:
        """The member's running train means (its non-finite policy applied); None when it diverged (then ended)."""
        try:
            with self.context(m):
                return m.engine.train_metrics()
        except DivergenceError as e:
            self._end(m, Status.DIVERGED, e)
            return None

    def _call(self, m: Member, hook: str, *args: Any, full: bool = False) -> bool:
        """The member's callbacks' `hook`; a failure ends the member (not the group). `full`: a checkpoint may be
        written, so the member's random streams are the global ones meanwhile."""
        try:
            with self._scope(m, full), self.context(m):
                m.engine._call(hook, *args)
            return True
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as e:
            self._end(m, Status.DIVERGED if isinstance(e, DivergenceError) else Status.FAILED, e)
            return False

    @contextlib.contextmanager
    def _scope(self, m: Member, full: bool) -> Iterator[None]:
        if not full:
            yield
            return
        outer = torch.get_rng_state()
        m.rng.install(self.device)
        try:
            yield
        finally:
            m.rng.keep_torch(self.device)
            torch.set_rng_state(outer)

    def _end(self, m: Member, status: Status, error: BaseException | None = None) -> None:
        """End the member as `Engine.fit` ends a run: its status, every callback's on_fit_end (with its error in
        flight, which the summary records), and no more updates."""
        if m.done:
            return
        m.done, m.error = True, error
        m.step.frozen = True
        m.engine.status = status
        self._account()
        self._note(m)
        try:
            with self._scope(m, True), self.context(m):
                if error is None:
                    m.engine._end()
                else:
                    try:
                        raise error
                    except BaseException:
                        m.engine._end()
        except Exception as e:  # a writer failed while ending a run that ended well: the run failed
            m.engine.status, m.error = Status.FAILED, e
            log.error("%s: %s", type(e).__name__, e)
        m.closed = True

    def clock_of(self, m: Member) -> Callable[[], float]:
        """Member m's own time: its share of the group's time so far (what its outputs.render_budget is a share
        of, as a run alone's is of its wall time; K members drawing 2% each of the group's whole time would
        together spend 2K%)."""
        def clock() -> float:
            live = self.live
            running = (time.perf_counter() - self.since) / len(live) if m in live else 0.0
            return self.shares[m.index] + running

        return clock

    def _account(self) -> None:
        """Share the group's time since the last call evenly between the members training in it."""
        now = time.perf_counter()
        live = self.live or self.active
        for m in live:
            self.shares[m.index] += (now - self.since) / max(len(live), 1)
        self.since = now

    def _note(self, m: Member) -> None:
        m.engine.notes = self.notes(m) | {"group": {
            **self.notes(m).get("group", {}),
            "size": len(self.members),
            "index": m.index,
            "wall_time_s": round(time.perf_counter() - self.started, 3),
            "share_s": round(self.shares[m.index], 3),
        }}
