"""`aetrain --help` and `aetrain <command> --help`, made the same way for every command from its registry entry
(`aetrain.commands.COMMANDS`): the usage, what it does, its keys with their defaults and the comments of their
dataclass fields (`aetrain.config.field_comments`), and its examples.

`aetrain --help` is `train`'s help, which also lists the commands, the config groups and their choices, and
every key of the training config composed from the overrides given (`aetrain --help model=conv_ae` shows the
conv model's keys), as YAML with each key's comment, then the keys of every choice of every group (names only).
The other commands' keys are shown as they are typed, `key=default`. Hydra's own help stays at `aetrain --hydra-help`.
"""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

from aetrain.commands import COMMANDS, JOBS, RUN, TRAINING, Command
from aetrain.config import CHOICES, default_choice, field_comments, typed

INTRO = "aetrain: train, compare and debug autoencoders."
DATA = """\
data: the run's own data (from its checkpoint; refused when its files changed since training, by the
fingerprint the checkpoint holds) unless data=<name> (that dataset's defaults) or data.<key>=<value>
(the run's data with that key changed, e.g. data.path=other.npy) is given; the keys are training's
(aetrain --help). Data given here is used whole, as not the training data (the run's data.classes said
what to train on); data.classes=[...] given here picks classes of it. Data given that holds the very
samples the run trained on (data.path=<where its file moved>) is the run's own, split as training split
it. A run dir's best.pt is used, else its last.pt."""


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
                  "", "== Keys and defaults (set any: key=value) ==", *keys,
                  "", "== Every choice's keys (the section above lists the chosen ones with their defaults and "
                  "comments: aetrain --help model=vae) ==", *choice_keys()]
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
    from aetrain.cli.overrides import plugin_arguments
    from aetrain.cli.schema import compose_training, to_config
    from aetrain.errors import AetrainError

    try:
        config = to_config(compose_training(plugin_arguments(overrides)))
    except (AetrainError, HydraException, OmegaConfBaseException) as ex:
        exit_with(ex)
    return _yaml_lines(config, "")


def choice_keys() -> list[str]:
    """For each group with choices, the keys every choice has, then each choice's own (choices with the same own
    keys on one line): the keys above are those of the choices composed, these are all of them."""
    lines = []
    for group, choices in CHOICES.items():
        keys = {name: _key_names(default_choice(group, name)) for name in sorted(choices)}
        common = [k for k in next(iter(keys.values())) if all(k in ks for ks in keys.values())]
        lines += textwrap.wrap(f"{group}, every choice: {', '.join(common) or '(none)'}", 100,
                               subsequent_indent="    ")
        alike: dict[tuple[str, ...], list[str]] = {}
        for name, ks in keys.items():
            alike.setdefault(tuple(k for k in ks if k not in common), []).append(name)
        for own, names in alike.items():
            more = f"also {', '.join(own)}" if own else "no others"
            lines += textwrap.wrap(f"{group}={'|'.join(names)}: {more}", 100, initial_indent="  ",
                                   subsequent_indent="      ")
    return lines


def _key_names(section: Any, prefix: str = "") -> list[str]:
    """The keys of a section as typed after `<group>.` (`noise.level`), without the `name` its choice sets."""
    names = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            names += _key_names(value, f"{prefix}{f.name}.")
        elif f.name != "name" or prefix:
            names.append(prefix + f.name)
    return names


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
