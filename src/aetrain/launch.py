"""The process lifecycle of a run: what a launcher told this process, and how aetrain starts, joins and leaves
the processes of a data-parallel run. One home for each step:

- `launched()`, `env_rank()`: whether a launcher (torchrun, aetrain's own, a SLURM job's tasks) started
  this process, and as which rank;
- `processes_to_launch(trainer)`: how many processes `aetrain` itself starts for `trainer.devices`;
- `launch(args, processes, run_dir)`: start `python -m aetrain *args` in that many local processes
  through torch's elastic launcher (what `torchrun --standalone` runs) and wait for them; a failure is
  `ProcessesFailed`, a signal `Interrupted` (both `reported` when the processes said why themselves);
- `join_job_tasks()`: in a SLURM job of several tasks, each task is one process of the run;
- `quiet_secondary_process()`: ranks other than 0 keep their log and warnings off the console and out of
  train.log;
- `leave(exit_code, line)`: end a launched process that failed or was stopped, now;
- `everywhere(error)`, `reported_here(error)`: which process prints an error's line.

Torch-free at import (torch is imported inside the functions that start processes), so the command
line can ask before it imports torch. Typed errors only: the CLI decides what is printed and how the
process exits; `leave` is the one exit, for a process a launcher started.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
import warnings
from typing import TYPE_CHECKING, NoReturn

from aetrain.errors import ConfigError, DivergenceError, Interrupted, ProcessesFailed, ReplicaMismatch

if TYPE_CHECKING:
    from aetrain.config import TrainerConfig
    from aetrain.rundir import RunDir


def launched() -> bool:
    """True in a process started by a launcher that set the torch.distributed environment (RANK, WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    """This process's rank as its launcher set it; 0 when it was not launched as one of several."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def device_kind(name: str) -> str:
    """The kind of device `trainer.device` asks for: cuda, cpu or mps (auto is cuda when there is one)."""
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name.split(":", 1)[0]


def processes_to_launch(cfg: TrainerConfig) -> int:
    """How many processes `aetrain` itself should start for this config: 1 = train in this process.

    Under a launcher (torchrun, SLURM tasks) the launcher's processes are the run: 1 here."""
    if launched() or cfg.devices == 1:
        return 1
    import torch

    if cfg.devices == -1:
        if device_kind(cfg.device) != "cuda" or not torch.cuda.is_available():
            raise ConfigError("trainer.devices=-1 starts one process per visible GPU, and this run has none "
                              f"(trainer.device={cfg.device}); give a count instead, e.g. trainer.devices=2")
        return torch.cuda.device_count()
    if device_kind(cfg.device) == "cuda" and torch.cuda.is_available() and cfg.devices > torch.cuda.device_count():
        raise ConfigError(f"trainer.devices={cfg.devices}: this machine has {torch.cuda.device_count()} CUDA "
                          "device(s), one per process")
    return cfg.devices


def launch(args: list[str], processes: int, run_dir: RunDir) -> None:
    """Run `python -m aetrain *args` in `processes` local processes with torch's elastic launcher, as
    `torchrun --standalone --nproc_per_node=N -m aetrain *args` does, and wait for them. They train into
    `run_dir` (`args` says so) and say what happens there: rank 0's console and run dir, every error once.

    A failed process makes the launcher stop the others (SIGTERM, SIGKILL after 30 s): ProcessesFailed, with
    the error rank 0 recorded in summary.json (else how each process ended), `reported` when a process that
    ended on its own printed why. SIGINT/SIGTERM sent to this process is passed on to every process (which
    save and stop at the same step): Interrupted once they have ended, `reported` (rank 0 said where it
    stopped and how to resume). A second signal before then makes the launcher send them a second SIGTERM,
    which ends them at once. Each process gets cores / N threads unless OMP_NUM_THREADS is set. The
    launcher's own log lines are kept off the console. A dir left empty is released.
    """
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=f"aetrain-{uuid.uuid4().hex}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # elastic leaves its own set
    logging.disable(logging.CRITICAL)
    try:
        elastic_launch(config, sys.executable)("-m", "aetrain", *args)
    except ChildFailedError as e:
        run_dir.release()
        codes = {rank: failure.exitcode for rank, failure in e.failures.items()}
        said = [c for c in codes.values() if c > 0]  # a process that ended on its own printed why
        message = _recorded_error(run_dir) or f"{_ended(codes)}; see {run_dir.path}"
        code = (codes[0] if codes.get(0, 0) > 0 else said[0]) if said else 1
        raise ProcessesFailed(message, code, exit_codes=codes, reported=bool(said)) from None
    except SignalException as e:
        run_dir.release()
        signum = int(e.sigval)
        raise Interrupted(_recorded_error(run_dir) or f"interrupted by {signal.Signals(signum).name}", signum,
                          reported=True) from None
    finally:
        logging.disable(logging.NOTSET)
        for s, handler in handlers.items():
            signal.signal(s, handler)


def _ended(codes: dict[int, int]) -> str:
    """`rank 1 ended by SIGKILL, rank 0 exited with 1`: how each failed process ended."""
    def how(code: int) -> str:
        return f"ended by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"

    return ", ".join(f"rank {rank} {how(code)}" for rank, code in sorted(codes.items()))


def _recorded_error(run_dir: RunDir) -> str | None:
    """The error the run's rank 0 recorded in summary.json (its message, without the type), or None."""
    error = run_dir.summary().get("error")
    return (error.partition(": ")[2] or error) if isinstance(error, str) and error else None


def join_job_tasks() -> None:
    """In a SLURM job (Hydra's submitit launcher) with several tasks, each task is one process of a
    data-parallel run: set the torch.distributed variables from SLURM's, as submitit derives them."""
    if "RANK" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def quiet_secondary_process() -> None:
    """Ranks other than 0: no train.log, and on the console only errors (rank 0 shows the rest)."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.ERROR)
    warnings.simplefilter("ignore")  # rank 0 shows the same warnings


def leave(exit_code: int, line: str | None = None) -> NoReturn:
    """End a process of a data-parallel run that failed or was stopped: its `line`, if it has one to say (see
    `reported_here`), and its exit code, now. Without the interpreter's shutdown: a launcher stops the remaining
    processes with SIGTERM as soon as one has ended, and once Python has begun shutting down, that signal would
    end this one as killed instead of with its code."""
    if line:
        sys.stderr.write(line)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()  # train.log
    os._exit(exit_code)


def everywhere(error: BaseException) -> BaseException:
    """Mark `error` as raised alike by every process: rank 0 alone reports it."""
    error.aetrain_everywhere = True  # type: ignore[attr-defined]
    return error


def reported_here(error: BaseException) -> bool:
    """Whether this process should print `error`'s line: every error on rank 0 or a single process; on
    the others only what is theirs alone (a lost peer, a failure of their own), never what every
    process raised alike (a stop, a divergence, a replica mismatch, a set-up error)."""
    if env_rank() == 0:
        return True
    alike = (Interrupted, DivergenceError, ReplicaMismatch)
    return not (isinstance(error, alike) or getattr(error, "aetrain_everywhere", False))

