"""The console, torch-free: whether stdout is a terminal, and the log handler that shows aetrain's lines there.

`console_handler` is named in configs/hydra/job_logging/aetrain.yaml, which Hydra reads before a run's
first line: here, and not beside the outputs that use it (`aetrain.train.outputs.console`), so that
setting up the console does not import torch, and a run can say it is starting within a second or two.
"""

from __future__ import annotations

import logging
import sys
from typing import Any


def is_terminal() -> bool:
    """True when stdout is an interactive terminal: the only place redraws belong."""
    return sys.stdout is not None and sys.stdout.isatty()


def console_handler(**rich_options: Any) -> logging.Handler:
    """The log handler for the console: rich on a terminal, one plain line per message otherwise."""
    if is_terminal():
        from rich.logging import RichHandler

        return RichHandler(**rich_options)
    return logging.StreamHandler(sys.stdout)
