"""`aetrain --help` and `aetrain <command> --help`, made the same way for every command from its registry entry
(`aetrain.commands.COMMANDS`): the usage, what it does, its keys with their defaults and the comments of their
dataclass fields (`aetrain.config.field_comments`), and its examples.

`aetrain --help` is `train`'s help, which also lists the commands, the config groups and their choices, and
every key of the training config composed from the overrides given (`aetrain --help model=conv_ae` shows the
conv model's keys), as YAML with each key's comment. The other commands' keys are shown as they are typed,
`key=default`. Hydra's own help stays at `aetrain --hydra-help`.
"""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

from aetrain.commands import COMMANDS, JOBS, RUN, TRAINING, Command
from aetrain.config import field_comments

INTRO = "aetrain: train, compare and debug autoencoders."
DATA = """\
data: the run's own data (from its checkpoint) unless data=<name> (that dataset's defaults) or
data.<key>=<value> (the run's data with that key changed, e.g. data.path=other.npy) is given; the
keys are training's (aetrain --help). Data given here is used whole (the run's data.classes said what
to train on); data.classes=[...] given here picks classes of it. A run dir's best.pt is used, else its
last.pt."""


def command_help(command: Command, overrides: list[str]) -> str:
    """The text of `aetrain <command> --help` (`overrides`: train's, composed into the keys it shows)."""
    lines: list[str] = []
    if command.takes == JOBS:
        lines += [INTRO, "", "Commands (aetrain <command> --help for each):", commands_text(), "",
                  f"Usage of {command.name}:", *(f"  {u}" for u in command.usage)]
    else:
        lines += [f"usage: {u}" if i == 0 else f"       {u}" for i, u in enumerate(command.usage or (usage(command),))]
    lines += ["", command.description.strip()]
    if command.details is not None:
        lines += ["", textwrap.fill(command.details(), 100)]
    if command.takes == JOBS:
        keys = training_keys(overrides)  # first: the plugins it names register their models
        lines += ["", "== Groups (pick one: group=choice) ==", *(f"{group}: {', '.join(choices)}"
                                                                for group, choices in config_groups().items()),
                  "", "== Keys and defaults (set any: key=value) ==", *keys]
    elif command.config is not None and dataclasses.fields(command.config):
        prefix = f"{command.name}.<key>=<value>" + ("" if command.takes == TRAINING else ", or <key>=<value>")
        lines += ["", f"keys ({prefix}), with their defaults:", *key_lines(command.config())]
    if command.takes == RUN:
        lines += ["", DATA]
    if command.takes == TRAINING:
        lines += ["", "Every training override works too (aetrain --help lists the groups and keys)."]
    if command.examples:
        lines += ["", "Examples:", *(f"  {e}" for e in command.examples)]
    return "\n".join(lines) + "\n"


def usage(command: Command) -> str:
    """The usage line of a command that takes a dir: `aetrain eval <run dir or checkpoint file> [key=value ...]`."""
    keys = " [key=value ...]" if command.takes == RUN or command.config is not None else ""
    return f"aetrain {command.name} <{command.argument.replace('(', '').replace(')', '')}>{keys}"


def commands_text() -> str:
    width = max(map(len, COMMANDS))
    return "\n".join(f"  aetrain {name:<{width}}  {c.summary}" for name, c in COMMANDS.items())


def key_lines(section: Any) -> list[str]:
    """`  key=default  comment` for each field of `section`, the defaults as typed on the command line."""
    comments = field_comments(type(section))
    keys = [(f.name, typed(getattr(section, f.name))) for f in dataclasses.fields(section)]
    width = max(len(f"{k}={v}") for k, v in keys)
    return [f"  {f'{k}={v}':<{width}}  {comments.get(k, '')}".rstrip() for k, v in keys]


def training_keys(overrides: list[str]) -> list[str]:
    """The training config composed from `overrides`, as YAML with each key's comment (a user error: one line)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from aetrain.cli.errors import exit_with
    from aetrain.cli.schema import compose_training, to_config
    from aetrain.errors import AetrainError

    from aetrain.cli.overrides import plugin_arguments

    try:
        config = to_config(compose_training(plugin_arguments(overrides)))
    except (AetrainError, HydraException, OmegaConfBaseException) as ex:
        exit_with(ex)
    return _yaml_lines(config, "")


def _yaml_lines(section: Any, indent: str) -> list[str]:
    comments = field_comments(type(section))
    out = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        comment = f"  # {comments[f.name]}" if comments.get(f.name) else ""
        if dataclasses.is_dataclass(value):
            out += [f"{indent}{f.name}:{comment}", *_yaml_lines(value, indent + "  ")]
        else:
            out.append(f"{indent}{f.name}: {typed(value)}{comment}")
    return out


def typed(value: Any) -> str:
    """A value as it is typed on the command line: null, true, [256,128]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(map(typed, value)) + "]"
    return str(value)


def config_groups() -> dict[str, list[str]]:
    """Each config group of aetrain and its choices, from the folders of the config package."""
    from importlib.resources import files

    from aetrain.config import CHOICES
    from aetrain.plugins import entry_point_names

    root = files("aetrain.configs")
    folders = sorted((d for d in root.iterdir() if d.is_dir() and d.name not in ("hydra", "__pycache__")),
                     key=lambda d: d.name)
    groups = {d.name: sorted(f.name.removesuffix(".yaml") for f in d.iterdir() if f.name.endswith(".yaml"))
              for d in folders}
    # models of your own: registered by plugins=[...] given, or offered by installed packages (not imported here)
    own = sorted((set(CHOICES["model"]) | set(entry_point_names())) - set(groups["model"]))
    groups["model"] += [f"{name} (plugin)" for name in own]
    return groups
