"""`aetrain [train]` and `aetrain -m`: the Hydra app; and the commands that train once into a dir of their own
(`aetrain lr_find`, `run_composed`). Hydra composes the config; the command's function (`train`: each job,
`aetrain.commands.train.run_job`) trains it. What is here is Hydra glue and the command line:

- every user error (unknown group choice or key, wrong type, bad value, missing data, unusable
  checkpoint) becomes one line on stderr and its exit code, with no traceback (Hydra's reporter and
  argument parser are wrapped: flags may come after overrides);
- the default run dir (`outputs/<date>/<time>`) is allocated (`RunDir.allocate`: `<time>_2` when a run
  started in the same second took it) once the command line has composed, by a Hydra callback;
- Hydra's `.hydra/` files are handed to the run as text (`Invocation`), which records them once the
  run is known to be valid, so a bad command never overwrites the files of an existing run
  (hence `hydra.output_subdir: null`);
- `trainer.resume=RUN` becomes a continuation of RUN, in its dir, with its overrides (`overrides`);
- in a process a launcher started, ranks other than 0 get a scratch dir for Hydra's own, and a failure
  ends the process with `aetrain.launch.leave`; a sweep under a launcher is refused.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import typing
from pathlib import Path
from typing import Any

import hydra
import hydra._internal.utils as hydra_utils  # Hydra is pinned >=1.3,<1.4: its reporter and parser are patched below
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from aetrain import launch
from aetrain.cli import sweep
from aetrain.cli.errors import EXIT_JOB_FAILED, error_line, exit_with, usage_error
from aetrain.cli.overrides import (
    MULTIRUN,
    check_overrides,
    given,
    hydra_quoted,
    override_key,
    plugin_arguments,
    quote_paths,
    resume_arguments,
)
from aetrain.cli.schema import register_configs, to_config
from aetrain.commands import Command
from aetrain.config import validate
from aetrain.errors import AetrainError, ConfigError, Interrupted
from aetrain.rundir import CONTINUE, FINISHED, Invocation, RunDir, cannot_create

_allocated: list[RunDir] = []  # the default run dirs this process allocated: released on a Ctrl-C during start-up


class DefaultRunDir(Callback):
    """Hydra callback (configs/train.yaml: hydra.callbacks): allocates the default run dir of a single run once
    the command line has composed, and hands it to Hydra's job runner. A dir the user named is used as named."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if given(list(config.hydra.overrides.hydra), "hydra.run.dir"):
            return
        try:
            run_dir = RunDir.allocate(config.hydra.run.dir)
        except (AetrainError, OmegaConfBaseException) as ex:
            exit_with(ex)  # Hydra turns a callback's exception into a warning
        _allocated.append(run_dir)
        with read_write(config.hydra.run):
            config.hydra.run.dir = str(run_dir.path)


def _task(cfg: DictConfig) -> float | None:
    """Hydra's job: the composed config to `run_job`; what stops it, to one line and an exit code. A single run's
    config is checked first, and the start-up line printed, before torch is imported (seconds, on a busy machine
    tens of them); a sweep job's config errors are the job's own (recorded, the sweep goes on)."""
    hc = HydraConfig.get()
    sweep_job = hc.mode == RunMode.MULTIRUN
    out_dir = Path(hc.runtime.output_dir)
    run_dir = next((d for d in _allocated if d.path.resolve() == out_dir.resolve()), None) or RunDir(out_dir)
    relaunch = ["train", *hc.overrides.task, f"hydra.run.dir={hydra_quoted(str(out_dir))}",
                *([f"hydra.job.num={hc.job.num}"] if sweep_job else [])]  # the job's number: the sweep's table
    config: Any = lambda: to_config(cfg)  # noqa: E731
    resumed = sweep.resume_job(hc, out_dir) if sweep_job else None  # hydra.launcher.resume=true: kept, continued...
    if resumed == FINISHED:  # its result stands: not trained again, its dir not touched
        best = run_dir.summary().get("best_val_loss")
        said = f" (best val/loss {best:.5g})" if isinstance(best, float) else ""
        sys.stdout.write(f"job {hc.job.num} finished before: kept{said}\n")
        return float(best) if isinstance(best, (int, float)) else None
    if resumed == CONTINUE:
        config = _continued(config, out_dir)
    if not sweep_job:
        try:
            config = config()
            validate(config)
        except AetrainError as ex:
            run_dir.release()
            _fail(ex)
        if not launch.launched():  # the processes aetrain starts itself say nothing more than rank 0's header
            _say_starting(config, run_dir)
    from aetrain.commands import train  # torch: seconds to import

    try:
        return train.run_job(config, run_dir, invocation=_invocation(cfg, hc),
                             job=hc.job.num if sweep_job else None, relaunch=relaunch)
    except Interrupted as ex:
        if sweep_job:
            raise sweep.Stopped(ex) from ex  # through Hydra's sweeper, which would count it as one failed job
        _fail(ex)
    except AetrainError as ex:
        _fail(ex)


