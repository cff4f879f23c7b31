"""User-facing errors.

Anything a user can cause by what they type or point at raises an `AetrainError`. The CLI prints
its message as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class AetrainError(Exception):
    """A problem the user can fix; the message names the key and what is allowed."""

    exit_code = 2  # the CLI's exit status: 2 = the command itself was wrong


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

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for "ended by signal N"


class WriteError(AetrainError):
    """A file of the run could not be written (a full disk, a file size limit, a read-only dir): the run stopped."""

    exit_code = 1  # the command was fine; the run failed

    @classmethod
    def of(cls, error: OSError, context: str = "") -> "WriteError":
        """`could not write <file>: <reason><context>`, naming the file written, not the temp file of an atomic write."""
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
