"""How many CPU threads torch computes with (`trainer.num_threads`).

torch starts with one intra-op thread per core (or OMP_NUM_THREADS). That is fastest on an idle
machine for large layers; on a machine whose cores are busy with other work, or for small layers
whose matrix products are too short to split, threads wait on each other: on the shared 2-core VM
of this project the default run trained 2.8-4.3x faster on one thread than on two (README "Trainer").
"""

from __future__ import annotations

import torch

_before: list[int] = []  # the count before a run of this process first set its own (restored by num_threads=0)


def set_num_threads(num_threads: int) -> int:
    """Use `num_threads` CPU threads; 0 = leave torch's count as the process has it (OMP_NUM_THREADS, one per
    core, or what the caller set with torch.set_num_threads), and put back the count an earlier run in this
    process changed (a sweep's jobs). Returns the count in use."""
    if num_threads:
        if not _before:
            _before.append(torch.get_num_threads())
        torch.set_num_threads(num_threads)
    elif _before:
        torch.set_num_threads(_before.pop())
    return torch.get_num_threads()
