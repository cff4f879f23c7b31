"""`hydra/launcher=plain`, aetrain's default launcher: Hydra's basic launcher (the jobs of a sweep one after another,
in this process) with one key more, `hydra.launcher.resume`.

`aetrain -m <the sweep's overrides> hydra.sweep.dir=<its dir> hydra.launcher.resume=true` (the line an
interrupted sweep prints gives the whole command) finishes an interrupted sweep in its dir: before any job
runs, the dir must hold that sweep, with no job of other overrides and none a live process trains in
(`aetrain.commands.sweep.refuse_resume_jobs`); then each job, in aetrain's task, is kept when it finished,
continued from its last.pt, or started (`aetrain.rundir.prepare_resume`). The same key as the fused
launcher's (hydra/launcher=fused), with the same meaning: both follow `aetrain.rundir.resuming`.

A plugin because Hydra instantiates launchers from the `hydra_plugins` namespace only; kept light at
import time (Hydra imports every plugin when it starts).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn
from omegaconf import open_dict


class PlainLauncher(BasicLauncher):
    """Hydra's basic launcher, and `resume` (see the module docstring)."""

    def __init__(self, resume: bool = False) -> None:
        super().__init__()
        self.resume = resume

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        if self.resume:
            from aetrain.commands.sweep import refuse_resume_jobs

            assert self.config is not None and self.hydra_context is not None
            jobs = []
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx):  # each job's dir, as it composes
                job = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with open_dict(job):
                    job.hydra.job.id = job.hydra.job.num = idx
                jobs.append((Path(job.hydra.sweep.dir) / str(job.hydra.sweep.subdir), list(overrides)))
            refuse_resume_jobs(Path(self.config.hydra.sweep.dir), jobs)  # a ConfigError: one line, no job run
        return super().launch(job_overrides, initial_job_idx)


def register() -> None:
    """Make sure Hydra knows this launcher, however aetrain was installed: Hydra finds launchers by listing the
    `hydra_plugins` namespace, which a PEP 660 editable install (`pip install -e .`) hides from it although the
    package imports fine (facebookresearch/hydra#3252). aetrain's CLI calls this first."""
    from hydra.core.plugins import Plugins

    Plugins.instance().class_name_to_class.setdefault(f"{__name__}.{PlainLauncher.__name__}", PlainLauncher)
