"""What a launcher (torchrun, a SLURM job's tasks) told this process through the environment.

Torch-free, so the command line can ask before it imports torch; `aetrain.train.distributed`
builds the data-parallel processes on it.
"""

from __future__ import annotations

import os


def launched() -> bool:
    """True in a process started by a launcher that set the torch.distributed environment (RANK, WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    """This process's rank as its launcher set it; 0 when it was not launched as one of several."""
    return int(os.environ.get("RANK", "0")) if launched() else 0
