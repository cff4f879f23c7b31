"""`aetrain [train]`: Hydra composes the config, this module hands it to `aetrain.commands.train.run`.

It:
- turns every user error (unknown group choice or key, wrong type, bad value, missing data,
  unusable checkpoint) into one line on stderr and exit code 2, with no traceback;
- writes Hydra's `.hydra/` files itself, once the run is known to be valid, so a bad command
  never overwrites the files of an existing run (hence `hydra.output_subdir: null`);
- records a failed sweep job instead of letting it sink the sweep (`aetrain.cli.sweep`);
- turns `trainer.resume=RUN` into a continuation of RUN: in its dir, with its overrides;
- data-parallel runs: `trainer.devices=N` starts N processes of `aetrain` itself through torch's
  elastic launcher (each sweep job too); in a process a launcher started (those, torchrun's, a
  SLURM job's tasks) it joins the process group, makes every process use rank 0's run dir, and
  keeps the other ranks' Hydra dir, train.log, console and error lines out of the way (see
  `aetrain.train.distributed`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import typing
import warnings
from pathlib import Path
from typing import Any

import hydra
import hydra._internal.utils as hydra_utils  # Hydra is pinned >=1.3,<1.4: its reporter and parser are patched below
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aetrain.config import CHOICES
from aetrain.errors import AetrainError, ConfigError, Interrupted
from aetrain.launch import env_rank, launched
from aetrain.rundir import HYDRA, RunDirTaken, claimed, own_run_dir, read_summary

from aetrain.cli import sweep
from aetrain.cli.report import EXIT_JOB_FAILED, describe, error_line, exit_with, usage_error
from aetrain.cli.schema import register_configs, to_config

log = logging.getLogger("aetrain")

SUMMARY = "train a model into a new run dir (the default command)"


def new_dir(path: str) -> str:
    """`path`, or the first of `path_2`, `path_3`, ... that does not exist yet: created here, so two runs
    started in the same second (Hydra's `${now:}` has one-second resolution) get a dir each.

    The `${aetrain.new_dir:...}` resolver of configs/train.yaml's default run and sweep dirs. Cached
    per config (and copied into a sweep's job configs by Hydra), so a run resolves its dir once.
    """
    base = Path(path)
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            candidate = base if n == 1 else base.with_name(f"{base.name}_{n}")
            try:
                candidate.mkdir()  # atomic: of two processes asking for one name, one gets it
            except FileExistsError:
                continue
            _made.append(candidate)
            return str(candidate)
    except OSError as e:
        raise ConfigError(_cannot_create(e, "hydra.run.dir=DIR (hydra.sweep.dir=DIR with -m)")) from None
    raise AssertionError("unreachable")


def _cannot_create(error: OSError, setting: str) -> str:
    reason = "a file is in the way" if isinstance(error, FileExistsError) else error.strerror
    return f"cannot create the output dir {error.filename}: {reason}; choose another with {setting}"


_made: list[Path] = []  # the dirs new_dir made in this process


def made_here(path: Path) -> bool:
    """Whether `new_dir` made `path` in this process (a default dir: remove it again if nothing was written)."""
    return any(path.resolve() == made.resolve() for made in _made)


# At import: a sweep's worker processes (joblib, submitit) resolve job configs after unpickling this module.
OmegaConf.register_new_resolver("aetrain.new_dir", new_dir, use_cache=True, replace=True)


def _task(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    world = None
    try:
        from aetrain.commands.train import run  # torch: seconds to import
        from aetrain.train import distributed

        config = to_config(cfg)
        processes = distributed.processes_to_launch(config.trainer)
        if processes > 1:
            return _launch(cfg, config, hc, out_dir, processes)  # its processes claim the run dir
        _join_job_tasks()
        interrupt = None
        if launched():  # from now until this process exits (see aetrain.train.signals)
            from aetrain.train.signals import Interrupt

            interrupt = Interrupt()
            interrupt.install()
            if env_rank() > 0:
                _quiet_secondary_process()
        world = distributed.connect(config.trainer)
        own, out_dir = out_dir, Path(world.broadcast(str(out_dir)))  # rank 0's run dir is everyone's
        if own != out_dir:
            _remove_if_empty(own)  # the default dir this process's config resolved to
        callbacks = [_hydra_files_callback(cfg, hc)] if world.is_main else []  # .hydra/ from rank 0 alone
        with claimed(out_dir) if world.is_main else contextlib.nullcontext():  # one run per dir: a second is refused
            result = run(config, out_dir, callbacks=callbacks, world=world, interrupt=interrupt)
    except KeyboardInterrupt:  # before training started (once it has, the run saves and raises Interrupted)
        _remove_if_empty(out_dir)
        raise
    except Exception as ex:
        if hc.mode == RunMode.MULTIRUN and isinstance(ex, RunDirTaken):  # the dir is another run's: record nothing
            log.error("job %s failed: %s", hc.job.num, describe(ex))
            return None
        if hc.mode == RunMode.MULTIRUN:  # one failed job must not sink the sweep, whatever the cause
            if env_rank() != 0:
                return None  # a SLURM job's other tasks: its rank 0 records the failure
            return _job_failed(cfg, hc, ex)
        if not launched():
            _remove_if_empty(out_dir)
        if not isinstance(ex, AetrainError) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # a bug, or a user who asked for the traceback behind an error
        if not launched():
            exit_with(ex)  # here rather than raising: Hydra would add its own lines around it
        _leave_launched_process(ex, out_dir)
    if world is not None:
        world.close()
    return result["best_val_loss"]


def _leave_launched_process(ex: AetrainError, out_dir: Path) -> typing.NoReturn:
    """End one process of a data-parallel run that failed or was stopped: its line, if it is this
    process's to say, and its exit code, now. Without the interpreter's shutdown: a launcher stops
    the remaining processes with SIGTERM as soon as one has ended, and once Python has begun
    shutting down, that signal would end this one as killed instead of with its code."""
    from aetrain.train import distributed

    rank = env_rank()
    if rank == 0:
        _remove_if_empty(out_dir)
    if distributed.reported_here(ex):  # not what every process raised alike: rank 0 says that once
        sys.stderr.write(error_line(ex, f"rank {rank}: " if rank else ""))
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()  # train.log
    os._exit(ex.exit_code)


def _launch(cfg: DictConfig, config: Any, hc: Any, out_dir: Path, processes: int) -> float | None:
    """`trainer.devices=N`: train in N new processes (`python -m aetrain train ...`) into this run dir.

    The processes say what happens (rank 0's console and run dir, every error once); this one
    waits, relays a Ctrl-C or SIGTERM to them, and ends with their exit code. Returns the run's
    objective (its best val/loss, from its summary.json) for a sweeper.
    """
    from aetrain.config import validate
    from aetrain.train import distributed

    validate(config)  # a config error is one line from here, before any process starts
    args = ["train", *hc.overrides.task, f"hydra.run.dir={out_dir}"]
    if hc.mode == RunMode.MULTIRUN:
        args.append(f"hydra.job.num={hc.job.num}")  # the job's number in its .hydra/, for the sweep's table
    try:
        distributed.launch(args, processes)
    except distributed.LaunchInterrupted as e:
        _remove_if_empty(out_dir)
        name = signal.Signals(e.signum).name
        if hc.mode == RunMode.MULTIRUN:
            raise sweep.Stopped(Interrupted(_recorded_error(out_dir, f"interrupted by {name}"), e.signum)) from None
        sys.exit(128 + e.signum)  # rank 0 said where it stopped and how to resume
    except distributed.LaunchFailed as e:
        _remove_if_empty(out_dir)
        codes = e.exit_codes
        said = [c for c in codes.values() if c > 0]  # a process that ended on its own printed why
        if hc.mode == RunMode.MULTIRUN:
            raise ProcessesFailed(_recorded_error(out_dir, _ended(codes)), said[0] if said else 1) from None
        if said:
            sys.exit(codes[0] if codes.get(0, 0) > 0 else said[0])
        exit_with(ProcessesFailed(f"{_ended(codes)}; see {out_dir}", 1))
    best = read_summary(out_dir).get("best_val_loss")
    return float(best) if isinstance(best, (int, float)) else None


class ProcessesFailed(AetrainError):
    """A data-parallel run that aetrain launched ended with a failed process."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _ended(codes: dict[int, int]) -> str:
    """`rank 1 ended by SIGKILL, rank 0 exited with 1`: how each failed process ended."""
    def how(code: int) -> str:
        return f"ended by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"

    return ", ".join(f"rank {rank} {how(code)}" for rank, code in sorted(codes.items()))


def _recorded_error(out_dir: Path, fallback: str) -> str:
    """The error the run's rank 0 recorded in summary.json, else `fallback`."""
    error = read_summary(out_dir).get("error")
    return error.partition(": ")[2] or error if isinstance(error, str) and error else fallback


def _join_job_tasks() -> None:
    """In a SLURM job (Hydra's submitit launcher) with several tasks, each task is one process of a
    data-parallel run: set the torch.distributed variables from SLURM's, as submitit derives them."""
    if "RANK" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def _quiet_secondary_process() -> None:
    """Ranks other than 0: no train.log, and on the console only errors (rank 0 shows the rest)."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.ERROR)
    warnings.simplefilter("ignore")  # rank 0 shows the same warnings


def _job_failed(cfg: DictConfig, hc: Any, ex: Exception) -> None:
    """Record a failed sweep job in its dir (.hydra/, summary.json, train.log). It has no objective:
    None, which the Optuna sweeper records as a failed trial (NaN would crash hydra-optuna-sweeper
    1.3 with optuna 2.x: it tells the study FAIL together with the NaN value)."""
    out_dir = Path(hc.runtime.output_dir)
    if not (out_dir / ".hydra").exists():  # failed before training: the summary still shows what was run
        _hydra_files_callback(cfg, hc).on_fit_start(None)
    error = f"{type(ex).__name__}: {describe(ex)}"
    bug = not isinstance(ex, AetrainError)
    log.error("job %s failed: %s", hc.job.num, error, exc_info=bug)  # a bug's traceback goes into train.log
    sweep.record_failure(out_dir, error)
    if isinstance(ex, Interrupted):
        raise sweep.Stopped(ex) from ex  # the user stopped the sweep, not just this job
    return None


def _hydra_files_callback(cfg: DictConfig, hc: Any) -> Any:
    """A callback that saves the composed config into `.hydra/` when training starts."""
    from aetrain.train.engine import Callback

    class HydraFiles(Callback):
        def on_fit_start(self, engine: Any) -> None:
            out = Path(hc.runtime.output_dir) / HYDRA
            if (out / "config.yaml").exists():  # a resumed run: keep the original, add this invocation's
                done = _resumes(out)
                out = out / f"resume-{int(done[-1].name[7:]) + 1 if done else 1}"
            out.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, out / "config.yaml")
            OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hc)}), out / "hydra.yaml")
            OmegaConf.save(OmegaConf.create(list(hc.overrides.task)), out / "overrides.yaml")

    return HydraFiles()


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()  # Hydra made it before the run was checked; only an empty dir goes
    except OSError:
        pass


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
            exit_with(ConfigError(_cannot_create(ex, "hydra.run.dir=DIR")))
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
    """`aetrain [train] [overrides...]`, `aetrain -m ...`, `aetrain --help`."""
    register_configs()
    from hydra_plugins.aetrain_fused.fused_launcher import register  # fused sweeps (i23): hydra/launcher=fused
    register()  # fused sweeps (i23): known to Hydra under any install, editable included
    _install_one_line_errors()
    if {"--help", "-h"} & set(args):
        from aetrain.cli.help import print_train_help

        print_train_help([a for a in args if not a.startswith("-")])
        return
    try:
        check_overrides(args)
        args = resume_arguments(quote_paths(args))
        args, scratch = launched_process_arguments(args)
    except AetrainError as ex:
        exit_with(ex)
    sys.argv = [sys.argv[0], *args]
    try:
        _app()
    except sweep.Stopped as stop:  # a job was interrupted: the sweep ends here, with its summary
        sweep.finish()
        exit_with(stop.error)
    except KeyboardInterrupt:  # not handled by a run: during start-up, or a second Ctrl-C
        for made in _made:
            _remove_if_empty(made)  # a default run dir claimed before the run began
        sweep.finish()
        raise
    except BaseException:
        sweep.finish()  # a sweep that ended early (Ctrl-C, a sweeper's error) still gets its summary
        raise
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    results = sweep.finish()  # None after a single run
    if results and not all(r.ok for r in results):
        sys.exit(EXIT_JOB_FAILED)


def launched_process_arguments(args: list[str]) -> tuple[list[str], Path | None]:
    """In a process started by a launcher (torchrun): refuse a sweep, and give ranks other than 0 a
    scratch dir for Hydra's run dir (returned, to remove at the end), so that only rank 0 makes the
    run dir: each process would otherwise resolve its own `outputs/<date>/<time>`."""
    if not launched():
        return args, None
    if {"-m", "--multirun"} & set(args):
        raise AetrainError("-m under a launcher: every process would run the whole sweep; let each job start its "
                           "own processes instead: aetrain -m trainer.devices=N ...")
    if env_rank() == 0:
        return args, None
    scratch = Path(tempfile.mkdtemp(prefix=f"aetrain-rank{env_rank()}-"))
    return [*(a for a in args if _override_key(a) != "hydra.run.dir"), f"hydra.run.dir={scratch}"], scratch


def check_overrides(args: list[str]) -> None:
    """Mistakes Hydra would accept or answer with a traceback: `model=null`, `optimizer.name=sgd`."""
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if not sep:
            continue
        multirun_or_show = {"-m", "--multirun", "-c", "--cfg", "-i", "--info"} & set(args)
        if key == "hparams_search" and value != "null" and not multirun_or_show:
            raise AetrainError(f"hparams_search={value} is a search: run it as a multirun, aetrain -m "
                               f"hparams_search={value} (without -m it would train once and search nothing)")
        if key in CHOICES and value == "null":
            raise AetrainError(f"{key}=null: a run needs a {key}; choose one of: {', '.join(sorted(CHOICES[key]))}")
        group, _, leaf = key.partition(".")
        if group in CHOICES and leaf == "name":
            raise AetrainError(f"{key} is set by choosing the {group}: use {group}=<one of: "
                               f"{', '.join(sorted(CHOICES[group]))}> (the keys of each choice differ)")


def resume_arguments(args: list[str]) -> list[str]:
    """`trainer.resume=X` continues X's run: in X's run dir, composed from the overrides that run was
    started (or last resumed) with. Arguments given now win over saved ones; `hydra.run.dir=...`
    given now sends the continuation elsewhere. A checkpoint that is not in its own run dir
    (aetrain.rundir.own_run_dir) continues in a new run dir, from this command line alone: the folder
    it is kept in is never written to. Other command lines pass through unchanged."""
    at = max((i for i, a in enumerate(args) if a.startswith("trainer.resume=")), default=None)
    if at is None or args[at] == "trainer.resume=null" or {"-m", "--multirun"} & set(args):
        return args
    resume = _typed_path(args[at].partition("=")[2])
    if not resume:
        return args
    args = [*args[:at], f"trainer.resume={hydra_quoted(resume)}", *args[at + 1 :]]  # a,b or ünï 日本 as one path
    from aetrain.checkpoint import load  # torch: only for a resume

    run_dir = own_run_dir(resume, load(resume).get("run_id"))
    if run_dir is None:  # kept outside its run dir: a new run dir, composed from this command line
        return args
    saved_files = [p / "overrides.yaml" for p in _resumes(run_dir / HYDRA) if (p / "overrides.yaml").is_file()]
    saved_file = (saved_files or [run_dir / HYDRA / "overrides.yaml"])[-1]
    given = {_override_key(a) for a in args}
    saved = _read_overrides(saved_file) if saved_file.is_file() else []
    kept = [o for o in saved if _override_key(o) not in given and not _override_key(o).startswith("hydra.")
            and _override_key(o) != "trainer.resume"]
    here = [] if "hydra.run.dir" in given else [f"hydra.run.dir={hydra_quoted(str(run_dir))}"]
    return [*kept, *args, *here]


PATH_KEYS = ("hydra.run.dir", "trainer.resume", "trainer.init_from", "data.path", "data.root")


def quote_paths(args: list[str]) -> list[str]:
    """Paths as typed (`hydra.run.dir=ünï 日本`, `data.path=a,b.npy`), quoted for Hydra, whose grammar reads
    them as a sweep or refuses them. Not in a multirun, where `data.path=a.npy,b.npy` is a sweep."""
    if {"-m", "--multirun"} & set(args):
        return args
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        read = _read_by_hydra(value) if sep and key in PATH_KEYS else ""
        out.append(arg if isinstance(read, str) or (read is None and value == "null") else
                   f"{key}={hydra_quoted(value)}")
    return out


def _read_by_hydra(text: str) -> Any:
    """What Hydra's override grammar makes of `text` given after `key=`; None also when its lexer refuses it."""
    try:
        return OverridesParser.create().parse_override(f"path={text}").value()
    except Exception:  # a HydraException or a lexer error: Hydra would refuse the command line
        return None


def _typed_path(text: str) -> str:
    """A path given after `key=`, quoted for Hydra (`'a,b'`) or as the shell passed it (`a,b`, `ünï 日本`,
    which Hydra's grammar reads as a sweep or refuses)."""
    value = _read_by_hydra(text)
    return value if isinstance(value, str) else text


def hydra_quoted(value: str) -> str:
    """`value` as one quoted string of Hydra's override grammar, read back exactly: in a quoted string Hydra
    halves the backslashes before a quote (and before the closing one), and OmegaConf resolves `${...}`."""
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return "'" + body.replace("${", "\\${") + "'"


def _resumes(hydra_dir: Path) -> list[Path]:
    """A run's `.hydra/resume-N/` folders in order of N; folders named otherwise (a user's `resume-old/`)
    are not among them."""
    found = [(int(p.name[7:]), p) for p in hydra_dir.glob("resume-*") if p.is_dir() and p.name[7:].isdigit()]
    return [p for _, p in sorted(found)]


def _read_overrides(path: Path) -> list[str]:
    """The overrides a run was started (or last resumed) with, as Hydra saved them: a YAML list of strings."""
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path))
    except Exception:  # YAML's and OmegaConf's many parse errors: the file is damaged, whichever it is
        loaded = None
    if not isinstance(loaded, list) or not all(isinstance(o, str) for o in loaded):
        raise ConfigError(f"{path}: not a list of overrides (key=value lines, as Hydra writes them); a resume "
                          "composes the run's config from it: repair it, or delete it and give the run's "
                          "overrides on the command line")
    return loaded


def _override_key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")

