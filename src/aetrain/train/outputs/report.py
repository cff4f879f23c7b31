"""report.html at the fit's end (`outputs.report`): the run's page (`aetrain.report`), from the files the
other outputs finished writing in their own on_fit_end; hence last in `build_outputs`' list.

Written once per session, like the last picture, whatever the picture budget's clock says; a page that
cannot be written is a warning, never a failed run (`aetrain report <run dir>` writes it any time).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from aetrain.report import write_report
from aetrain.train.engine import Callback, Engine

log = logging.getLogger(__name__)


class Report(Callback):
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_fit_end(self, engine: Engine) -> None:
        tic = time.perf_counter()
        try:
            path = write_report(self.run_dir)
        except Exception as e:  # a page is never worth a training run
            log.warning("could not write %s (the run is unaffected; aetrain report %s tries again): %s: %s",
                        self.run_dir / "report.html", self.run_dir, type(e).__name__, e,
                        exc_info=log.isEnabledFor(logging.DEBUG))
            return
        log.debug("wrote %s in %.2f s", path, time.perf_counter() - tic)
