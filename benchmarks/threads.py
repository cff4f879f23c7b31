"""Training time against `trainer.num_threads`: the same run on 1 thread and on torch's default, interleaved.

Each round trains every setting once, one after the other, in fresh processes (`aetrain ...
trainer.num_threads=N`), and reads `wall_time_s` (training time, without start-up) from the run's
summary.json; rounds repeat so that a machine whose load drifts is seen by every setting alike.
Prints the median training time per setting and the median of each round's ratio to the default.

    python benchmarks/threads.py                                     # the default run, 30 epochs, 3 rounds
    python benchmarks/threads.py --rounds 5 --threads 1,2,4 -- model=conv_ae trainer.max_epochs=5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def train(threads: int, overrides: list[str], out: Path) -> float:
    subprocess.run([sys.executable, "-m", "aetrain", f"hydra.run.dir={out}", f"trainer.num_threads={threads}",
                    "trainer.device=cpu", "outputs.plot_every=0", "outputs.tensorboard=false", *overrides],
                   check=True, capture_output=True)
    return float(json.loads((out / "summary.json").read_text())["wall_time_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="1,0", help="comma-separated trainer.num_threads values (0 = torch's)")
    parser.add_argument("overrides", nargs="*", default=["trainer.max_epochs=30"])
    args = parser.parse_args()
    settings = [int(t) for t in args.threads.split(",")]
    times: dict[int, list[float]] = {t: [] for t in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for t in settings:
                times[t].append(train(t, args.overrides, Path(tmp) / f"{r}-{t}"))
    base = settings[-1]
    print(f"{' '.join(args.overrides)}; {args.rounds} rounds")
    for t in settings:
        ratio = statistics.median(b / a for a, b in zip(times[t], times[base]))
        print(f"  trainer.num_threads={t}: median {statistics.median(times[t]):.2f} s "
              f"({', '.join(f'{x:.2f}' for x in times[t])}); {ratio:.2f}x the speed of num_threads={base}")


if __name__ == "__main__":
    main()
