"""Command lines of the commands that work on a trained run: `aetrain <command> <run dir> [key=value ...]`.

Their overrides use the training syntax on the sections a command has, and nothing else:
- `data=<choice>` swaps the data section for that dataset's defaults, and `data.<key>=<value>`
  changes one key; without either, a command uses the run's own data config (from its
  checkpoint), so `data.path=other.npy` is "the run's data, from another file";
- `<key>=<value>` or `<command>.<key>=<value>` sets a key of the command's own section.
Values are parsed as YAML (`data.classes=[0,1]`, `score.quantile=0.95`) and checked against
the typed sections: an unknown key or a wrong type is one line naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aetrain.config import default_choice
from aetrain.errors import ConfigError

from aetrain.cli.report import describe, unknown_key_message


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
