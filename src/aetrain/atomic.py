"""Files that readers only ever see whole: write a temp file beside the target, then rename.

`os.replace` is atomic on POSIX and Windows, so a crash (or `kill -9`) at any moment leaves the
target either as it was or as it will be. Checkpoints also need the bytes on disk before the
rename is (`durable=True`: fsync the file, then its directory); pictures and summaries that are
rewritten every epoch only need readers never to see half a file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomic(path: Path, data: bytes | str | Callable[[IO[bytes]], None], *, durable: bool = False) -> None:
    """Write `data` (bytes, text, or a function writing to a binary file) to `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp(path)
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)  # a failed write leaves no debris beside the target
        if isinstance(e, OSError) and e.filename is None:  # write() and fsync() errors name no file: name it
            e.filename = str(path)
        raise
    if durable:
        _fsync_dir(path.parent)


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync elsewhere; the rename is what matters
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # makes the rename itself durable
    finally:
        os.close(fd)
