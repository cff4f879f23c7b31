"""`aetrain train`: turn a validated config into objects, train into a run dir, return the results.

Two seams, both Hydra-free:
- `run(cfg, out_dir)` trains one model into a dir: parts built from the config, the engine, its
  callbacks; returns the summary numbers.
- `run_job(config, run_dir)` is a whole job as the `aetrain` command runs it: the process lifecycle
  around `run` (starting `trainer.devices` processes, joining a launcher's, the interrupt, the
  claim on the run dir, what was run recorded in it) and, for a sweep's job, the policy that a
  failed job is recorded and does not sink the sweep. The CLI's task is a call of it.

Everything that can fail on user input (config ranges, device, data, model/data fit) is checked
before the first file is written, so a bad command leaves nothing behind.

Data-parallel (`world`, from `aetrain.train.distributed`): every process builds the same parts
and trains its share of each batch; a set-up error on any process stops all of them with one
line; only rank 0 (`world.is_main`) gets the outputs and writes the run dir.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from aetrain import launch
from aetrain.config import Config, validate
from aetrain.data import build_data
from aetrain.device import resolve_device
from aetrain.errors import AetrainError, Interrupted, ProcessLost, WriteError, one_line
from aetrain.models import FAMILIES
from aetrain.rundir import HYDRA, LAST, Invocation, RunDir, RunDirTaken, checkpoint_dir
from aetrain.train import distributed
from aetrain.train.diagnostics import build_probe
from aetrain.train.distributed import World
from aetrain.train.engine import NONFINITE, Callback, Engine, Parts, accumulation_windows
from aetrain.train.graphs import COMPILE_MODES, build_step, graphs_policy
from aetrain.train.memory import check_fits
from aetrain.train.optim import build_optimizer, build_schedule
from aetrain.train.outputs.console import final_table
from aetrain.train.precision import Precision, build_clip, trainable
from aetrain.train.runs import build_engine, long_lived_objects_frozen, open_run, seed_everything, start_run
from aetrain.train.signals import Interrupt
from aetrain.train.step import GradientProbe, TrainStep
from aetrain.train.threads import set_num_threads

log = logging.getLogger(__name__)


def build_parts(cfg: Config, world: World | None = None) -> Parts:
    """Every component of a run, on its device, freshly initialised from cfg.trainer.seed.

    `world`: the data-parallel processes this one belongs to (None: this process alone). Each
    builds the same model; the data is split between them, the training network is wrapped in
    DistributedDataParallel (the one place it is, `world.wrap`) and batch norm synchronized."""
    world = world or World()
    t = cfg.trainer
    with world.agreement():  # a process that cannot set up stops every process, with its reason
        validate(cfg)
        graphs_policy(t.cuda_graphs), COMPILE_MODES.get(t.compile_mode)  # names checked before the data loads
        device = world.device(resolve_device(t.device))
        set_num_threads(t.num_threads)
        world.check_config(cfg, device)
        family = FAMILIES.get(cfg.model.name)
        seed_everything(t.seed, t.deterministic)
        with world.main_first():  # rank 0 downloads, the others then read its files
            data = build_data(cfg.data, device, seed=t.seed, channels_last=t.channels_last, rank=world.rank,
                              world_size=world.size)
        check_fits(cfg, family, data.spec, device, batch_size=max(data.train.plan.sizes))  # before building it
        model = family.build(cfg.model, data.spec).to(device, memory_format=data.memory_format)
        objective, val_objective = (o.to(device) for o in family.objectives(cfg.model, data.spec))
    model = world.prepare(model)  # SyncBatchNorm under DDP: the same state dict, so checkpoints load anywhere
    precision = Precision(t.precision, device)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    plan = data.train.plan
    windows = accumulation_windows(plan.sizes, t.accumulate_grad_batches, global_sizes=plan.global_sizes,
                                   world_size=world.size)
    schedule = build_schedule(cfg.scheduler, optimizer, total_steps=len(windows) * t.max_epochs)
    net = torch.compile(model, mode=t.compile_mode) if t.compile else model  # compiled lazily, at the first batch
    train_net = world.wrap(net)  # DDP: gradients averaged across processes in the backward pass
    # the training doctor's per-layer sampling (a no-op probe when off), on the process that writes diagnostics.csv
    probe = build_probe(cfg.diagnostics, model, latent_dim=cfg.model.latent_dim, steps_per_epoch=len(windows)) \
        if world.is_main else GradientProbe()
    step = TrainStep(train_net, objective, optimizer, precision,
                     build_clip(t.gradient_clip_val, t.gradient_clip_algorithm), trainable(model.parameters()),
                     admit=NONFINITE.get(t.on_nonfinite).admit, accumulating=world.accumulating(train_net), probe=probe)
    step = build_step(cfg, step, device, plan.sizes, eager_only=world.eager_only())  # a CUDA graph when it can be
    world.seed(t.seed)  # each process its own noise and dropout from here; rank 0 keeps the single process's
    return Parts(cfg, model, net, objective, val_objective, optimizer, schedule, precision, step, data, windows,
                 family.galleries)


def run_job(config: Config | Callable[[], Config], run_dir: RunDir, *, invocation: Invocation | None = None,
            job: int | None = None, relaunch: Sequence[str] = ()) -> float | None:
    """One job as `aetrain` runs it: train `config` into `run_dir` (its default dir already allocated, or the one
    the user named) and return the objective, the run's best val/loss.

    - `config`: the typed config, or a function making it (its errors are then the job's own, which a sweep
      records like any other failure).
    - `trainer.devices=N`: starts N processes of `aetrain` itself, `python -m aetrain *relaunch` (a command
      line that trains this job into `run_dir`), which write the run dir; this process waits for them and
      returns the objective their run wrote into summary.json.
    - In a process a launcher started (torchrun, aetrain's own, a SLURM job's tasks): signals count from now
      on, ranks other than 0 keep quiet, every process joins the process group and trains into rank 0's dir.
    - The run dir is claimed (one run per dir) and `invocation` (what was run) is recorded in it once the run
      is known to be valid; a run that fails before writing anything leaves no dir behind.
    - `job`: the job's number in a sweep. A failed job is recorded in its run dir (summary.json, .hydra/,
      train.log) and returns None (no objective), so the sweep goes on; an interrupt is raised: the user
      stopped the sweep, not just this job.

    Raises what stopped the run (an AetrainError, or a bug as itself); the caller says it and exits.
    """
    world: World | None = None
    try:
        if callable(config):
            config = config()
        run_dir.refuse_foreign()  # a folder of one's own: refused before anything (a lock file, train.log) goes there
        processes = launch.processes_to_launch(config.trainer)
        if processes > 1:
            validate(config)  # a config error is one line from here, before any process starts
            launch.launch(list(relaunch), processes, run_dir)
            best = run_dir.summary().get("best_val_loss")
            return float(best) if isinstance(best, (int, float)) else None
        launch.join_job_tasks()
        interrupt = None
        if launch.launched():  # from now until this process exits (see aetrain.train.signals)
            interrupt = Interrupt()
            interrupt.install()
            if launch.env_rank() > 0:
                launch.quiet_secondary_process()
        world = distributed.connect(config.trainer)
        shared = Path(world.broadcast(str(run_dir.path)))  # rank 0's run dir is everyone's
        if shared != run_dir.path:
            run_dir.release()  # the dir this process was given: another rank's scratch
            run_dir = RunDir(shared, key=run_dir.key)
        with run_dir.claimed() if world.is_main else contextlib.nullcontext():  # one run per dir: a second is refused
            result = run(config, run_dir.path, world=world, interrupt=interrupt,
                         invocation=invocation if world.is_main else None)
    except KeyboardInterrupt:  # before training started (once it has, the run saves and raises Interrupted)
        run_dir.release()
        raise
    except Exception as ex:
        if job is not None:  # one failed job must not sink the sweep, whatever the cause
            return record_job_failure(ex, run_dir, invocation, job)
        if launch.env_rank() == 0:
            run_dir.release()
        raise
    world.close()
    return result["best_val_loss"]


def record_job_failure(ex: Exception, run_dir: RunDir, invocation: Invocation | None, job: int) -> None:
    """Record a failed sweep job in its run dir (.hydra/, summary.json, train.log). It has no objective: None,
    which the Optuna sweeper records as a failed trial (NaN would crash hydra-optuna-sweeper 1.3 with optuna
    2.x: it tells the study FAIL together with the NaN value). Raises an interrupt: the sweep stops there."""
    if isinstance(ex, RunDirTaken):  # the dir is another run's: record nothing there
        log.error("job %s failed: %s", job, one_line(ex))
        return None
    if launch.env_rank() != 0:
        return None  # a SLURM job's other tasks: its rank 0 records the failure
    if invocation is not None and not (run_dir.path / HYDRA).exists():  # failed before training: what was run
        run_dir.record(invocation)
    error = f"{type(ex).__name__}: {one_line(ex)}"
    log.error("job %s failed: %s", job, error, exc_info=not isinstance(ex, AetrainError))  # a bug's traceback
    run_dir.record_failure(error)
    if isinstance(ex, Interrupted):
        raise ex
    return None


class RecordInvocation(Callback):
    """Records what was run in the run dir (.hydra/) once the run is known to be valid: a rejected command never
    writes over the files of a run already there."""

    def __init__(self, run_dir: RunDir, invocation: Invocation) -> None:
        self.run_dir, self.invocation = run_dir, invocation

    def on_fit_start(self, engine: Engine) -> None:
        self.run_dir.record(self.invocation)


def run(cfg: Config, out_dir: Path, *, callbacks: Sequence[Callback] = (), world: World | None = None,
        interrupt: Interrupt | None = None, invocation: Invocation | None = None) -> dict[str, float]:
    """Train one model into `out_dir`; returns the summary numbers (best val loss first).

    With cfg.trainer.resume set, training continues from that checkpoint exactly where it was
    written. `callbacks` run after aetrain's own, on the process that writes the run dir (rank 0
    of a data-parallel run); their on_fit_start fires once the run is known to be valid, as does the
    recording of `invocation` (what was run) in .hydra/. A signal stops the run with `Interrupted`
    after saving last.pt. `world`: the data-parallel processes (None: this process alone); every one
    of them calls `run` with the same arguments. `interrupt`: the signal handler to train under (a
    launched process installs its own from the start, so that a signal during set-up counts too);
    None = one installed for the run.
    """
    world = world or World()
    parts = build_parts(cfg, world)
    with world.agreement():  # the checks a fused member makes too (aetrain.train.runs), before anything is written
        start = open_run(cfg, out_dir, parts, overrides=invocation.overrides if invocation is not None else None,
                         world_size=world.size)
    if world.is_main:
        start_run(start, parts)
    recorded = [RecordInvocation(RunDir(out_dir), invocation)] if invocation is not None else []
    engine = build_engine(start, parts, callbacks, recorded=recorded, world=world, interrupt=interrupt)
    last = checkpoint_dir(out_dir) / LAST
    aborted = False  # a second Ctrl-C: no final table (summary.json says how the run ended)
    with engine.interrupt.installed(), long_lived_objects_frozen():
        try:
            state = engine.fit()
        except KeyboardInterrupt:
            aborted = True
            raise
        except Interrupted as e:
            raise Interrupted(f"{e}; saved {last}; resume with: {_resume_command(cfg, out_dir, world)}",
                              e.exit_code - 128) from None
        except OSError as e:  # an output could not be written: a full disk, a read-only dir
            raise WriteError.of(e, f"; the run stopped {engine.where()}") from None
        except Exception as e:
            error = world.explain(e)
            if isinstance(error, ProcessLost):  # also when it happened in a callback's on_fit_end
                saved = f"{last} holds the last complete checkpoint; resume with: " \
                        f"{_resume_command(cfg, out_dir, world)}" if last.exists() else "nothing was saved"
                raise ProcessLost(f"{error}; {saved}") from e
            raise
        finally:
            engine.interrupt.end()  # training is over: a signal now (a launcher stopping the rest) is ignored
            if world.is_main and not aborted:
                for line in final_table(out_dir):
                    log.info("%s", line)
    return {"best_val_loss": state.best_val_loss, "best_epoch": state.best_epoch, "epochs": state.epoch,
            "steps": state.step}


def _resume_command(cfg: Config, out_dir: Path, world: World) -> str:
    """How to continue this run: with as many processes as it has (aetrain launches them itself when
    trainer.devices says so, else the same launcher command does)."""
    resume = shlex.quote(f"trainer.resume={out_dir}")
    command = f"aetrain {resume}"
    if world.size > 1 and cfg.trainer.devices not in (world.size, -1):
        return f"{command} trainer.devices={world.size} (or your launcher's command with {resume})"
    return command
