"""How long a user waits: `aetrain --help`, and launch to the first optimizer step.

Each figure is the wall time of a fresh process, from just before it is started by this
script to (a) its exit, for `aetrain --help`, and (b) the end of its first optimizer step, for a
default training run (`aetrain trainer.max_epochs=1`, the bundled digits). For (b) the child runs
the real CLI entry point with one addition: a hook that prints the wall clock when the engine
finishes step 1 (it only moves `import torch` a moment earlier; the work is the same).
(c) is torch's own floor for (b): a process that imports torch and builds one Adam optimizer
(constructing any torch optimizer imports torch._dynamo, seconds on a small CPU) and exits.

    python benchmarks/startup.py            # 5 runs of each; prints min / median / max
    python benchmarks/startup.py --runs 10 --json startup.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIRST_STEP = """
import sys, time
from aetrain.train.engine import Engine
call = Engine._call
def _call(self, hook, *args):
    call(self, hook, *args)
    if hook == "on_step" and self.state.step == 1:
        print(f"FIRST_STEP {time.time()!r}", file=sys.stderr, flush=True)
Engine._call = _call
from aetrain.cli import main
sys.argv = ["aetrain", *sys.argv[1:]]
main()
"""


def help_time() -> float:
    tic = time.time()
    subprocess.run([sys.executable, "-m", "aetrain", "--help"], check=True, capture_output=True)
    return time.time() - tic


def first_step_time(out: Path) -> float:
    tic = time.time()
    proc = subprocess.run([sys.executable, "-c", FIRST_STEP, "trainer.max_epochs=1", f"hydra.run.dir={out}"],
                          capture_output=True, text=True, check=True)
    stamp = next(line for line in proc.stderr.splitlines() if line.startswith("FIRST_STEP "))
    return float(stamp.split()[1]) - tic


def torch_floor_time() -> float:
    tic = time.time()
    subprocess.run([sys.executable, "-c", "import torch; torch.optim.Adam(torch.nn.Linear(1, 1).parameters())"],
                   check=True, capture_output=True)
    return time.time() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    helps, steps, floors = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):  # alternated, so all see the same machine conditions
            helps.append(help_time())
            steps.append(first_step_time(Path(tmp) / f"run{i}"))
            floors.append(torch_floor_time())
    rows = {"aetrain --help": helps, "launch to first optimizer step": steps,
            "torch floor: import + Adam()": floors}
    print(f"{'':32s} {'min s':>6s} {'median s':>9s} {'max s':>6s}   ({args.runs} runs)")
    for name, times in rows.items():
        print(f"{name:32s} {min(times):6.2f} {statistics.median(times):9.2f} {max(times):6.2f}")
    payload = {name: {"min": min(t), "median": statistics.median(t), "max": max(t), "runs": t}
               for name, t in rows.items()}
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
