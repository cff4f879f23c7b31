"""User-facing errors.

Anything a user can cause by what they type or point at raises an `AetrainError`. The CLI prints
its message as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class AetrainError(Exception):
    """A problem the user can fix; the message names the key and what is allowed."""


class ConfigError(AetrainError):
    """A config value is out of range, of the wrong kind, or does not fit the data."""


class DataError(AetrainError):
    """A dataset is missing, unreadable, or of the wrong shape."""


class CheckpointError(AetrainError):
    """A checkpoint is missing, damaged, unsafe, or does not match the config."""


class DivergenceError(AetrainError):
    """Training produced a non-finite loss and the run was stopped."""
