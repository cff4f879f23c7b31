"""Epoch throughput of aetrain against the hardware limit, a DataLoader loop and Lightning.

All in one process, on the same MNIST-shaped data (60000 x 1 x 28 x 28 in [0, 1]), the same
model and the same optimizer (Adam 1e-3, batch 256):

  limit       a compute-only loop over pre-batched in-memory tensors: forward, loss, backward,
              step, nothing else. What the hardware can do for this model.
  aetrain     aetrain's engine through `aetrain.commands.train.run`, at default settings: validation,
              last/best checkpoints, metrics.csv, TensorBoard, pictures, summary.json included.
  dataloader  a hand-written loop over torch's DataLoader (shuffled TensorDataset), no extras.
  lightning   Lightning's Trainer with a LightningModule around the same model (when installed),
              at its defaults (checkpointing, logger) with validation each epoch, like aetrain.

Every entry trains on the same 54000 samples per epoch (aetrain holds out 10% for validation;
so does Lightning); throughput is training samples per second of whole-epoch wall time over
all measured epochs after the warm-up ones (the mean, not the median: aetrain draws its
pictures every few epochs within its render budget, and those epochs count). limit, aetrain and dataloader run
interleaved, one epoch each in turn, so they share the machine's conditions (a shared VM drifts
by 10% over minutes); Lightning's Trainer owns its loop and runs after them. Peak memory: the
process's peak resident set on a CPU (so it only grows down the table), peak allocated on CUDA.
Workloads: a dense AE (784-256-64-32 and mirror) and a conv AE (two stride-2 convs of 32/64
channels, latent 32, mirrored), both exactly as aetrain builds them (conv in channels_last).

    python benchmarks/throughput.py                         # both workloads on the CPU
    python benchmarks/throughput.py --device cuda --compile # GPU, plus torch.compile
    python benchmarks/throughput.py --smoke                 # seconds; what CI runs
    python benchmarks/throughput.py --diagnostics off       # aetrain without the training doctor's sampling

The training doctor's cost is the difference of aetrain's "x limit" between a run with
`--diagnostics on` (the default: aetrain's defaults) and one with `--diagnostics off`
(diagnostics.enabled=false); each is interleaved with the limit loop, so the ratio is comparable
across the two runs although the machine's speed drifts between them.

Prints a table and writes JSON (--json PATH, default stdout's last line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from aetrain.commands.train import build_parts, resolve_device, run
from aetrain.config import (AdamConfig, Config, ConvAEConfig, DenseAEConfig, DiagnosticsConfig, TensorFileDataConfig,
                            TrainerConfig)
from aetrain.errors import ConfigError
from aetrain.train.engine import Callback, Engine
from aetrain.train.optim import build_optimizer

WORKLOADS = {
    "dense": DenseAEConfig(hidden_dims=[256, 64], latent_dim=32),
    "conv": ConvAEConfig(channels=[32, 64], latent_dim=32),
}
BATCH = 256
VAL_FRACTION = 0.1


@dataclass
class Result:
    name: str
    workload: str
    epoch_s: list[float] = field(default_factory=list)
    samples: int = 0  # training samples per epoch
    peak_mb: float = 0.0

    @property
    def samples_per_s(self) -> float:
        return self.samples * len(self.epoch_s) / sum(self.epoch_s)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux: KiB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def aetrain_config(workload: str, data_path: Path, args: argparse.Namespace) -> Config:
    return Config(
        model=replace(WORKLOADS[workload]),
        data=TensorFileDataConfig(path=str(data_path), batch_size=BATCH, val_fraction=VAL_FRACTION),
        optimizer=AdamConfig(lr=1e-3),
        trainer=TrainerConfig(max_epochs=args.warmup + args.epochs, device=args.device, compile=args.compile,
                              channels_last=args.channels_last and workload == "conv"),
        diagnostics=DiagnosticsConfig(enabled=args.diagnostics == "on"),
    )


class Interleaved(Callback):
    """Times aetrain's whole epochs and, between them, one epoch of each plain loop.

    Each aetrain epoch runs from the end of this callback's on_epoch_start to the start of the next
    (or the fit's end), so every other callback's work counts; the plain loops run inside
    on_epoch_start, outside that interval. Interleaving puts all entries under the same machine
    conditions: on a shared VM, speed drifts by 10% over minutes.
    """

    def __init__(self, device: torch.device, loops: dict[str, Callable[[], int]], results: dict[str, Result]) -> None:
        self.device, self.loops, self.results = device, loops, results
        self.started: float | None = None

    def lap(self, engine: Engine) -> None:
        sync(self.device)
        if self.started is not None:
            self.results["aetrain"].epoch_s.append(time.perf_counter() - self.started)

    def on_epoch_start(self, engine: Engine) -> None:
        self.lap(engine)
        for name, loop in self.loops.items():
            sync(self.device)
            tic = time.perf_counter()
            self.results[name].samples = loop()
            sync(self.device)
            self.results[name].epoch_s.append(time.perf_counter() - tic)
        sync(self.device)
        self.started = time.perf_counter()

    def on_fit_end(self, engine: Engine) -> None:
        self.lap(engine)


def bench_interleaved(workload: str, data_path: Path, out: Path, args: argparse.Namespace) -> list[Result]:
    """aetrain, the limit and the DataLoader loop, epoch by epoch in turn."""
    device = torch.device(args.device)
    loops = {"limit": limit_loop(workload, data_path, args), "dataloader": dataloader_loop(workload, data_path, args)}
    loops = {k: v for k, v in loops.items() if k not in args.skip}
    results = {name: Result(name, workload) for name in ["limit", "aetrain", "dataloader"] if name in loops or name == "aetrain"}
    cfg = aetrain_config(workload, data_path, args)
    run(cfg, out / f"aetrain-{workload}", callbacks=[Interleaved(device, loops, results)])
    results["aetrain"].samples = len(np.load(data_path, mmap_mode="r")) - round(args.samples * VAL_FRACTION)
    for r in results.values():
        r.epoch_s = r.epoch_s[args.warmup :]
        r.peak_mb = peak_mb(device)
    return list(results.values())


def same_model_and_optimizer(workload: str, data_path: Path, args: argparse.Namespace):
    """The model and optimizer exactly as aetrain builds them, and aetrain's training split."""
    cfg = aetrain_config(workload, data_path, args)
    cfg.trainer.compile = False
    parts = build_parts(cfg)
    model = parts.model
    if args.compile:
        model = torch.compile(model)
    return model, build_optimizer(cfg.optimizer, parts.model.parameters()), parts.data.train.data


def step_fn(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor], None]:
    def step(x: torch.Tensor) -> None:
        _, x_hat = model(x)
        loss = torch.nn.functional.mse_loss(x_hat, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def limit_loop(workload: str, data_path: Path, args: argparse.Namespace) -> Callable[[], int]:
    """One epoch of the compute-only loop over pre-batched, device-resident tensors."""
    device = torch.device(args.device)
    model, optimizer, train = same_model_and_optimizer(workload, data_path, args)
    batches = [b.contiguous(memory_format=_format(b)) for b in train.to(device).split(BATCH)]
    step = step_fn(model.train(), optimizer)

    def epoch() -> int:
        for x in batches:
            step(x)
        return len(train)

    return epoch


def dataloader_loop(workload: str, data_path: Path, args: argparse.Namespace) -> Callable[[], int]:
    """One epoch of a hand-written loop over torch's DataLoader (shuffled TensorDataset)."""
    device = torch.device(args.device)
    model, optimizer, train = same_model_and_optimizer(workload, data_path, args)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train.cpu()), batch_size=BATCH, shuffle=True,
                                         pin_memory=device.type == "cuda")
    step = step_fn(model.train(), optimizer)

    def epoch() -> int:
        for (x,) in loader:
            step(x.to(device, non_blocking=True))
        return len(train)

    return epoch


