"""`python -m aetrain ...` is the `aetrain` command."""

import sys

try:
    from aetrain.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python imports the CLI (seconds on a busy machine): the same one line
    sys.stderr.write("aetrain: interrupted by SIGINT\n")
    sys.exit(130)

main()
