"""`aetrain doctor <run dir>`: read a run and say why it is (not) learning, per layer, with the overrides to try."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aetrain.errors import AetrainError, ConfigError

from aetrain.cli.report import exit_with, usage_error

SUMMARY = "diagnose a run: findings per layer, with the overrides to try (doctor.json, diagnostics.png)"

HELP = """\
aetrain doctor: why a run is (not) learning, per layer, with the overrides to try.

Usage:
  aetrain doctor <run dir>

Reads the run dir of a finished, failed, diverged, interrupted or still running run: metrics.csv,
diagnostics.csv (written while training unless diagnostics.enabled=false), summary.json and the
run's .hydra/config.yaml. Prints the run's verdict (healthy, learning with problems, not learning,
diverged, or too early to judge before 10 epochs), each finding with its evidence and the overrides to
try (findings that stopped holding apart, as past), and a per-layer table; writes
doctor.json and diagnostics.png into the run dir. A run without diagnostics.csv gets the findings
metrics.csv allows (overfitting, lr_too_high, lr_too_low, exploding_gradients, identity_mapping).

Findings: vanishing_gradients, exploding_gradients, dead_units, saturated_units, unused_code_units,
identity_mapping, blurry_reconstructions, overfitting, lr_too_high, lr_too_low, output_range (README,
"Training doctor", for each rule, its threshold and what its suggestion does).

Example:
  aetrain doctor outputs/2026-11-23/10-00-00
"""


def main(args: list[str]) -> None:
    from aetrain.cli.command import answered_help

    if answered_help("doctor", args, HELP, "a run dir"):
        return
    overrides = [a for a in args if "=" in a]
    if overrides:
        usage_error(f"aetrain doctor takes a run dir and no overrides; got {overrides[0]}", "doctor")
    if len(args) != 1:
        usage_error(f"aetrain doctor takes one run dir; got {len(args) or 'none'}", "doctor")
    from aetrain.commands.doctor import run

    run_dir = Path(args[0])
    try:
        report = run(run_dir, _config_of(run_dir))
    except AetrainError as ex:
        exit_with(ex)
    sys.stdout.write("\n".join(report.lines()) + "\n")


def _config_of(run_dir: Path):
    """The run's composed config (.hydra/config.yaml), typed; None when it has none."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from aetrain.config import from_json
    from aetrain.rundir import HYDRA

    path = run_dir / HYDRA / "config.yaml"
    if not path.is_file():
        return None
    try:
        return from_json(json.dumps(OmegaConf.to_container(OmegaConf.load(path), resolve=False)))
    except (OmegaConfBaseException, ValueError, TypeError, AttributeError, ConfigError) as e:
        raise ConfigError(f"{path}: not a readable aetrain config ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
