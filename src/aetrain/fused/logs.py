"""Where a fused group's log lines go: each member's into its own run dir's log file, the console kept short.

A member's callbacks log as a run's do (the header, a line per epoch, the doctor's findings, the final
table). `routed` sends every line logged while a member is in scope (`scope(label)`, which the fused
engine enters around whatever a member does) to that member's copy of the log file the root logger
writes (train.log, from configs/hydra/job_logging), and a line logged outside any member (the group's
own) to every member's. On the console a member's lines below WARNING are left out (K headers and K
epoch lines would bury the group's own), and its warnings and errors are shown prefixed `job <label>: `.

Logging only: no Hydra, no torch.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

_member: contextvars.ContextVar[str | None] = contextvars.ContextVar("aetrain_fused_member", default=None)


@contextmanager
def scope(label: str) -> Iterator[None]:
    """Lines logged inside are member `label`'s."""
    token = _member.set(label)
    try:
        yield
    finally:
        _member.reset(token)


class _ToMembers(logging.Handler):
    """Each record to the file of the member in scope, or (the group's own) to every member's."""

    def __init__(self, files: dict[str, logging.Handler]) -> None:
        super().__init__()
        self.files = files

    def emit(self, record: logging.LogRecord) -> None:
        label = _member.get()
        for handler in [self.files[label]] if label in self.files else self.files.values():
            if record.levelno >= handler.level:
                handler.handle(record)

    def close(self) -> None:
        for handler in self.files.values():
            handler.close()
        super().close()


class _MemberFile(logging.FileHandler):
    """A member's log file, its run dir made when the first line comes: the group's own lines (a memory split,
    which members start again on a resume) come before any member has written its dir."""

    def _open(self):  # type: ignore[no-untyped-def]
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


class _ShortConsole(logging.Filter):
    """A member's lines below WARNING stay off the console; its warnings and errors say whose they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        label = _member.get()
        if label is None:
            return True
        if record.levelno < logging.WARNING:
            return False
        if not getattr(record, "aetrain_member", None):  # once, whichever console handler sees it first
            record.msg, record.aetrain_member = f"job {label}: {record.msg}", label
        return True


@contextmanager
def routed(run_dirs: Sequence[Path], labels: Sequence[str]) -> Iterator[Callable[[int], AbstractContextManager[None]]]:
    """Route the root logger's file output to each member's run dir (`run_dirs[k]`, named `labels[k]`) while
    inside; yields `context(k)`, member k's scope. A root logger without a file handler writes no files."""
    root = logging.getLogger()
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    members: dict[str, logging.Handler] = {}
    if files:
        template = files[0]
        for label, run_dir in zip(labels, run_dirs):
            handler = _MemberFile(Path(run_dir) / Path(template.baseFilename).name, delay=True,
                                          encoding=template.encoding or "utf-8", errors=template.errors)
            handler.setFormatter(template.formatter)
            handler.setLevel(template.level)
            members[label] = handler
        for handler in files:
            root.removeHandler(handler)
            handler.close()
    router = _ToMembers(members)
    consoles = list(root.handlers)
    quiet = _ShortConsole()
    for handler in consoles:
        handler.addFilter(quiet)
    root.handlers.insert(0, router)  # first: the files get a member's line before a console prefixes it
    try:
        yield lambda k: scope(labels[k])
    finally:
        root.removeHandler(router)
        router.close()
        for handler in consoles:
            handler.removeFilter(quiet)
