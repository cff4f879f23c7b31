"""Graceful stops: SIGINT (Ctrl-C) and SIGTERM (cluster pre-emption).

The first signal only sets a flag; the engine finishes the optimizer step under way, saves
last.pt and stops with `Interrupted`. A second signal aborts at once with the default action.
Once the run is over (`end`), signals are ignored: they can only ask the process to end, which
it is doing; a data-parallel launcher that stops the remaining processes when one has ended
must not cut off the line that says how the run ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupt:
    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal received; None = keep going
        self.ended = False  # the run is over: ignore signals

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def end(self) -> None:
        """The run is over (saved, or failed): from now on, signals are ignored."""
        self.ended = True

    def handle(self, signum: int, frame: FrameType | None = None) -> None:
        if self.ended:
            return
        if self.signum is not None:  # the second one: abort now, the way the signal normally would
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        log.warning("%s received: finishing this step, then saving a checkpoint (send it again to abort at once)",
                    self.name)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupt]:
        """Route SIGINT and SIGTERM here while training; restore the previous handlers after."""
        previous = self.install()
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def install(self) -> dict[int, object]:
        """Route SIGINT and SIGTERM here from now on; returns the previous handlers. Only the main thread
        may set handlers: elsewhere this does nothing."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self.handle) for s in SIGNALS}
