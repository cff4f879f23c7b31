"""`aetrain report <run dir | sweep dir>`: one self-contained page to look at, report.html (`aetrain.report`)."""

from __future__ import annotations

import logging
from pathlib import Path

from aetrain.report import write_report

log = logging.getLogger(__name__)


def report(path: Path) -> Path:
    """Write `path`/report.html for the run dir or sweep dir `path`, say where, and return it. ConfigError (one
    line) for a path that is neither; WriteError when the dir takes no file."""
    page = write_report(Path(path))
    log.info("aetrain report: wrote %s (%s kB); open it in a browser: %s", page,
             f"{page.stat().st_size / 1000:,.0f}", page.resolve().as_uri())
    return page
