"""Sweeps (`aetrain -m ...`), the Hydra side: the callback that claims the sweep dir and summarises the sweep at
its end, and how a user's interrupt leaves a sweep. The report itself is `aetrain.commands.sweep`.

- `SweepSummary`, the Hydra callback named in configs/train.yaml (`hydra.callbacks`): it allocates the
  default sweep dir (`<time>_2` when a sweep started in the same second took it), refuses a dir that
  already holds a sweep, and, once the sweeper is done, writes the summary and prints its table;
- `finish` hands the jobs' results to the CLI for its exit code, and summarises a sweep whose sweeper
  stopped before its end;
- `Stopped` carries a user's interrupt out of a job through Hydra's sweepers, which would otherwise
  count it as one more failed job and go on; its line ends in the command that resumes the sweep;
- `hydra.launcher.resume=true` (hydra/launcher=plain, the default: `hydra_plugins.aetrain_plain`) finishes an
  interrupted sweep in its dir: `resume_job` is each job's part, called by the task.
"""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write
from omegaconf.errors import OmegaConfBaseException

from aetrain.cli.errors import exit_with
from aetrain.cli.overrides import given, hydra_quoted, override_key
from aetrain.commands.sweep import JobResult, claim, refuse_resume, summarize, table, write_report_page
from aetrain.errors import AetrainError, ConfigError, Interrupted
from aetrain.rundir import RunDir, prepare_resume

PLAIN = "hydra_plugins.aetrain_plain.plain_launcher.PlainLauncher"  # the launcher that takes hydra.launcher.resume


class Stopped(BaseException):
    """A job was interrupted (Ctrl-C, SIGTERM): the whole sweep stops.

    A BaseException, so that Hydra's job runner and sweepers, which catch Exception, let it
    through instead of recording one more failed job and starting the next. Its `error` says, in
    place of the job's own resume command, the command that resumes the whole sweep.
    """

    def __init__(self, error: Interrupted) -> None:
        super().__init__(str(error))
        self.error = error
        command = resume_command()
        if command is not None:
            said = str(error).split("; resume with: ")[0]
            self.error = Interrupted(f"{said}; resume the sweep with: {command}", error.exit_code - 128,
                                     reported=getattr(error, "reported", False))


def resume_command() -> str | None:
    """The command that finishes the sweep under way: the one given, in its dir, with hydra.launcher.resume=true;
    None when its launcher cannot resume (joblib, SLURM) or no sweep is under way."""
    if _current.dir is None or not _current.resumable:
        return None
    given = [a for a in sys.argv[1:] if override_key(a) not in ("hydra.sweep.dir", "hydra.launcher.resume")]
    return " ".join(["aetrain", *map(shlex.quote, given), shlex.quote(f"hydra.sweep.dir={_current.dir}"),
                     "hydra.launcher.resume=true"])


@dataclass
class _Sweep:
    """The multirun this process is running: its dir once it starts, its results once summarised."""

    dir: Path | None = None
    results: list[JobResult] | None = None
    report: bool = True  # outputs.report: report.html after the summary
    resumable: bool = False  # its launcher takes hydra.launcher.resume (this module's BasicLauncher)


_current = _Sweep()


def _summarize(sweep_dir: Path, *, report: bool) -> list[JobResult]:
    """Write the sweep's summary (and report.html, `report`) and print its table (nothing for a sweep whose jobs
    never started)."""
    results = summarize(sweep_dir, report=False)
    if results:
        sys.stdout.write(table(results, sweep_dir, terminal=sys.stdout.isatty()))
        sys.stdout.flush()
        if report:
            page = write_report_page(sweep_dir)
            sys.stdout.write(f"report: {page}\n" if page is not None else "")
            sys.stdout.flush()
    return results


def finish() -> list[JobResult] | None:
    """The results of the multirun this process ran, or None after a single run.

    Summarises the sweep first when its end was never reached (a sweeper that stopped early,
    Ctrl-C), so the jobs that ran are still in the table. Forgets the sweep: call it once.
    """
    sweep, _current.dir, _current.results = _Sweep(_current.dir, _current.results, _current.report), None, None
    _current.resumable = False
    if sweep.dir is None:
        return None
    return sweep.results if sweep.results is not None else _summarize(sweep.dir, report=sweep.report)


