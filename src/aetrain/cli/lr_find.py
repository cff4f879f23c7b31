"""`aetrain lr_find [overrides]`: the learning-rate range test, composed from the same config as training.

Every training override works (`model=conv_ae data=mnist optimizer=sgd ...`); `lr_find.<key>=...`
sets the test's own keys (`aetrain.commands.lr_find.LRFindConfig`). The files go to
`outputs/lr_find/<date>/<time>/` unless `hydra.run.dir=...` says otherwise; the composed config
is saved there as `.hydra/config.yaml`, with the overrides typed in `.hydra/overrides.yaml`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from aetrain.errors import AetrainError

from aetrain.cli.errors import exit_with, usage_error

SUMMARY = "learning-rate range test: suggests optimizer.lr for the configured model and data"

# a dir of its own even for two tests started in the same second (aetrain.rundir.RunDir.allocate)
DEFAULT_DIR = "outputs/lr_find/${now:%Y-%m-%d}/${now:%H-%M-%S}"

HELP = """\
aetrain lr_find: the learning-rate range test (as Lightning's and fastai's lr finders run it).

Usage:
  aetrain lr_find [group=choice ...] [key=value ...] [lr_find.<key>=value ...]

Trains the configured model on the configured data for lr_find.num_steps optimizer steps while
the learning rate rises exponentially from lr_find.min_lr to lr_find.max_lr, and suggests the rate
where the loss (a centered average over a tenth of the steps) falls fastest before its lowest point. It takes every override training takes
(aetrain --help lists them); the configured scheduler is not used.

Keys of the test:
  lr_find.min_lr=1e-7      learning rate of the first step
  lr_find.max_lr=1.0       learning rate of the last step
  lr_find.num_steps=100    optimizer steps
  lr_find.divergence=4.0   stop once the loss's moving average exceeds this multiple of its minimum

Writes, into outputs/lr_find/<date>/<time>/ (or hydra.run.dir=...):
  lr_find.csv    step, lr, loss, smoothed_loss
  lr_find.png    the loss against the learning rate, the suggestion marked
  lr_find.json   the suggested optimizer.lr and the test's settings
  .hydra/        the composed config and the overrides typed

Examples:
  aetrain lr_find
  aetrain lr_find model=conv_ae optimizer=sgd
  aetrain lr_find model=vae lr_find.num_steps=200 hydra.run.dir=lr_test
"""


def main(args: list[str]) -> None:
    from aetrain.cli.command import answered_help

    if answered_help("lr_find", args, HELP, "overrides (key=value)"):
        return
    positional = [a for a in args if "=" not in a]
    if positional:
        usage_error(f"aetrain lr_find takes overrides (key=value); '{positional[0]}' is not one", "lr_find")
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from aetrain.commands.lr_find import run
    from aetrain.config import LRFindConfig, validate_command
    from aetrain.rundir import LR_FIND_FILES, Invocation, RunDir

    from aetrain.cli.command import parse
    from aetrain.cli.overrides import check_overrides, given
    from aetrain.cli.schema import register_configs, to_config

    own = [a for a in args if a.startswith("lr_find.")]
    overrides = [a for a in args if a not in own]
    default = not given(overrides, "hydra.run.dir")
    if default:
        overrides.append(f"hydra.run.dir='{DEFAULT_DIR}'")  # quoted: the override grammar takes no nested ${}
    run_dir: RunDir | None = None
    try:
        find = parse("lr_find", own, {"lr_find": LRFindConfig()}, own="lr_find").sections["lr_find"]
        validate_command("lr_find", find)  # before the default dir is made
        check_overrides(overrides)
        register_configs()
        with initialize_config_module("aetrain.configs", version_base="1.3"):
            composed = compose("train", overrides=overrides, return_hydra_config=True)
        path = Path(composed.hydra.run.dir)
        with open_dict(composed):
            del composed["hydra"]
        cfg = to_config(composed)
        run_dir = RunDir.allocate(path) if default else RunDir(path)
        run_dir.refuse_taken(what="a run or a range test", resumable=False)
        _log_to_console()
        with run_dir.claimed():  # a second test (or a run) into this dir meanwhile is refused
            result = run(cfg, find, run_dir.path)
    except (AetrainError, HydraException, OmegaConfBaseException) as ex:
        if run_dir is not None:  # a rejected command leaves no dir behind
            run_dir.release()
        exit_with(ex)
    run_dir.record(Invocation(OmegaConf.to_yaml(composed), tuple(args)))
    out_dir = run_dir.path
    table, picture, summary = (out_dir / name for name in LR_FIND_FILES)
    if result.suggestion is None:
        sys.stderr.write(f"aetrain: lr_find: no suggestion: {result.why_none} over {len(result.lrs)} steps from "
                         f"lr_find.min_lr={find.min_lr:g} to {result.lrs[-1]:.2g}; try a wider range (see {picture})\n")
        sys.exit(1)
    note = " (the loss diverged before lr_find.max_lr)" if result.stopped_early else ""
    print(f"suggested optimizer.lr={result.suggestion:.2g}  (steepest descent of the averaged loss over "
          f"{len(result.lrs)} steps{note}; configured: {cfg.optimizer.lr:g})")
    print(f"  plot: {picture}")
    print(f"  loss per step: {table}; suggestion and settings: {summary}")


def _log_to_console() -> None:
    """aetrain's log lines (data loading, warnings) on stdout, as training shows them."""
    from aetrain.train.outputs.console import console_handler

    root = logging.getLogger()
    if not root.handlers:
        handler = console_handler(show_time=False, show_path=False, show_level=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