def _continued(make: Any, run_dir: Path) -> Any:
    """A sweep job's config made to continue the job's run from its dir (its last.pt), as trainer.resume would."""

    def config() -> Any:
        made = make()
        made.trainer.resume = str(run_dir)
        return made

    return config


def _say_starting(config: Any, run_dir: RunDir) -> None:
    """The first line of a run, as soon as its config is known to be valid: on the console only (its train.log may
    not be written before the run dir is known to be free), since the header follows once torch, the data and the
    model are loaded."""
    epochs = config.trainer.max_epochs
    sys.stdout.write(f"aetrain: starting {config.model.name} on {config.data.name}, {epochs} epoch"
                     f"{'' if epochs == 1 else 's'}, in {run_dir.path}: loading torch, the data and the model\n")
    sys.stdout.flush()


def _invocation(cfg: DictConfig, hc: Any) -> Invocation:
    """What this job runs, as the text of its .hydra/ files."""
    return Invocation(OmegaConf.to_yaml(cfg), tuple(hc.overrides.task),
                      OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(hc)})))


def _fail(ex: AetrainError) -> typing.NoReturn:
    """Say why the run stopped and exit: here rather than raising (Hydra would add its own lines around it);
    in a process a launcher started, at once (`aetrain.launch.leave`)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise ex  # a user who asked for the traceback behind an error
    if not launch.launched():
        exit_with(ex)
    rank = launch.env_rank()
    # not what every process raised alike: rank 0 says that once
    launch.leave(ex.exit_code, error_line(ex, f"rank {rank}: " if rank else "") if launch.reported_here(ex) else None)


def _install_one_line_errors() -> None:
    """Wrap Hydra's error reporter: user errors become one line and exit code 2; bugs keep tracebacks.

    Hydra (>=1.3,<1.4, pinned) prints composition errors over many lines; its reporter is the one
    place every entry (run, multirun, --cfg, --help) passes through.
    """
    report = hydra_utils.run_and_report
    if getattr(report, "aetrain", False):
        return

    def run_and_report(func: Any) -> Any:
        try:
            return func()
        except (AetrainError, HydraException, OmegaConfBaseException) as ex:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            exit_with(ex)
        except OSError as ex:  # what reaches here from Hydra's own code: making the run dir, opening train.log
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            exit_with(ConfigError(cannot_create(ex, "hydra.run.dir")))
        except Exception as ex:
            results = sweep.finish()  # the jobs a sweeper ran keep their summary, whatever stopped it
            if results and not any(r.ok for r in results) and os.environ.get("HYDRA_FULL_ERROR") != "1":
                # Optuna gives up with "No trials are completed yet": the table above says why
                sys.stderr.write(f"aetrain: every job failed; the sweeper stopped: {type(ex).__name__}: {ex}\n")
                sys.exit(EXIT_JOB_FAILED)

            error = ex  # `ex` is unbound once the except block ends

            def reraise() -> typing.NoReturn:
                raise error

            return report(reraise)  # Hydra's traceback printer, without running `func` a second time

    run_and_report.aetrain = True  # type: ignore[attr-defined]
    hydra_utils.run_and_report = run_and_report
    importlib.import_module("hydra.main").get_args_parser = _args_parser  # the module; `hydra.main` is its decorator


def _args_parser() -> argparse.ArgumentParser:
    """Hydra's command-line parser, taking flags anywhere and reporting mistakes in one line.

    `aetrain model=conv_ae -m optimizer.lr=1e-3,3e-4` is how people type; Hydra's parser wants
    every flag before the first override and answers otherwise with its whole usage text.
    """
    parser = hydra_utils.get_args_parser()

    def error(message: str) -> typing.NoReturn:
        usage_error(message)

    def parse(args: list[str] | None = None, namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed = parser.parse_intermixed_args(args, namespace)
        modes = [parsed.run, parsed.multirun, parsed.cfg is not None, parsed.info is not None, parsed.shell_completion]
        if sum(modes) > 1:  # Hydra checks this later, with a ValueError and a traceback
            error("use one of -m/--multirun, --cfg, --info at a time")
        return parsed

    parser.error = error  # type: ignore[method-assign]
    parser.parse_args = parse  # type: ignore[method-assign]
    return parser


@hydra.main(config_path="pkg://aetrain.configs", config_name="train", version_base="1.3")
def _app(cfg: DictConfig) -> float | None:
    return _task(cfg)


def main(args: list[str]) -> None:
    """`aetrain [train] [overrides...]`, `aetrain -m ...`: the Hydra app."""
    from hydra_plugins.aetrain_fused.fused_launcher import register as register_fused
    from hydra_plugins.aetrain_plain.plain_launcher import register as register_plain

    register_plain()  # hydra/launcher=plain, the default, and hydra/launcher=fused: known to Hydra under any
    register_fused()  # install, editable included
    _install_one_line_errors()
    try:
        check_overrides(args)
        args = plugin_arguments(resume_arguments(quote_paths(args)))
        args, scratch = launched_process_arguments(args)
    except AetrainError as ex:
        exit_with(ex)
    register_configs()  # the models plugins registered too
    sys.argv = [sys.argv[0], *args]
    try:
        _app()
    except sweep.Stopped as stop:  # a job was interrupted: the sweep ends here, with its summary
        sweep.finish()
        exit_with(stop.error, quiet_if_reported=False)
    except KeyboardInterrupt:  # not handled by a run: during start-up, or a second Ctrl-C
        for run_dir in _allocated:
            run_dir.release()  # a default run dir allocated before the run began
        sweep.finish()
        raise
    except BaseException:
        sweep.finish()  # a sweep that ended early (Ctrl-C, a sweeper's error) still gets its summary
        raise
    finally:
        _allocated.clear()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    results = sweep.finish()  # None after a single run
    if results and not all(r.ok for r in results):
        sys.exit(EXIT_JOB_FAILED)


def launched_process_arguments(args: list[str]) -> tuple[list[str], Path | None]:
    """In a process started by a launcher (torchrun): refuse a sweep, and give ranks other than 0 a
    scratch dir for Hydra's run dir (returned, to remove at the end), so that only rank 0 makes the
    run dir: each process would otherwise resolve its own `outputs/<date>/<time>`."""
    if not launch.launched():
        return args, None
    if MULTIRUN & set(args):
        raise AetrainError("-m under a launcher: every process would run the whole sweep; let each job start its "
                           "own processes instead: aetrain -m trainer.devices=N ...")
    if launch.env_rank() == 0:
        return args, None
    scratch = Path(tempfile.mkdtemp(prefix=f"aetrain-rank{launch.env_rank()}-"))
    return [*(a for a in args if override_key(a) != "hydra.run.dir"), f"hydra.run.dir={scratch}"], scratch


def run_composed(command: Command, args: list[str]) -> None:
    """`aetrain <command> [overrides] [<command>.<key>=value ...]` of a command that takes the training config
    composed once (`aetrain lr_find`): its own keys checked, the config composed and checked, then its run dir:
    `hydra.run.dir`, or `outputs/<command>/<date>/<time>` allocated (`_2` when another took it), refused when it
    holds a run, claimed while the command runs. A rejected command leaves no dir behind."""
    from hydra.errors import HydraException

    from aetrain.cli.command import console_logging, parse
    from aetrain.cli.schema import compose_training
    from aetrain.config import validate_command

    positional = [a for a in args if "=" not in a]
    if positional:
        usage_error(f"aetrain {command.name} takes overrides (key=value); '{positional[0]}' is not one", command.name)
    own = [a for a in args if a.startswith(f"{command.name}.")]
    overrides = [a for a in args if a not in own]
    default = not given(overrides, "hydra.run.dir")
    if default:  # quoted: the override grammar takes no nested ${}
        overrides.append(f"hydra.run.dir='outputs/{command.name}/${{now:%Y-%m-%d}}/${{now:%H-%M-%S}}'")
    run_dir: RunDir | None = None
    try:
        section = parse(command.name, own, {command.name: command.config()}, own=command.name).sections[command.name]
        validate_command(command.name, section)  # before the default dir is made
        check_overrides(overrides)
        overrides = plugin_arguments(overrides)
        composed = compose_training(overrides, hydra=True)
        path = Path(composed.hydra.run.dir)
        with open_dict(composed):
            del composed["hydra"]
        config = to_config(composed)
        run_dir = RunDir.allocate(path) if default else RunDir(path)
        run_dir.refuse_taken(what=f"a run or {command.makes}", resumable=False)
        with console_logging(), run_dir.claimed():  # a second command (or a run) into this dir meanwhile is refused
            command.function(config, section, run_dir, Invocation(OmegaConf.to_yaml(composed), tuple(args)))
    except (AetrainError, HydraException, OmegaConfBaseException) as ex:
        if run_dir is not None:
            run_dir.release()  # the dir, when nothing was written into it
        exit_with(ex)