class SweepSummary(Callback):
    """Hydra callback (configs/train.yaml: hydra.callbacks). Runs in the process that launched the
    sweep, whichever launcher ran the jobs."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Jobs of a second sweep would be refused by the runs already there, and the summary would
        # mix both. Hydra turns a callback's exception into a warning, hence the exits here.
        resuming = OmegaConf.select(config, "hydra.launcher.resume", default=False) is True
        try:
            _check_fused_launcher(config)  # before the dir is made or claimed, so a corrected command can use it
            _check_plugins_reach_the_jobs(config)
            if resuming and not _fused(config):  # the plain launcher's own dir, checked by BasicLauncher.launch
                _check_resumable(config)
                sweep_dir, continued = Path(config.hydra.sweep.dir), True
            else:  # hydra/launcher=fused continues its sweep through the claim
                sweep_dir = _sweep_dir(config)
                continued = claim(sweep_dir, resuming=[str(o) for o in config.hydra.overrides.task] if resuming
                                  else None)
        except (AetrainError, OmegaConfBaseException) as e:
            exit_with(e)
        if resuming and not continued:
            sys.stderr.write(f"aetrain: hydra.launcher.resume=true: hydra.sweep.dir={sweep_dir} holds no sweep to "
                             "continue; starting it\n")
        _current.dir, _current.results = sweep_dir, None
        _current.report = OmegaConf.select(config, "outputs.report", default=True) is not False
        _current.resumable = OmegaConf.select(config, "hydra.launcher._target_", default="") == PLAIN
        if "optuna" in str(OmegaConf.select(config, "hydra.sweeper._target_", default="")):
            _route_optuna_logs()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if _current.dir is not None:
            _current.results = _summarize(_current.dir, report=_current.report)


def _fused(config: DictConfig) -> bool:
    """Whether the sweep's launcher is hydra/launcher=fused."""
    from hydra_plugins.aetrain_fused.fused_launcher import FusedLauncherConf

    return OmegaConf.select(config, "hydra.launcher._target_", default=None) == FusedLauncherConf._target_


def _check_fused_launcher(config: DictConfig) -> None:
    """hydra/launcher=fused's values its schema cannot refuse (hydra.launcher.max_group=0): a ConfigError."""
    from hydra_plugins.aetrain_fused.fused_launcher import check

    if _fused(config):
        check(config.hydra.launcher)


def _check_plugins_reach_the_jobs(config: DictConfig) -> None:
    """A launcher that runs jobs in processes of its own (joblib, SLURM) hands them the config's classes by module
    name; the module of a plugin file (`plugins=[...]`) exists in this process only, so its jobs could not read
    their config: refused in one line. A package's models (entry points) are importable anywhere and go."""
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
    files = OmegaConf.select(config, "plugins", default=None)
    if files and not launcher.endswith(("BasicLauncher", "PlainLauncher", "FusedLauncher")):  # jobs in this process
        name = launcher.rpartition(".")[2]
        raise AetrainError(f"plugins={OmegaConf.to_container(files)} with the {name}: its jobs run in processes of "
                           "their own, which cannot import a plugin file; use the default launcher, or register "
                           "the models from an installed package (an entry point in group aetrain.models)")


def _sweep_dir(config: DictConfig) -> Path:
    """The sweep's dir: the one the user named, or the default (`outputs/multirun/<date>/<time>`) allocated now
    (`<time>_2` when a sweep started in the same second took it), which every job's config then names."""
    if given(list(config.hydra.overrides.hydra), "hydra.sweep.dir"):
        return Path(config.hydra.sweep.dir)
    sweep_dir = RunDir.allocate(config.hydra.sweep.dir, key="hydra.sweep.dir").path
    with read_write(config.hydra):  # the launcher composes each job's config from these overrides
        config.hydra.sweep.dir = str(sweep_dir)
        config.hydra.overrides.hydra.append(f"hydra.sweep.dir={hydra_quoted(str(sweep_dir))}")
    return sweep_dir


def _check_resumable(config: DictConfig) -> None:
    """hydra.launcher.resume=true: the sweep named by hydra.sweep.dir, and a grid (an Optuna search proposes other
    trials on every run)."""
    if not given(list(config.hydra.overrides.hydra), "hydra.sweep.dir"):
        raise ConfigError("hydra.launcher.resume=true finishes an interrupted sweep in its dir: name it with "
                          "hydra.sweep.dir=<the sweep's dir>")
    if "optuna" in str(OmegaConf.select(config, "hydra.sweeper._target_", default="")):
        raise ConfigError("hydra.launcher.resume=true resumes a grid sweep; an Optuna search proposes new trials on "
                          "every run (keep its study in hydra.sweeper.storage to continue a search)")
    refuse_resume(Path(config.hydra.sweep.dir), list(config.hydra.overrides.task))  # before Hydra writes there


def resume_job(hc: Any, run_dir: Path) -> str | None:
    """In a job of a sweep resumed with hydra.launcher.resume=true (`hc`: its Hydra config), what becomes of it
    (`aetrain.rundir.prepare_resume`, as under hydra/launcher=fused); None in any other job."""
    if OmegaConf.select(hc, "launcher.resume", default=False) is not True:
        return None
    return prepare_resume(Path(hc.sweep.dir), run_dir)


def _route_optuna_logs() -> None:
    """Send Optuna's messages through Hydra's console handler: Optuna's own one colours them even off
    a terminal. Optuna imports alembic, which announces its plugins at INFO level: quiet."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
