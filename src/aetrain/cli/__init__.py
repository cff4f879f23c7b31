"""The `aetrain` command line: `aetrain [<command>] [arguments]`, one module per command.

This package is the only place that imports Hydra (and OmegaConf's parsing of overrides). Each
command module has `SUMMARY` (one line for `aetrain --help`) and `main(args)`, composes its
typed config and calls the plain function of `aetrain.commands.<command>`. Without a command
name, `aetrain ...` trains (`aetrain model=conv_ae` is `aetrain train model=conv_ae`).

Adding a command: a function in aetrain/commands/<name>.py, a module here with SUMMARY and main,
and its entry in COMMANDS.
"""

from __future__ import annotations

import atexit
import importlib
import os
import signal
import sys
import typing

COMMANDS = {  # name -> module of this package
    "train": "aetrain.cli.train",
    "eval": "aetrain.cli.eval",
    "encode": "aetrain.cli.encode",
    "score": "aetrain.cli.score",
    "export": "aetrain.cli.export",
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
        importlib.import_module(COMMANDS[name]).main(args)
    except KeyboardInterrupt as e:  # Ctrl-C where no run handles it (start-up), or a second one: abort at once
        _aborted(e, process_ends=argv is None)
    except SystemExit as e:
        if argv is None:  # the outcome is decided and said: a Ctrl-C while Python shuts down must not change it
            _exit_on_sigint(e.code if isinstance(e.code, int) else 1)
        raise
    if argv is None:
        _exit_on_sigint(130)


def _exit_on_sigint(code: int) -> None:
    """From now on, SIGINT ends the process at once with `code` (what is written is flushed first),
    instead of raising KeyboardInterrupt into Python's shutdown (joining threads), which would print
    a traceback or end the process by the signal. From the atexit handlers on, SIGINT is ignored:
    Python's finalization resets a Python-level handler to the default action (death by SIGINT, not
    `code`) while it tears down modules, which takes a moment with torch loaded."""

    def leave(*_: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

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
    sys.stderr.write(f"aetrain: {first}\n" if first is not None else "aetrain: interrupted by SIGINT\n")
    sys.exit(130)
