"""Command lines of the commands that work on a trained run: `aetrain <command> <run dir> [key=value ...]`.

Their overrides use the training syntax on the sections a command has, and nothing else:
- `data=<choice>` swaps the data section for that dataset's defaults, and `data.<key>=<value>`
  changes one key; without either, a command uses the run's own data config (from its
  checkpoint), so `data.path=other.npy` is "the run's data, from another file";
- `<key>=<value>` or `<command>.<key>=<value>` sets a key of the command's own section.
Values are parsed as YAML (`data.classes=[0,1]`, `score.quantile=0.95`) and checked against
the typed sections: an unknown key or a wrong type is one line naming the key and what is allowed.

`run_command` is the whole command line of such a command: `--help`, the run dir, the run's data
config as the starting point of `data.*`, the overrides, console logging, and one-line errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aetrain.config import default_choice
from aetrain.errors import AetrainError, ConfigError

from aetrain.cli.report import describe, exit_with, unknown_key_message, usage_error


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


def run_dir_argument(command: str, cl: CommandLine) -> Path:
    """The one positional argument: a run dir or a checkpoint file."""
    if len(cl.positional) != 1:
        found = f"got {len(cl.positional)}: {' '.join(cl.positional)}" if cl.positional else "got none"
        raise ConfigError(f"aetrain {command} takes one run dir (or checkpoint file) before its overrides; {found}")
    return Path(cl.positional[0])


def run_command(command: str, args: list[str], own: Any, description: str, function: str) -> None:
    """`aetrain <command> <run dir or checkpoint> [key=value ...]`: parse, then call `function`
    ("module:name", imported only now) as function(run, own section, data config or None), where None means
    the run's own data (no data=/data.* given). User errors end in one line and exit code 2."""
    if {"--help", "-h"} & set(args):
        sys.stdout.write(command_help(command, own, description))
        return
    for arg in args:
        if arg.startswith("-"):
            usage_error(f"unknown flag {arg}", command)
    try:
        run = run_dir_argument(command, CommandLine([a for a in args if "=" not in a], {}, set()))
        run_data = run_data_config(run)
        cl = parse(command, args, {"data": run_data, command: own}, own=command)
        data = cl.sections["data"] if any(k == "data" or k.startswith("data.") for k in cl.given) else None
        if data is not None and "data.classes" not in cl.given:
            from aetrain.commands.trained import same_samples

            if not same_samples(data, run_data):  # other data is used whole: the run's classes said what to train on
                data = dataclasses.replace(data, classes=None)
        module, _, name = function.partition(":")
        call = getattr(importlib.import_module(module), name)
        with console_logging():
            call(run, cl.sections[command], data)
    except AetrainError as ex:
        exit_with(ex)


def run_data_config(run: Path) -> Any:
    """The data section the run was trained with (from its best.pt, else last.pt)."""
    from aetrain.checkpoint import config_of, load
    from aetrain.rundir import BEST, LAST

    return config_of(load(run, prefer=(BEST, LAST))).data


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


def command_help(command: str, own: Any, description: str) -> str:
    """The text of `aetrain <command> --help`: usage, description, and every key with its default and comment."""
    keys = documented_keys(type(own))
    width = max(len(f"{k}={v}") for k, v, _ in keys)
    lines = [f"usage: aetrain {command} <run dir or checkpoint file> [key=value ...]", "", description.strip(), "",
             f"keys ({command}.<key>=<value>, or <key>=<value>), with their defaults:"]
    lines += [f"  {f'{k}={v}':<{width}}  {comment}".rstrip() for k, v, comment in keys]
    lines += ["", "data: the run's own data (from its checkpoint) unless data=<name> (that dataset's defaults) or",
              "data.<key>=<value> (the run's data with that key changed, e.g. data.path=other.npy) is given; the",
              "keys are training's (aetrain --help). Data given here is used whole (the run's data.classes said what",
              "to train on); data.classes=[...] given here picks classes of it. A run dir's best.pt is used, else its",
              "last.pt."]
    return "\n".join(lines) + "\n"


def documented_keys(schema: type) -> list[tuple[str, str, str]]:
    """(key, default as typed on the command line, its comment in the dataclass's source) for each field."""
    comments = field_comments(schema)
    return [(f.name, typed(getattr(schema(), f.name)), comments.get(f.name, "")) for f in dataclasses.fields(schema)]


def field_comments(schema: type) -> dict[str, str]:
    """Each field's comment in the source of `schema` and of the dataclasses it inherits from (the nearest wins)."""
    comments: dict[str, str] = {}
    for cls in reversed(schema.__mro__):
        if dataclasses.is_dataclass(cls):
            comments.update(_comments_in(_class_source(cls)))
    return comments


def _class_source(cls: type) -> str:
    """The source of `cls`: its `class` line to the next line at module level ("" when no source is shipped).
    Cheaper than inspect.getsource, which parses the whole module again for every class."""
    lines = _module_lines(cls.__module__)
    start = next((i for i, line in enumerate(lines) if re.match(rf"class {cls.__name__}\b", line)), None)
    if start is None:
        return ""
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in ("", " ")), len(lines))
    return "\n".join(lines[start:end])


@functools.cache
def _module_lines(module: str) -> list[str]:
    try:
        return inspect.getsource(sys.modules[module]).splitlines()
    except (OSError, TypeError, KeyError):  # no source shipped: keys and defaults only
        return []


def _comments_in(source: str) -> dict[str, str]:
    """A field's comment: the one on its line, continued by the comment lines below it; or, when its line has
    none, the comment lines right above it."""
    comments: dict[str, str] = {}
    block: list[str] = []  # comment lines since the last field
    previous = None  # the last field with a comment of its own
    for line in source.splitlines():
        text = line.strip()
        if text.startswith("#"):
            block.append(text.lstrip("#").strip())
            continue
        field = re.match(r"^\s+(\w+):[^#]*(?:#\s*(.*))?$", line)
        if field and not field[2] and block:  # the block is this field's comment
            comments[field[1]] = " ".join(block)
        elif block and previous:  # the block continues the previous field's comment
            comments[previous] += " " + " ".join(block)
        previous = field[1] if field and field[2] else None
        if previous:
            comments[previous] = field[2]
        block = []
    return comments


def typed(value: Any) -> str:
    """`value` as it is typed on the command line: null, true, [1,2], 0.001."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(map(typed, value)) + "]"
    return str(value)


def answered_help(command: str, args: list[str], help_text: str, takes: str) -> bool:
    """For a command with a help text of its own: print it for --help/-h (True: nothing else to do), and
    refuse any other flag with a usage error naming what the command takes."""
    from aetrain.cli.report import usage_error

    if {"--help", "-h"} & set(args):
        sys.stdout.write(help_text)
        return True
    flags = [a for a in args if a.startswith("-")]
    if flags:
        usage_error(f"aetrain {command} takes {takes}, not {flags[0]}", command)
    return False

