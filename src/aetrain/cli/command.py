"""Parsing the command lines of the commands that take a dir: `aetrain <command> <dir> [key=value ...]`, and the one
runner of such a command (its function called from its registry entry, `aetrain.commands.COMMANDS`).

Their overrides use the training syntax on the sections a command has, and nothing else:
- `data=<choice>` swaps the data section for that dataset's defaults, and `data.<key>=<value>`
  changes one key; without either, a command uses the run's own data config (from its
  checkpoint), so `data.path=other.npy` is "the run's data, from another file";
- `<key>=<value>` or `<command>.<key>=<value>` sets a key of the command's own section.
Values are parsed as YAML (`data.classes=[0,1]`, `score.quantile=0.95`) and checked against
the typed sections: an unknown key or a wrong type is one line naming the key and what is allowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aetrain.cli.errors import describe, exit_with, unknown_key_message, usage_error
from aetrain.cli.overrides import override_key, plugin_arguments
from aetrain.commands import RUN, Command
from aetrain.config import default_choice
from aetrain.errors import AetrainError, ConfigError


@dataclasses.dataclass
class CommandLine:
    """A parsed command line: its positional arguments and its typed sections after the overrides."""

    positional: list[str]
    sections: dict[str, Any]  # section name -> dataclass instance ("data", and the command's own)
    given: set[str]  # the keys the user set, e.g. {"data.path", "score.quantile"}


def parse(command: str, args: list[str], sections: dict[str, Any], *, own: str) -> CommandLine:
    """Apply `args` to `sections` (name -> dataclass instance; `own` names the command's own section,
    whose keys may also be given without its prefix). Raises ConfigError for any bad override."""
    positional = [a for a in args if "=" not in a]
    sections = {name: dataclasses.replace(s) for name, s in sections.items()}
    given: set[str] = set()
    for arg in (a for a in args if "=" in a):
        key, _, value = arg.partition("=")
        if key in sections and key != own:  # a choice: data=mnist
            sections[key] = default_choice(key, value)
            given.add(key)
            continue
        section, _, leaf = key.partition(".")
        if section not in sections or not leaf:
            if leaf and not hasattr(sections[own], section):
                raise ConfigError(f"{key}: unknown key; aetrain {command} takes "
                                  f"{', '.join(f'{s}.<key>' for s in sections)} (or its own keys without '{own}.')")
            section, leaf = own, key  # an unprefixed key of the command's own section
        given.add(f"{section}.{leaf}")
        sections[section] = _set(sections[section], section, leaf, value)
    return CommandLine(positional, sections, given)


def _set(obj: Any, section: str, key: str, value: str) -> Any:
    node = OmegaConf.structured(obj)
    try:
        OmegaConf.set_struct(node, True)
        update = OmegaConf.from_dotlist([f"{key}={value}"])
        return OmegaConf.to_object(OmegaConf.merge(node, update))
    except OmegaConfBaseException as e:
        if "not in" in str(e) or "Key '" in str(e):
            raise ConfigError(unknown_key_message(f"{section}.{key}", type(obj))) from None
        raise ConfigError(f"{section}.{key}={value}: {describe(e)}") from None


def run_on_dir(command: Command, args: list[str]) -> None:
    """`aetrain <command> <dir> [key=value ...]` of a command that takes a dir (RUN or DIR): parse the command
    line, call the command's function as its entry says, and end a user error in one line and its exit code."""
    try:  # plugins=[file.py]: a model of your own registered before the run's checkpoint is read
        plugin_arguments([a for a in args if override_key(a) == "plugins"])
    except AetrainError as ex:
        exit_with(ex)
    args = [a for a in args if override_key(a) != "plugins"]
    keys = [a for a in args if "=" in a]
    if keys and command.config is None:
        usage_error(f"aetrain {command.name} takes a {command.argument} and no overrides; got {keys[0]}", command.name)
    try:
        path = dir_argument(command, [a for a in args if "=" not in a])
        if command.takes == RUN:
            run_data = run_data_config(path)
            cl = parse(command.name, args, {"data": run_data, command.name: command.config()}, own=command.name)
            data = cl.sections["data"] if any(k == "data" or k.startswith("data.") for k in cl.given) else None
            if data is not None and "data.classes" not in cl.given:
                from aetrain.commands.trained import same_samples

                if not same_samples(data, run_data):  # other data is used whole: the run's classes chose the run's
                    data = dataclasses.replace(data, classes=None)
            call: tuple[Any, ...] = (path, cl.sections[command.name], data)
        elif command.config is not None:
            call = (path, parse(command.name, args, {command.name: command.config()}, own=command.name)
                    .sections[command.name])
        else:
            call = (path,)
        with console_logging():
            command.function(*call)
    except AetrainError as ex:
        exit_with(ex)


def dir_argument(command: Command, positional: list[str]) -> Path:
    """The one positional argument: a run dir or a checkpoint file, a sweep dir."""
    if len(positional) != 1:
        found = f"got {len(positional)}: {' '.join(positional)}" if positional else "got none"
        before = " before its overrides" if command.config is not None else ""
        raise ConfigError(f"aetrain {command.name} takes one {command.argument}{before}; {found}")
    return Path(positional[0])


def run_data_config(run: Path) -> Any:
    """The data section the run was trained with (from its best.pt, else last.pt), its paths as resolved then: a
    data key given on the command line replaces one of them, relative to the working directory now."""
    from aetrain.checkpoint import load, run_data
    from aetrain.rundir import BEST, LAST

    return run_data(load(run, prefer=(BEST, LAST)))


@contextlib.contextmanager
def console_logging() -> Iterator[None]:
    """aetrain's log lines on stdout, one plain line each, while a command runs."""
    logger = logging.getLogger("aetrain")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the root logger may have handlers of its own (a test's, Hydra's): no double lines
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
