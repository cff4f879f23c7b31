"""How many CPU threads torch computes with (`trainer.num_threads`).

torch starts with one intra-op thread per core (or OMP_NUM_THREADS). That is fastest on an idle
machine for large layers; on a machine whose cores are busy with other work, or for small layers
whose matrix products are too short to split, threads wait on each other: on the shared 2-core VM
of this project the default run trained 2.8-4.3x faster on one thread than on two (README "Trainer").
"""

from __future__ import annotations

import torch

TORCH_DEFAULT = torch.get_num_threads()  # what this process started with: OMP_NUM_THREADS, else one per core


def set_num_threads(num_threads: int) -> int:
    """Use `num_threads` CPU threads (0 = the process's default), also after an earlier run in this process (a
    sweep's jobs) changed it; returns the count in use."""
    wanted = num_threads or TORCH_DEFAULT
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return wanted
