"""`aetrain report <run dir | sweep dir>`: write report.html, the one page to look at.

(Named report_html because cli/report.py holds the one-line error helpers; the command is `report`.)
"""

from __future__ import annotations

import sys
from pathlib import Path

from aetrain.errors import AetrainError

from aetrain.cli.report import exit_with, usage_error

SUMMARY = "one page for a run or a sweep: report.html, self-contained, to open in any browser"

HELP = """\
aetrain report: one page for a run or a sweep, report.html, to open in any browser.

Usage:
  aetrain report <run dir | sweep dir>

Writes report.html into the dir: one file with its pictures, styles and script inlined, that loads
nothing from anywhere (no server, no network) and is the same, byte for byte, for the same dir.
Runs and sweeps write it by themselves when they end (outputs.report=false: not); this command
writes it for any run or sweep dir, also one still training, one that failed, or one from before.

A run's page: the command and the config's differences from the defaults, the commands to resume
and to repeat it, how it ended, the loss curves, the reconstructions over the epochs, the training
doctor's findings with the overrides to try, eval/score/export results, timings and versions.

A sweep's page: every job in a table to sort and filter; parallel coordinates over the swept keys
and the objective (brush an axis to filter); the objective against each key; every job's validation
curve; the best jobs' reconstructions of the same samples side by side; seeds (mean +- sd, which
settings are within the seed spread of the best); the doctor's findings in several jobs with a sweep
command to try; failures; Optuna's best so far; fused groups.

Example:
  aetrain report outputs/multirun/2026-11-23/10-00-00
"""


def main(args: list[str]) -> None:
    from aetrain.cli.command import answered_help

    if answered_help("report", args, HELP, "a run dir or a sweep dir"):
        return
    overrides = [a for a in args if "=" in a]
    if overrides:
        usage_error(f"aetrain report takes a run dir or a sweep dir and no overrides; got {overrides[0]}", "report")
    if len(args) != 1:
        usage_error(f"aetrain report takes one run dir or sweep dir; got {len(args) or 'none'}", "report")
    from aetrain.commands.report import report

    try:
        path = report(Path(args[0]))
    except AetrainError as ex:
        exit_with(ex)
    size = path.stat().st_size
    sys.stdout.write(f"aetrain report: wrote {path} ({size / 1000:,.0f} kB); open it in a browser: "
                     f"{path.resolve().as_uri()}\n")
