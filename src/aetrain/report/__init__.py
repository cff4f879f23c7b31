"""report.html: one self-contained page for a run dir or a sweep dir, to open from disk in any browser.

`write_report(path)` writes `<path>/report.html` (`aetrain report <dir>`, and at the end of every run and
every sweep unless `outputs.report=false`). One file: its CSS, script and pictures are inlined, it makes no
request, needs no server, and the same dir always gives the same bytes.

- `runs`: what a run dir says (summary, metrics, the command and config, pictures, the training doctor's
  findings, eval/score/export results), read from its files;
- `sweeps`: a sweep dir's jobs, the keys they swept, seed spread, the doctor's findings in several jobs,
  Optuna's best so far, fused groups;
- `figures`: the sweep page's matplotlib figures and the PNG handling that keeps pages small;
- `page`: what each section shows, rendered with Jinja2 (templates/) with static/report.css and
  static/report.js, the hand-written sorting, filtering, brushing and epoch picking.

Torch-free except for reading a run's checkpoint (the versions that wrote it, the shape of a sample);
Hydra-free: the CLI's `aetrain report`, the training engine's end-of-run callback and the sweep's summary
all call `write_report`.
"""

from aetrain.report.page import render, write_report
from aetrain.report.runs import REPORT

__all__ = ["REPORT", "render", "write_report"]