def _format(x: torch.Tensor) -> torch.memory_format:
    """The layout aetrain holds the data in (channels_last for conv workloads), so the limit matches."""
    return torch.channels_last if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def bench_lightning(workload: str, data_path: Path, out: Path, args: argparse.Namespace) -> Result | None:
    try:
        import lightning as L
    except ImportError:
        try:
            import pytorch_lightning as L
        except ImportError:
            return None
    device = torch.device(args.device)
    model, optimizer, train = same_model_and_optimizer(workload, data_path, args)
    cfg = aetrain_config(workload, data_path, args)
    val = build_parts(cfg).data.val

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, _):
            (x,) = batch
            loss = torch.nn.functional.mse_loss(self.model(x)[1], x)
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch, _):
            (x,) = batch
            self.log("val/loss", torch.nn.functional.mse_loss(self.model(x)[1], x))

        def configure_optimizers(self):
            return optimizer

    clock: list[float] = []

    class Clock(L.Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            sync(device)
            clock.append(time.perf_counter())

        def on_fit_end(self, trainer, module) -> None:
            sync(device)
            clock.append(time.perf_counter())

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train.cpu()), batch_size=BATCH, shuffle=True)
    val_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(val.cpu()), batch_size=BATCH)
    trainer = L.Trainer(max_epochs=args.warmup + args.epochs, accelerator="gpu" if device.type == "cuda" else "cpu",
                        devices=1, default_root_dir=str(out / f"lightning-{workload}"), callbacks=[Clock()],
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Module(), loader, val_loader)
    times = [b - a for a, b in zip(clock, clock[1:])]
    return Result("lightning", workload, times[args.warmup :], len(train), peak_mb(device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workloads", default="dense,conv")
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=5, help="measured epochs (their mean is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="epochs run before measuring")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (aetrain: trainer.compile)")
    parser.add_argument("--channels-last", action="store_true", help="conv workload in channels_last memory format")
    parser.add_argument("--diagnostics", choices=["on", "off"], default="on",
                        help="aetrain with the training doctor's per-layer sampling (its default) or without")
    parser.add_argument("--skip", default="", help="comma-separated entries to leave out, e.g. lightning")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs (CI)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"--workloads: unknown {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}")
    try:
        resolve_device(args.device)
    except ConfigError as e:
        parser.error(f"--device: {e}")
    if args.smoke:
        args.samples, args.epochs, args.warmup = 1200, 1, 1
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    skip = args.skip = set(filter(None, args.skip.split(",")))

    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        data_path = out / "mnist_shaped.npy"
        np.save(data_path, np.random.default_rng(0).random((args.samples, 1, 28, 28), dtype=np.float32))
        for workload in args.workloads.split(","):
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            for result in bench_interleaved(workload, data_path, out, args):
                results.append(result)
                print(f"  {workload:5s} {result.name:10s} {result.samples_per_s:10.0f} samples/s", file=sys.stderr)
            if "lightning" not in skip:
                result = bench_lightning(workload, data_path, out, args)
                if result is not None:
                    results.append(result)
                    print(f"  {workload:5s} lightning  {result.samples_per_s:10.0f} samples/s", file=sys.stderr)

    report(results, args)


