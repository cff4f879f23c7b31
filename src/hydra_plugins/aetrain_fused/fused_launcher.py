"""`hydra/launcher=fused`: the jobs of a sweep that share a shape train as one vectorised model.

All of aetrain's Hydra glue for fused sweeps (README, "Fused sweeps"). Hydra hands the launcher a
batch of jobs (the whole grid, or the `hydra.sweeper.n_jobs` trials Optuna proposes at once); this
launcher composes each job's config as the basic launcher does, groups the batch with
`aetrain.fused.group_configs` (equal configs but for the fusible keys; at most `max_group` per
group), trains each group with `aetrain.fused.train_group` in this process, and every other job
through the normal path (Hydra's `run_job` and aetrain's task function, which calls
`aetrain.commands.train.run_job`), with one log line saying why. A member's `.hydra/` and its failure are
recorded as `run_job` records a job's (`RunDir.record` once it trains, `record_job_failure`).
Each job keeps its own run dir (`hydra.sweep.dir/<job number>`, with `.hydra/` and train.log), its
JobReturn (its best val/loss, what sweepers read) and its failure, if it fails, alone.

`hydra.launcher.resume=true`, with the `hydra.sweep.dir` of a sweep that was interrupted (the line an
interrupted sweep prints gives the whole command): jobs that finished are not trained again, jobs with
a `last.pt` continue from it (fused members as a group, other jobs alone), the rest start; the rule the
plain launcher follows too (`aetrain.rundir.resuming`).

Kept light at import time (Hydra imports every plugin when it starts): torch and the trainer are
imported when a sweep is launched.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger("aetrain")


@dataclass
class FusedLauncherConf:
    _target_: str = "hydra_plugins.aetrain_fused.fused_launcher.FusedLauncher"
    max_group: int = 64  # members of one fused group at most; a larger group is split (and halved when out of memory)
    resume: bool = False  # true: continue the interrupted sweep in hydra.sweep.dir (finished jobs are kept)


ConfigStore.instance().store(group="hydra/launcher", name="fused", node=FusedLauncherConf, provider="aetrain")


def check(launcher: Any) -> None:
    """`hydra.launcher`'s values that its schema cannot refuse: ConfigError in one line. Called before the sweep
    claims its dir (aetrain.cli.sweep), so a corrected command can use the same hydra.sweep.dir."""
    from aetrain.errors import ConfigError

    max_group = launcher.max_group
    if not isinstance(max_group, int) or isinstance(max_group, bool) or max_group < 1:
        raise ConfigError(f"hydra.launcher.max_group={max_group!r} is out of range: must be an integer >= 1")


def register() -> None:
    """Make sure Hydra knows this launcher, however aetrain was installed: Hydra finds launchers by listing the
    `hydra_plugins` namespace, which a PEP 660 editable install (`pip install -e .` with setuptools >= 64) hides
    from it although the package imports fine (facebookresearch/hydra#3252). aetrain's CLI calls this first."""
    from hydra.core.plugins import Plugins

    Plugins.instance().class_name_to_class.setdefault(FusedLauncherConf._target_, FusedLauncher)


@dataclass
class Job:
    """One job of the batch, composed."""

    num: int  # hydra.job.num
    overrides: list[str]
    config: DictConfig  # the job's whole config, hydra node included (its runtime.output_dir set)
    run_dir: Path
    typed: Any = None  # its aetrain.config.Config; None when composing it failed (the normal path says why)
    why_alone: str = ""
    result: JobReturn | None = field(default=None, repr=False)

    @property
    def task(self) -> DictConfig:
        task = copy.deepcopy(self.config)
        with read_write(task), open_dict(task):
            del task["hydra"]
        return task

    @property
    def invocation(self) -> Any:
        """What the job runs, as the text of its .hydra/ files (`aetrain.rundir.Invocation`)."""
        from aetrain.rundir import Invocation

        return Invocation(OmegaConf.to_yaml(self.task), tuple(self.config.hydra.overrides.task),
                          OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(self.config.hydra)})))


