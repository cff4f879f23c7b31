"""The `aetrain` command line: `aetrain [<command>] [arguments]`, one module per command.

This package is the only place that imports Hydra (and OmegaConf's parsing of overrides). Each
command module has `SUMMARY` (one line for `aetrain --help`) and `main(args)`, composes its
typed config and calls the plain function of `aetrain.commands.<command>`. Without a command
name, `aetrain ...` trains (`aetrain model=conv_ae` is `aetrain train model=conv_ae`).

Adding a command: a function in aetrain/commands/<name>.py, a module here with SUMMARY and main,
and its entry in COMMANDS.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {  # name -> module of this package
    "train": "aetrain.cli.train",
    "doctor": "aetrain.cli.doctor",
    "lr_find": "aetrain.cli.lr_find",
}


def summary_of(name: str) -> str:
    return importlib.import_module(COMMANDS[name]).SUMMARY


def main(argv: list[str] | None = None) -> None:
    """Console entry point. `argv` (without the program name) replaces sys.argv[1:], for calling
    the CLI in-process."""
    args = sys.argv[1:] if argv is None else list(argv)
    name = "train"
    if args and args[0] in COMMANDS:
        name, args = args[0], args[1:]
    elif args and "=" not in args[0] and not args[0].startswith("-"):
        from aetrain.cli.report import usage_error

        usage_error(f"'{args[0]}' is neither a command nor an override (key=value); commands: {', '.join(COMMANDS)}")
    importlib.import_module(COMMANDS[name]).main(args)
