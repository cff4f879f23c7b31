"""The `aetrain` command line: `aetrain [<command>] [arguments]`, every command from its registry entry.

This package is the only place that imports Hydra (and OmegaConf's parsing of overrides), and the only
place that turns an error into a line and an exit code. Each command is one entry of
`aetrain.commands.COMMANDS` (its name, summary, keys, function and what it takes); here one parser per
kind of command line, one help generator (`help`) and one error line (`errors`) serve them all:
- `train` (and `aetrain -m`): the Hydra app (`train`), each job `commands.train.run_job`;
- `lr_find`: the training config composed once (`train.run_composed`), into a dir of its own;
- `eval`, `encode`, `score`, `export`, `doctor`, `sweep`: a dir and key=value overrides (`command`).
Without a command name, `aetrain ...` trains (`aetrain model=conv_ae` is `aetrain train model=conv_ae`).
Adding a command needs nothing here: a module in aetrain/commands/ and its entry there.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import typing

_decided: list[int] = []  # the exit code a Ctrl-C decided (`_aborted`), which `_leave_as_decided` keeps


def _leave_as_decided() -> None:
    """The last exit handler (registered before any other of this process's): after a Ctrl-C decided the exit
    code, end with it here, once every other handler has run (logs flushed, threads joined). CPython (3.11)
    takes a KeyboardInterrupt that passed through exec() of a string (dataclasses, namedtuples; wherever a
    Ctrl-C lands) for an unhandled one even once caught, and after its shutdown would end the process by SIGINT
    instead of with the code."""
    if _decided:
        _flush_and_exit(_decided[0])


def _flush_and_exit(code: int) -> typing.NoReturn:
    """End the process now with `code`, what was written to the console flushed first."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


atexit.register(_leave_as_decided)  # before the imports below, whose own handlers then run first

from aetrain.commands import COMMANDS, JOBS, TRAINING, Command  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Console entry point. `argv` (without the program name) replaces sys.argv[1:], for calling
    the CLI in-process."""
    args = sys.argv[1:] if argv is None else list(argv)
    name = "train"
    for stream in (sys.stdout, sys.stderr):  # an ASCII console (PYTHONIOENCODING=ascii, LC_ALL=C) still gets every
        if hasattr(stream, "reconfigure"):  # line: what it cannot show is escaped, never a logging error
            stream.reconfigure(errors="backslashreplace")
    try:
        if args and args[0] in COMMANDS:
            name, args = args[0], args[1:]
        elif args and "=" not in args[0] and not args[0].startswith("-"):
            from aetrain.cli.errors import usage_error

            usage_error(f"'{args[0]}' is neither a command nor an override (key=value); commands: "
                        f"{', '.join(COMMANDS)}")
        run(COMMANDS[name], args)
    except KeyboardInterrupt as e:  # Ctrl-C where no run handles it (start-up), or a second one: abort at once
        _aborted(e, process_ends=argv is None)
    except SystemExit as e:
        if argv is None:  # the outcome is decided and said: a Ctrl-C while Python shuts down must not change it
            _exit_on_sigint(e.code if isinstance(e.code, int) else 1)
        raise
    if argv is None:
        _exit_on_sigint(130)


def run(command: Command, args: list[str]) -> None:
    """`aetrain <command> [arguments]`: its help, or its command line parsed and run as its kind says."""
    if {"--help", "-h"} & set(args):
        from aetrain.cli.help import command_help

        sys.stdout.write(command_help(command, [a for a in args if not a.startswith("-")]))
        return
    if command.takes == JOBS:  # Hydra's flags (-m, --cfg, --info, ...) are Hydra's to read
        from aetrain.cli.train import main as run_jobs

        run_jobs(args)
        return
    flags = [a for a in args if a.startswith("-") and "=" not in a]
    if flags:
        from aetrain.cli.errors import usage_error

        takes = "overrides (key=value)" if command.takes == TRAINING else \
            f"a {command.argument}{' and key=value overrides' if command.config is not None else ''}"
        usage_error(f"unknown flag {flags[0]}: aetrain {command.name} takes {takes}, not {flags[0]}", command.name)
    if command.takes == TRAINING:
        from aetrain.cli.train import run_composed

        run_composed(command, args)
    else:
        from aetrain.cli.command import run_on_dir

        run_on_dir(command, args)


def _exit_on_sigint(code: int) -> None:
    """From now on, SIGINT ends the process at once with `code` (what is written is flushed first),
    instead of raising KeyboardInterrupt into Python's shutdown (joining threads), which would print
    a traceback or end the process by the signal. From the atexit handlers on, SIGINT is ignored:
    Python's finalization resets a Python-level handler to the default action (death by SIGINT, not
    `code`) while it tears down modules, which takes a moment with torch loaded."""

    def leave(*_: object) -> None:
        _flush_and_exit(code)

    signal.signal(signal.SIGINT, leave)
    atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)  # registered last, so it runs first


def _aborted(e: KeyboardInterrupt, *, process_ends: bool) -> typing.NoReturn:
    """One line and exit code 130. After a first Ctrl-C stopped a run, say what that one saved."""
    from aetrain.errors import Interrupted

    first = e.__context__
    while first is not None and not isinstance(first, Interrupted):
        first = first.__context__
    if process_ends:  # one more while Python shuts down (joining threads): exit, no "Exception ignored" traceback
        _exit_on_sigint(130)
        _decided.append(130)
    sys.stderr.write(f"aetrain: {first}\n" if first is not None else "aetrain: interrupted by SIGINT\n")
    sys.exit(130)
