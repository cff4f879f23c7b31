"""`python -m aetrain ...` is the `aetrain` command."""

from aetrain.cli import main

main()
