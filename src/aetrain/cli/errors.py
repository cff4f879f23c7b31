"""One-line user errors: what every command prints when the user's input is wrong, and the exit codes."""

from __future__ import annotations

import dataclasses
import sys
import typing

from hydra.errors import MissingConfigException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from aetrain.config import CHOICES, keys_of
from aetrain.errors import AetrainError, one_line

EXIT_USER_ERROR = 2  # the command was wrong: nothing ran, nothing was written
EXIT_JOB_FAILED = 1  # the command ran and failed (a diverged run, a failed sweep job)


def unknown_key_message(key: str, schema: type, choice: str | None = None) -> str:
    """`model.channels: unknown key for model=dense_ae (a key of model=conv_ae, ...); model=dense_ae has: ...`.

    `choice`: the chosen name of the group the key is in (its schema may serve several choices)."""
    parent, _, leaf = key.rpartition(".")
    allowed = ", ".join(f.name for f in dataclasses.fields(schema))
    group = parent if parent in CHOICES else None
    if group is None:
        return f"{key}: unknown key; {parent or 'the config'} has: {allowed}"
    current = choice or next((name for name, make in CHOICES[group].items() if type(make()) is schema), None)
    chosen = f"{group}={current}" if current else group
    owners = sorted(name for name, make in CHOICES[group].items() if leaf in keys_of(make()))
    hint = f" (a key of {group}={', '.join(owners)})" if owners else ""
    return f"{key}: unknown key for {chosen}{hint}; {chosen} has: {allowed}"


def describe(ex: BaseException) -> str:
    """One line for a user error raised by Hydra, OmegaConf or aetrain."""
    if isinstance(ex, OmegaConfBaseException) and isinstance(ex.__cause__, AetrainError):  # raised by a resolver
        return describe(ex.__cause__)
    if isinstance(ex, MissingConfigException) and ex.missing_cfg_file and ex.options:
        group, _, choice = ex.missing_cfg_file.rpartition("/")
        return f"{group}={choice} is not one of: {', '.join(sorted(ex.options))}"
    cause = ex.__cause__ if isinstance(ex.__cause__, OmegaConfBaseException) else ex
    schema = getattr(cause, "object_type", None)
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and dataclasses.is_dataclass(schema):
        parent = getattr(cause, "parent_node", None)
        choice = parent.get("name") if parent is not None and hasattr(parent, "get") else None
        return unknown_key_message(cause.full_key, schema, choice if isinstance(choice, str) else None)
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None)
        msg = str(cause).strip().splitlines()[0]
        return f"{key}: {msg}" if key and key not in msg else msg
    return one_line(ex)


def error_line(ex: BaseException, prefix: str = "") -> str:
    """`ex` as the one line the user sees (after `prefix`, e.g. which process of a data-parallel run):
    `aetrain: error: <message>`, or `aetrain: <message>` for an outcome that is no error (an interrupt)."""
    label = getattr(ex, "label", "error")
    return f"aetrain: {label + ': ' if label else ''}{prefix}{describe(ex)}\n"


def exit_with(ex: BaseException, *, quiet_if_reported: bool = True) -> typing.NoReturn:
    """The one place an error becomes the process's end: its line on stderr (unless the processes of a data-parallel
    run already said it) and its exit code (2, a user error, unless the error says otherwise)."""
    if not (quiet_if_reported and getattr(ex, "reported", False)):
        sys.stderr.write(error_line(ex))
    sys.exit(getattr(ex, "exit_code", EXIT_USER_ERROR))


def usage_error(message: str, command: str = "") -> typing.NoReturn:
    """A mistake in how the command line is put together (not in a config value)."""
    sys.stderr.write(f"aetrain: error: {message} (see aetrain {command + ' ' if command else ''}--help)\n")
    sys.exit(EXIT_USER_ERROR)
