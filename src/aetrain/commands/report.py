"""`aetrain report <run dir | sweep dir>`: one self-contained page to look at, report.html (`aetrain.report`)."""

from __future__ import annotations

from pathlib import Path

from aetrain.report import write_report


def report(path: Path) -> Path:
    """Write `path`/report.html for the run dir or sweep dir `path` and return it. ConfigError (one line)
    for a path that is neither; WriteError when the dir takes no file."""
    return write_report(Path(path))