class FusedLauncher(Launcher):
    def __init__(self, max_group: int = 64, resume: bool = False) -> None:
        super().__init__()
        self.max_group = max_group
        self.resume = resume
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from aetrain.cli import sweep
        from aetrain.errors import Interrupted
        from aetrain.fused import group_configs
        from aetrain.rundir import resuming

        assert self.config is not None and self.hydra_context is not None
        check(self)
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [self._compose(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        if self.resume:  # a sweep still training there: refused in one line before anything is touched
            for job in jobs:
                resuming(Path(str(self.config.hydra.sweep.dir)), job.run_dir)
        typed = [j for j in jobs if j.typed is not None]
        grouping = group_configs([j.typed for j in typed], max_group=self.max_group)
        for i, why in grouping.alone.items():
            typed[i].why_alone = why
        units: list[list[Job]] = [[typed[i] for i in g] for g in grouping.groups]
        units += [[j] for j in jobs if j.typed is None or j.why_alone]
        log.info("fused launcher: %d job(s) as %d group(s) and %d alone", len(jobs), len(grouping.groups),
                 len(jobs) - sum(len(g) for g in grouping.groups))
        try:
            for unit in sorted(units, key=lambda u: u[0].num):
                if len(unit) > 1:
                    self._group(unit)
                else:
                    job = unit[0]
                    log.info("job %d trains alone: %s", job.num, job.why_alone)
                    self._alone(job)
        except KeyboardInterrupt:  # Ctrl-C before a job's training began (once it has, the job saves and stops)
            raise sweep.Stopped(self._stopped(Interrupted("interrupted by SIGINT", signal.SIGINT))) from None
        return [job.result for job in jobs]

    # --- composing ---------------------------------------------------------------------------------------------

    def _compose(self, num: int, overrides: list[str]) -> Job:
        """The job's config as Hydra's basic launcher composes it, and its typed config when it is valid."""
        from aetrain.cli.errors import describe
        from aetrain.cli.schema import to_config

        assert self.config is not None and self.hydra_context is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config):
            config.hydra.job.id = num
            config.hydra.job.num = num
        HydraConfig.instance().set_config(config)
        run_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))) / str(OmegaConf.select(config,
                                                                                                "hydra.sweep.subdir"))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(run_dir)
        job = Job(num, overrides, config, Path(config.hydra.runtime.output_dir))
        try:
            job.typed = to_config(job.task)
        except Exception as e:  # noqa: BLE001 - the normal path reports it as this job's failure
            job.why_alone = f"its config is refused ({describe(e)})"
        return job

    # --- a job alone ---------------------------------------------------------------------------------------------

    def _alone(self, job: Job) -> None:
        """Hydra's run_job with aetrain's task function, as the basic launcher runs a job (continued from its
        last.pt, or not trained again when it finished, with hydra.launcher.resume=true)."""
        from aetrain.cli import sweep
        from aetrain.cli.overrides import hydra_quoted
        from aetrain.rundir import CONTINUE, FINISHED, START, prepare_resume

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        config = job.config
        what = prepare_resume(Path(str(self.config.hydra.sweep.dir)), job.run_dir) if self.resume else START
        if what == FINISHED:
            job.result = self._kept(job)
            return
        if what == CONTINUE:
            config = self._compose(job.num, [*job.overrides, f"trainer.resume={hydra_quoted(str(job.run_dir))}"]).config
        log.info("\t#%d : %s", job.num, " ".join(filter_overrides(job.overrides)))
        try:
            job.result = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=config,
                                 job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        except sweep.Stopped as stop:  # the sweep stops here: say how to continue it, not just this job
            raise sweep.Stopped(self._stopped(stop.error)) from None
        finally:
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

    def _kept(self, job: Job) -> JobReturn:
        """A finished job's JobReturn, from its run dir (a resumed sweep does not train it again)."""
        from aetrain.rundir import read_summary

        log.info("job %d finished before: kept", job.num)
        best = read_summary(job.run_dir).get("best_val_loss")
        return self._returned(job, float(best) if isinstance(best, (int, float)) else None)

    def _returned(self, job: Job, value: float | None) -> JobReturn:
        ret = JobReturn()
        ret.cfg, ret.overrides, ret.working_dir, ret.task_name = job.task, list(job.overrides), os.getcwd(), "train"
        ret.hydra_cfg = OmegaConf.create({"hydra": OmegaConf.to_container(job.config.hydra)})
        ret.return_value = value
        ret.status = JobStatus.COMPLETED  # a failed job is recorded in its run dir; sweepers get None (a failed trial)
        return ret

    # --- a group --------------------------------------------------------------------------------------------------

    def _group(self, jobs: list[Job]) -> None:
        """Train `jobs` as one fused group; each gets its JobReturn (None for a job that failed)."""
        from aetrain.cli import sweep
        from aetrain.commands.train import RecordInvocation, record_job_failure
        from aetrain.errors import AetrainError, Interrupted
        from aetrain.fused import logs, train_group
        from aetrain.rundir import RunDir

        assert self.config is not None and self.hydra_context is not None
        name = f"{jobs[0].num}"  # the group's name: its first job's number
        HydraConfig.instance().set_config(jobs[0].config)  # the job logging's file: each member's, below
        configure_log(jobs[0].config.hydra.job_logging, jobs[0].config.hydra.verbose)
        callbacks = [[RecordInvocation(RunDir(j.run_dir, key="hydra.sweep.dir"), j.invocation)] for j in jobs]
        for j in jobs:
            self.hydra_context.callbacks.on_job_start(config=j.config, task_function=self.task_function)
        try:
            with logs.routed([j.run_dir for j in jobs], [str(j.num) for j in jobs]) as context:
                try:
                    results = train_group([j.typed for j in jobs], [j.run_dir for j in jobs], callbacks=callbacks,
                                          group=name, context=context, resume=self.resume)
                except Interrupted as e:
                    raise sweep.Stopped(self._stopped(e)) from None
                except AetrainError as e:  # set-up the jobs share (their data): nothing written; each says it alone
                    log.info("fused group %s cannot start (%s): its jobs train alone", name, e)
                    results = None
                except Exception as e:  # noqa: BLE001 - a bug: each job fails, recorded with its traceback
                    for k, j in enumerate(jobs):
                        with context(k):
                            record_job_failure(e, RunDir(j.run_dir, key="hydra.sweep.dir"), j.invocation, j.num)
                    results = []
        finally:
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        if results is None:
            for j in jobs:
                j.why_alone = "its group could not start"
                self._alone(j)
            return
        for k, j in enumerate(jobs):
            result = results[k] if results else None
            if result is not None and result.error is not None and not (j.run_dir / "summary.json").exists():
                with context(k):  # failed before training: recorded as a job's failure is
                    record_job_failure(result.error, RunDir(j.run_dir, key="hydra.sweep.dir"), j.invocation, j.num)
            value = result.numbers.get("best_val_loss") if result is not None and result.ok else None
            j.result = self._returned(j, value if value is not None and math.isfinite(value) else None)
            self.hydra_context.callbacks.on_job_end(config=j.config, job_return=j.result)

    def _stopped(self, error: BaseException) -> BaseException:
        """The error that ends the sweep, with the command that continues the sweep in place of a single run's."""
        from aetrain.errors import Interrupted

        if not isinstance(error, Interrupted):
            return error
        said = str(error).split("; resume with: ")[0]  # a job alone names its own trainer.resume: the sweep's covers it
        return Interrupted(f"{said}; resume the sweep with: {self._resume_command()}", error.exit_code - 128)

    def _resume_command(self) -> str:
        """The command that continues this sweep: the one given, in this sweep's dir, with resume on."""
        assert self.config is not None
        given = [a for a in sys.argv[1:] if not a.startswith(("hydra.sweep.dir=", "hydra.launcher.resume="))]
        where = shlex.quote(f"hydra.sweep.dir={self.config.hydra.sweep.dir}")
        return " ".join(["aetrain", *map(shlex.quote, given), where, "hydra.launcher.resume=true"])
