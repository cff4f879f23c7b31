"""User-facing errors.

Anything a user can cause by what they type or point at raises an `AetrainError`. Nothing below
the CLI exits the process: the CLI alone turns an `AetrainError` into its one line and its exit
code (`exit_code`); anything else is a bug and keeps its traceback.
"""


class AetrainError(Exception):
    """A problem the user can fix; the message names the key and what is allowed."""

    exit_code = 2  # the CLI's exit status: 2 = the command itself was wrong
    label = "error"  # the CLI's line reads `aetrain: <label>: <message>`; "" for an outcome that is no error
    reported = False  # True: already said (by the processes of a data-parallel run): the CLI adds no line


class ConfigError(AetrainError):
    """A config value is out of range, of the wrong kind, or does not fit the data."""


class DataError(AetrainError):
    """A dataset is missing, unreadable, or of the wrong shape."""


class CheckpointError(AetrainError):
    """A checkpoint is missing, damaged, unsafe, or does not match the config."""


class DivergenceError(AetrainError):
    """Training produced a non-finite loss and the run was stopped."""

    exit_code = 1  # the command was fine; the run failed


class Interrupted(AetrainError):
    """SIGINT or SIGTERM stopped the run after it saved a checkpoint to resume from."""

    label = ""  # `aetrain: interrupted by SIGINT ...`: what the user asked for, not an error

    def __init__(self, message: str, signum: int, *, reported: bool = False) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention for "ended by signal N"
        self.reported = reported


class WriteError(AetrainError):
    """A file of the run could not be written (a full disk, a file size limit, a read-only dir): the run stopped."""

    exit_code = 1  # the command was fine; the run failed

    @classmethod
    def of(cls, error: OSError, context: str = "") -> "WriteError":
        """`could not write <file>: <reason><context>`, naming the file written, not the temp file of an atomic
        write."""
        name = str(error.filename) if error.filename is not None else "a file of the run"
        folder, sep, base = name.rpartition("/")
        if base.startswith(".") and base.endswith(".tmp"):  # aetrain.atomic.write_atomic writes .<name>.tmp first
            name = f"{folder}{sep}{base[1:-4]}"
        return cls(f"could not write {name}: {error.strerror or error}{context}")


class ReplicaMismatch(AetrainError):
    """Data-parallel processes that must hold the same model do not (the replica check)."""

    exit_code = 1


class ProcessLost(AetrainError):
    """Another process of a data-parallel run died, hung, or could not be reached."""

    exit_code = 1


class ProcessesFailed(AetrainError):
    """A process of a data-parallel run failed: another process could not start (its error, as that process
    reported it), or processes aetrain launched ended with an error or a signal (`exit_codes` by rank; negative:
    ended by that signal)."""

    def __init__(self, message: str, exit_code: int, *, exit_codes: dict[int, int] | None = None,
                 reported: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.exit_codes = exit_codes or {}
        self.reported = reported


def one_line(error: BaseException) -> str:
    """An error's message as one line (its lines joined), or its type's name when it has none."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else type(error).__name__
