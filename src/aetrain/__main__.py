"""`python -m aetrain ...` and the `aetrain` command (its entry point is `main` here, so that a Ctrl-C while
Python imports the CLI, seconds on a busy machine, is the same one line as any other)."""

import os
import sys


def main() -> None:
    try:
        from aetrain.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("aetrain: interrupted by SIGINT\n")
        sys.stderr.flush()
        # not sys.exit: CPython (3.11) takes a KeyboardInterrupt that passed through exec() of a string (as every
        # dataclass's __init__ is made) for an unhandled one, even once caught, and would end the process by
        # SIGINT instead of with 130. Nothing was started that an exit would need to finish.
        os._exit(130)
    cli_main()


if __name__ == "__main__":
    main()
