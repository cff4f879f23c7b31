"""Fused sweeps against one job at a time: the same K-job sweep trained by the basic path and by fused groups.

Each sweep is K jobs of one model on the bundled digits that differ in their learning rate and seed (4 rates
x K/4 seeds: 1e-3, 3e-3, 1e-4, 3e-4), at aetrain's defaults otherwise (200 epochs, checkpoints every epoch,
pictures, TensorBoard, the training doctor), trained

  basic   one job after another (what Hydra's basic launcher does);
  fused   as fused groups of at most --max-group members (what hydra/launcher=fused does).

`--via cli` (the default) runs each sweep as the user does, `aetrain -m ... hydra/launcher=basic|fused` in a
fresh process, and times it from launch to the end of the sweep summary; `--via api` runs
`aetrain.commands.train.run` per job and `aetrain.fused.train_group` in this process (no Hydra, no process
start). Either way the wall time includes every output. The two sweeps of a case run in turn, --repeats times,
so each pair sees the same machine (a shared VM drifts by 10% over minutes); the table gives the median of each
and the median of the pairs' ratios (basic / fused). Exactness: every member's best_val_loss against its basic
job's, as the largest relative difference.

`--outputs-off`: each case also runs the fused sweep with pictures, TensorBoard and the training doctor off
(checkpoints and metrics stay: they are the run), to show how much of the fused time the members' outputs take.

    python benchmarks/sweep.py                                  # K = 4, 16, 64, dense and conv, 20 epochs
    python benchmarks/sweep.py --jobs 16 --workloads dense --epochs 200 --repeats 3   # the README's target case
    python benchmarks/sweep.py --jobs 8,16 --workloads dense --threads 1 --outputs-off   # the README's CPU table
    python benchmarks/sweep.py --smoke --via api --threads 1 --outputs-off   # seconds; what the test suite runs
    python benchmarks/sweep.py --device cuda --jobs 16 --workloads dense,mnist --epochs 5 --repeats 1 --one   # GPU

Prints a table; --json PATH writes the results.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RATES = (1e-3, 3e-3, 1e-4, 3e-4)
# workload -> (model, its keys, the data's keys): the defaults of dense_ae and conv_ae on the digits, a small MLP
# (64-64-8) whose step is mostly overhead (the kind of model fusing is for), and dense_ae on MNIST-shaped data
# (60000 random 1x28x28 uint8 images written to the scratch dir, MNIST_FILE) at batch 256, for a GPU
MNIST_FILE = "mnist_shaped.npy"
WORKLOADS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "dense": ("dense_ae", {}, {}),
    "conv": ("conv_ae", {}, {}),
    "small": ("dense_ae", {"hidden_dims": [64], "latent_dim": 8}, {}),
    "mnist": ("dense_ae", {}, {"name": "tensor_file", "path": MNIST_FILE, "val_fraction": 0.1, "batch_size": 256}),
}
OUTPUTS_OFF = ["outputs.plot_every=0", "outputs.tensorboard=false", "diagnostics.enabled=false"]


def jobs(k: int) -> list[tuple[float, int]]:
    """(lr, seed) of a K-job sweep: the 4 rates with K/4 seeds each (a grid as users run it)."""
    return [(RATES[i % len(RATES)], i // len(RATES)) for i in range(k)]


def overrides(workload: str, epochs: int, extra: list[str], device: str, scratch: Path) -> list[str]:
    model, keys, data = WORKLOADS[workload]
    data = {k: scratch / v if k == "path" else v for k, v in data.items()}
    return [f"model={model}", *(f"model.{k}={_hydra(v)}" for k, v in keys.items()),
            *([f"data={data['name']}"] if "name" in data else []),
            *(f"data.{k}={v}" for k, v in data.items() if k != "name"),
            f"trainer.max_epochs={epochs}", f"trainer.device={device}", *extra]


def make_data(workloads: list[str], scratch: Path) -> None:
    """The MNIST-shaped file, when a workload reads it."""
    if any(WORKLOADS[w][2].get("path") == MNIST_FILE for w in workloads):
        import numpy as np

        images = np.random.default_rng(0).integers(0, 256, (60000, 1, 28, 28), dtype=np.uint8)
        np.save(scratch / MNIST_FILE, images)


def _hydra(value: Any) -> str:
    return "[" + ",".join(str(v) for v in value) + "]" if isinstance(value, list) else str(value)


# --- one sweep, through the CLI ---------------------------------------------------------------------------------

def sweep_cli(launcher: str, k: int, common: list[str], out: Path, max_group: int, threads: int | None) -> float:
    rates = ",".join(f"{lr:g}" for lr in RATES[: min(k, len(RATES))])
    seeds = ",".join(str(s) for s in range(max(1, k // len(RATES))))
    args = [sys.executable, "-m", "aetrain", "-m", f"hydra/launcher={launcher}", f"optimizer.lr={rates}",
            f"trainer.seed={seeds}", *common, f"hydra.sweep.dir={out}", "outputs.progress=false"]
    if launcher == "fused":
        args.append(f"hydra.launcher.max_group={max_group}")
    tic = time.perf_counter()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        raise RuntimeError(f"{launcher} sweep failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall


def best_losses_cli(out: Path) -> dict[tuple[str, str], float]:
    found = {}
    for summary in out.glob("*/summary.json"):
        s = json.loads(summary.read_text())
        overrides_file = summary.parent / ".hydra" / "overrides.yaml"
        keys = dict(line.strip("- \n").split("=", 1) for line in overrides_file.read_text().splitlines()
                    if line.strip().startswith("-") and "=" in line)
        found[(keys.get("optimizer.lr", ""), keys.get("trainer.seed", ""))] = s["best_val_loss"]
    return found


# --- one sweep, in this process ---------------------------------------------------------------------------------

def configs_api(k: int, workload: str, epochs: int, outputs_off: bool, device: str = "cpu",
                scratch: Path | None = None) -> list[Any]:
    from aetrain.config import Config, default_choice

    out = []
    for lr, seed in jobs(k):
        model, keys, data = WORKLOADS[workload]
        cfg = Config(model=default_choice("model", model))
        for key, value in keys.items():
            setattr(cfg.model, key, value)
        if data:
            cfg.data = default_choice("data", data["name"])
            for key, value in data.items():
                if key != "name":
                    setattr(cfg.data, key, str(scratch / value) if key == "path" else value)
        cfg.trainer.max_epochs, cfg.trainer.device, cfg.trainer.seed = epochs, device, seed
        cfg.optimizer.lr = lr
        cfg.outputs.progress = False
        if outputs_off:
            cfg.outputs.plot_every, cfg.outputs.tensorboard, cfg.diagnostics.enabled = 0, False, False
        out.append(cfg)
    return out


def sweep_api(launcher: str, configs: list[Any], out: Path, max_group: int) -> float:
    from aetrain.commands.train import run
    from aetrain.fused import group_configs, train_group

    dirs = [out / str(i) for i in range(len(configs))]
    tic = time.perf_counter()
    if launcher == "basic":
        for cfg, d in zip(configs, dirs):
            run(copy.deepcopy(cfg), d)
    else:
        grouping = group_configs(configs, max_group=max_group)
        for g, members in enumerate(grouping.groups):
            train_group([configs[i] for i in members], [dirs[i] for i in members], group=str(g))
        for i in grouping.alone:
            run(copy.deepcopy(configs[i]), dirs[i])
    return time.perf_counter() - tic


def best_losses_api(out: Path, k: int) -> dict[tuple[str, str], float]:
    found = {}
    for i, (lr, seed) in enumerate(jobs(k)):
        found[(f"{lr:g}", str(seed))] = json.loads((out / str(i) / "summary.json").read_text())["best_val_loss"]
    return found


# --- the benchmark ----------------------------------------------------------------------------------------------

def bench_case(workload: str, k: int, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    kinds = ["basic", "fused"] + (["fused-no-outputs"] if args.outputs_off else []) + (["one"] if args.one else [])
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    worst = 0.0
    for rep in range(args.repeats):
        losses = {}
        for kind in kinds:
            out = scratch / f"{workload}-{k}-{kind}-{rep}"
            launcher = "fused" if kind.startswith("fused") else "basic"
            extra = OUTPUTS_OFF if kind == "fused-no-outputs" else []
            jobs_here = 1 if kind == "one" else k  # "one": the sweep's first job alone, for "K jobs in x times one"
            if args.via == "cli":
                common = overrides(workload, args.epochs, extra, args.device, scratch)
                times[kind].append(sweep_cli(launcher, jobs_here, common, out, args.max_group, args.threads))
                losses[kind] = best_losses_cli(out)
            else:
                configs = configs_api(jobs_here, workload, args.epochs, kind == "fused-no-outputs", args.device,
                                      scratch)
                times[kind].append(sweep_api(launcher, configs, out, args.max_group))
                losses[kind] = best_losses_api(out, jobs_here)
            shutil.rmtree(out, ignore_errors=True)
        for key, basic in losses["basic"].items():
            fused = losses["fused"][key]
            worst = max(worst, abs(fused - basic) / abs(basic))
        print(f"  {workload} K={k} repeat {rep + 1}: " + ", ".join(f"{kind} {times[kind][-1]:.1f} s" for kind in kinds),
              file=sys.stderr, flush=True)
    ratios = [b / f for b, f in zip(times["basic"], times["fused"])]
    row = {"workload": workload, "jobs": k, "epochs": args.epochs, "repeats": args.repeats,
           **{f"{kind}_s": round(statistics.median(ts), 2) for kind, ts in times.items()},
           "ratio": round(statistics.median(ratios), 2), "ratios": [round(r, 2) for r in ratios],
           "max_rel_diff_best_val_loss": worst}
    if args.outputs_off:
        row["outputs_share_of_fused"] = round(1 - statistics.median(times["fused-no-outputs"]) /
                                              statistics.median(times["fused"]), 3)
    if args.one:  # the GPU target: K fused jobs in at most 1.6x the time of one
        row["fused_over_one"] = round(statistics.median(times["fused"]) / statistics.median(times["one"]), 2)
    return row


def warm_up(args: argparse.Namespace, scratch: Path) -> None:
    """Imports, the meta-device memory estimate's first use, the page cache: paid once, before any timing."""
    if args.via == "api":
        sweep_api("fused", configs_api(2, "dense", 1, False, args.device), scratch / "warm", args.max_group)
        shutil.rmtree(scratch / "warm", ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="4,16,64", help="sweep sizes K (comma-separated)")
    parser.add_argument("--workloads", default="dense,conv",
                        help="dense (dense_ae), conv (conv_ae), small (dense_ae 64-64-8), mnist (dense_ae on "
                             "MNIST-shaped data, batch 256), comma-separated")
    parser.add_argument("--device", default="cpu", help="trainer.device of every job (cpu, cuda)")
    parser.add_argument("--one", action="store_true", help="also time the sweep's first job alone: the fused sweep's "
                                                           "time over it (the GPU target: 16 jobs in <= 1.6x one)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per job (aetrain's default is 200)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved basic/fused pairs per case")
    parser.add_argument("--max-group", type=int, default=64, help="hydra.launcher.max_group")
    parser.add_argument("--via", choices=["cli", "api"], default="cli")
    parser.add_argument("--threads", type=int, help="torch threads of every sweep (default: torch's, one per core); "
                                                    "1 keeps a shared machine's other work from stalling both sweeps")
    parser.add_argument("--outputs-off", action="store_true", help="also time the fused sweep without pictures, "
                                                                   "TensorBoard and diagnostics")
    parser.add_argument("--smoke", action="store_true", help="K=4, dense, 1 epoch, 1 repeat: checks the script")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.jobs, args.workloads, args.epochs, args.repeats = "4", "dense", 1, 1
    logging.disable(logging.WARNING)  # the runs' own lines (api mode)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="aetrain-sweep-bench-") as tmp:
        scratch = Path(tmp)
        make_data(args.workloads.split(","), scratch)
        warm_up(args, scratch)
        for workload in args.workloads.split(","):
            for k in (int(k) for k in args.jobs.split(",")):
                rows.append(bench_case(workload, k, args, scratch))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    report = {"machine": f"{device}, torch {torch.__version__}", "via": args.via, "results": rows}
    print(f"{'workload':8} {'K':>3} {'epochs':>6} {'basic s':>9} {'fused s':>9} {'ratio':>6}  ratios  "
          f"max rel diff of best val/loss" + ("  outputs' share of fused" if args.outputs_off else "")
          + ("  fused / one job" if args.one else ""))
    for r in rows:
        line = (f"{r['workload']:8} {r['jobs']:>3} {r['epochs']:>6} {r['basic_s']:>9.1f} {r['fused_s']:>9.1f} "
                f"{r['ratio']:>6.2f}  {r['ratios']}  {r['max_rel_diff_best_val_loss']:.2g}")
        if args.outputs_off:
            line += f"  {r['outputs_share_of_fused']:.0%}"
        if args.one:
            line += f"  {r['fused_over_one']:.2f}x"
        print(line)
    print(report["machine"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
