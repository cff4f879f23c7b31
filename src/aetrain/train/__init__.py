"""Training: wiring (`run`), the loop (`engine`), precision, schedules, checkpoints and outputs."""

from aetrain.train.run import run

__all__ = ["run"]