def report(results: list[Result], args: argparse.Namespace) -> None:
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    header = (f"aetrain throughput, {time.strftime('%Y-%m-%d')}, {device}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {args.samples} samples, batch {BATCH}"
              + (", compiled" if args.compile else "") + f", diagnostics {args.diagnostics}")
    print(header)
    print(f"{'workload':8s} {'entry':10s} {'samples/s':>10s} {'epoch s':>8s} {'x limit':>8s} {'x lightning':>11s} "
          f"{'peak MB':>8s}")
    rows = []
    for r in results:
        limit = next(x for x in results if x.workload == r.workload and x.name == "limit") if any(
            x.workload == r.workload and x.name == "limit" for x in results) else None
        light = next((x for x in results if x.workload == r.workload and x.name == "lightning"), None)
        vs_limit = r.samples_per_s / limit.samples_per_s if limit else float("nan")
        vs_light = r.samples_per_s / light.samples_per_s if light else float("nan")
        print(f"{r.workload:8s} {r.name:10s} {r.samples_per_s:10.0f} {r.samples / r.samples_per_s:8.3f} "
              f"{vs_limit:8.3f} {vs_light:11.2f} {r.peak_mb:8.0f}")
        rows.append({"workload": r.workload, "entry": r.name, "samples_per_s": r.samples_per_s,
                     "epoch_s": r.epoch_s, "vs_limit": vs_limit, "vs_lightning": vs_light, "peak_mb": r.peak_mb})
    payload = {"header": header, "device": device, "results": rows}
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
