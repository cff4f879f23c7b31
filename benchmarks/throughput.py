"""Epoch throughput of aetrain against the hardware limit, a DataLoader loop and Lightning.

All in one process, on the same MNIST-shaped data (60000 x 1 x 28 x 28 in [0, 1]), the same
model and the same optimizer (Adam 1e-3), at each batch size of --batch (default 256):

  limit          a compute-only loop over pre-batched in-memory tensors: forward, loss, backward,
                 step, nothing else, eagerly (fused Adam). What eager PyTorch can do for this model.
  graph          CUDA only: the same step captured by hand as one CUDA graph per batch size (static
                 input buffer, fused Adam with capturable=True, warm-up on a side stream, as in
                 torch.cuda.graphs' whole-network capture) and replayed per batch: the ceiling of a
                 launch-bound step. Written here, independently of aetrain's own graphs.
  aetrain        aetrain's engine through `aetrain.commands.train.run`, at default settings (on CUDA:
                 trainer.cuda_graphs=auto), whole epochs: validation, last/best checkpoints,
                 metrics.csv, TensorBoard, pictures, summary.json included (whole-run throughput).
  aetrain-steps  the same epochs counting only the time inside training steps (its samples_per_s
                 column in metrics.csv): training-step throughput.
  dataloader     a hand-written loop over torch's DataLoader (shuffled TensorDataset), no extras.
  lightning      Lightning's Trainer with a LightningModule around the same model (when installed),
                 at its defaults (checkpointing, logger) with validation each epoch, like aetrain.

Every entry trains on the same 54000 samples per epoch (aetrain holds out 10% for validation;
so does Lightning); throughput is training samples per second of whole-epoch wall time over
all measured epochs after the warm-up ones (the mean, not the median: aetrain draws its
pictures every few epochs within its render budget, and those epochs count). limit, graph,
aetrain and dataloader run interleaved, one epoch each in turn, so they share the machine's
conditions (a shared VM drifts by 10% over minutes); Lightning's Trainer owns its loop and runs
after them. Peak memory: the
process's peak resident set on a CPU (so it only grows down the table), peak allocated on CUDA.
Workloads: a dense AE (784-256-64-32 and mirror) and a conv AE (two stride-2 convs of 32/64
channels, latent 32, mirrored), both exactly as aetrain builds them (conv in channels_last).

    python benchmarks/throughput.py                                 # both workloads on the CPU
    python benchmarks/throughput.py --device cuda --batch 256,4096  # GPU, with the one-graph ceiling
    python benchmarks/throughput.py --device cuda --cuda-graphs false    # aetrain's eager steps on a GPU
    python benchmarks/throughput.py --device cuda --compile --compile-mode default  # plus torch.compile
    python benchmarks/throughput.py --smoke                         # seconds; what CI runs
    python benchmarks/throughput.py --diagnostics off               # aetrain without the doctor's sampling

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
from aetrain.config import (
    AdamConfig,
    Config,
    ConvAEConfig,
    DenseAEConfig,
    DiagnosticsConfig,
    TensorFileDataConfig,
    TrainerConfig,
    validate,
)
from aetrain.errors import ConfigError
from aetrain.train.engine import Callback, Engine
from aetrain.train.graphs import COMPILE_MODES, graphs_policy
from aetrain.train.optim import build_optimizer

WORKLOADS = {
    "dense": DenseAEConfig(hidden_dims=[256, 64], latent_dim=32),
    "conv": ConvAEConfig(channels=[32, 64], latent_dim=32),
}
VAL_FRACTION = 0.1


@dataclass
class Result:
    name: str
    workload: str
    batch: int
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


def aetrain_config(workload: str, data_path: Path, batch: int, args: argparse.Namespace) -> Config:
    return Config(
        model=replace(WORKLOADS[workload]),
        data=TensorFileDataConfig(path=str(data_path), batch_size=batch, val_fraction=VAL_FRACTION),
        optimizer=AdamConfig(lr=1e-3),
        trainer=TrainerConfig(max_epochs=args.warmup + args.epochs, device=args.device, compile=args.compile,
                              compile_mode=args.compile_mode, cuda_graphs=args.cuda_graphs,
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

    def on_epoch_end(self, engine: Engine, record: dict) -> None:
        # the epoch's training steps alone: what metrics.csv reports as samples_per_s
        self.results["aetrain-steps"].epoch_s.append(engine.parts.data.num_train / record["samples_per_s"])

    def on_fit_end(self, engine: Engine) -> None:
        self.lap(engine)


ENTRIES = ["limit", "graph", "aetrain", "aetrain-steps", "dataloader"]  # the interleaved ones, in table order


def bench_interleaved(workload: str, data_path: Path, out: Path, batch: int, args: argparse.Namespace) -> list[Result]:
    """aetrain, the limit, the one-graph ceiling and the DataLoader loop, epoch by epoch in turn."""
    device = torch.device(args.device)
    makers = {"limit": limit_loop, "graph": graph_loop, "dataloader": dataloader_loop}
    loops = {name: make(workload, data_path, batch, args) for name, make in makers.items()
             if name not in args.skip and (name != "graph" or device.type == "cuda")}
    results = {name: Result(name, workload, batch) for name in ENTRIES if name in loops or name.startswith("aetrain")}
    cfg = aetrain_config(workload, data_path, batch, args)
    run(cfg, out / f"aetrain-{workload}-{batch}", callbacks=[Interleaved(device, loops, results)])
    num_train = len(np.load(data_path, mmap_mode="r")) - round(args.samples * VAL_FRACTION)
    results["aetrain"].samples = results["aetrain-steps"].samples = num_train
    for r in results.values():
        r.epoch_s = r.epoch_s[args.warmup :]
        r.peak_mb = peak_mb(device)
    return list(results.values())


def same_model_and_optimizer(workload: str, data_path: Path, batch: int, args: argparse.Namespace):
    """The model and optimizer exactly as aetrain builds them, and aetrain's training split."""
    cfg = aetrain_config(workload, data_path, batch, args)
    cfg.trainer.compile, cfg.trainer.compile_mode, cfg.trainer.cuda_graphs = False, "default", "false"
    parts = build_parts(cfg)
    model = parts.model
    if args.compile:
        model = torch.compile(model, mode=args.compile_mode)
    return model, build_optimizer(cfg.optimizer, parts.model.parameters()), parts.data.train.data


def step_fn(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor], None]:
    def step(x: torch.Tensor) -> None:
        _, x_hat = model(x)
        loss = torch.nn.functional.mse_loss(x_hat, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def limit_loop(workload: str, data_path: Path, batch: int, args: argparse.Namespace) -> Callable[[], int]:
    """One epoch of the compute-only loop over pre-batched, device-resident tensors."""
    device = torch.device(args.device)
    model, optimizer, train = same_model_and_optimizer(workload, data_path, batch, args)
    batches = [b.contiguous(memory_format=_format(b)) for b in train.to(device).split(batch)]
    step = step_fn(model.train(), optimizer)

    def epoch() -> int:
        for x in batches:
            step(x)
        return len(train)

    return epoch


def graph_loop(workload: str, data_path: Path, batch: int, args: argparse.Namespace) -> Callable[[], int]:
    """One epoch of the step captured by hand as a CUDA graph, one graph per batch size (the last batch
    of an epoch is shorter), replayed per batch after copying the batch into the graph's input."""
    device = torch.device(args.device)
    model, _, train = same_model_and_optimizer(workload, data_path, batch, args)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True, capturable=True)
    batches = [b.contiguous(memory_format=_format(b)) for b in train.to(device).split(batch)]
    step = step_fn(model, optimizer)
    stream = torch.cuda.Stream(device)  # warm-up and capture on one side stream
    graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
    for x in batches:
        if len(x) in graphs:
            continue
        static_x = x.clone()  # the graph's input: same shape and layout
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                step(static_x)
        torch.cuda.current_stream(device).wait_stream(stream)
        optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            _, x_hat = model(static_x)
            torch.nn.functional.mse_loss(x_hat, static_x).backward()
            optimizer.step()
        graphs[len(x)] = graph, static_x

    def epoch() -> int:
        for x in batches:
            graph, static_x = graphs[len(x)]
            static_x.copy_(x)
            graph.replay()
        return len(train)

    return epoch


def dataloader_loop(workload: str, data_path: Path, batch: int, args: argparse.Namespace) -> Callable[[], int]:
    """One epoch of a hand-written loop over torch's DataLoader (shuffled TensorDataset)."""
    device = torch.device(args.device)
    model, optimizer, train = same_model_and_optimizer(workload, data_path, batch, args)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train.cpu()), batch_size=batch, shuffle=True,
                                         pin_memory=device.type == "cuda")
    step = step_fn(model.train(), optimizer)

    def epoch() -> int:
        for (x,) in loader:
            step(x.to(device, non_blocking=True))
        return len(train)

    return epoch


def _format(x: torch.Tensor) -> torch.memory_format:
    """The layout aetrain holds the data in (channels_last for conv workloads), so the limit matches."""
    channels_last = x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def bench_lightning(workload: str, data_path: Path, out: Path, batch: int, args: argparse.Namespace) -> Result | None:
    try:
        import lightning as L
    except ImportError:
        try:
            import pytorch_lightning as L
        except ImportError:
            return None
    device = torch.device(args.device)
    model, optimizer, train = same_model_and_optimizer(workload, data_path, batch, args)
    cfg = aetrain_config(workload, data_path, batch, args)
    cfg.trainer.cuda_graphs = "false"
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

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train.cpu()), batch_size=batch, shuffle=True)
    val_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(val.cpu()), batch_size=batch)
    trainer = L.Trainer(max_epochs=args.warmup + args.epochs, accelerator="gpu" if device.type == "cuda" else "cpu",
                        devices=1, default_root_dir=str(out / f"lightning-{workload}"), callbacks=[Clock()],
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Module(), loader, val_loader)
    times = [b - a for a, b in zip(clock, clock[1:])]
    return Result("lightning", workload, batch, times[args.warmup :], len(train), peak_mb(device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workloads", default="dense,conv")
    parser.add_argument("--batch", default="256", help="comma-separated batch sizes, each measured in turn")
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=5, help="measured epochs (their mean is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="epochs run before measuring")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (aetrain: trainer.compile)")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile's mode (aetrain: trainer.compile_mode)")
    parser.add_argument("--cuda-graphs", default="auto", help="aetrain's trainer.cuda_graphs: auto, true or false")
    parser.add_argument("--channels-last", action="store_true", help="conv workload in channels_last memory format")
    parser.add_argument("--diagnostics", choices=["on", "off"], default="on",
                        help="aetrain with the training doctor's per-layer sampling (its default) or without")
    parser.add_argument("--skip", default="", help="comma-separated entries to leave out, e.g. lightning,graph")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs (CI)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"--workloads: unknown {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}")
    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 2:
        parser.error(f"--batch: {args.batch!r} is not a comma-separated list of batch sizes >= 2")
    args.batch = batches
    try:
        resolve_device(args.device)
        validate(aetrain_config("dense", Path("x.npy"), args.batch[0], args))
        graphs_policy(args.cuda_graphs), COMPILE_MODES.get(args.compile_mode)
    except ConfigError as e:
        parser.error(str(e))
    if args.smoke:
        args.samples, args.epochs, args.warmup = 1200, 1, 1
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    skip = args.skip = set(filter(None, args.skip.split(",")))
    if args.device.startswith("cuda") or "graph" in skip:
        note = ""
    else:
        note = "graph: skipped (a CUDA graph needs --device cuda)"
        print(f"  {note}", file=sys.stderr)

    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        data_path = out / "mnist_shaped.npy"
        np.save(data_path, np.random.default_rng(0).random((args.samples, 1, 28, 28), dtype=np.float32))
        for workload in args.workloads.split(","):
            for batch in args.batch:
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                found = bench_interleaved(workload, data_path, out, batch, args)
                if "lightning" not in skip:
                    found += [r for r in [bench_lightning(workload, data_path, out, batch, args)] if r is not None]
                for result in found:
                    results.append(result)
                    print(f"  {workload:5s} {batch:6d} {result.name:13s} {result.samples_per_s:10.0f} samples/s",
                          file=sys.stderr)

    report(results, args, note)


def report(results: list[Result], args: argparse.Namespace, note: str) -> None:
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    header = (f"aetrain throughput, {time.strftime('%Y-%m-%d')}, {device}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {args.samples} samples, batch {','.join(map(str, args.batch))}"
              + (f", compiled ({args.compile_mode})" if args.compile else "")
              + (f", trainer.cuda_graphs={args.cuda_graphs}" if args.device.startswith("cuda") else "")
              + f", diagnostics {args.diagnostics}")
    print(header)
    print(f"{'workload':8s} {'batch':>6s} {'entry':13s} {'samples/s':>10s} {'epoch s':>8s} {'x limit':>8s} "
          f"{'x graph':>8s} {'x lightning':>11s} {'peak MB':>8s}")
    rows = []
    for r in results:
        def ratio(name: str) -> float:
            other = next((x for x in results if (x.workload, x.batch, x.name) == (r.workload, r.batch, name)), None)
            return r.samples_per_s / other.samples_per_s if other else float("nan")

        vs_limit, vs_graph, vs_light = ratio("limit"), ratio("graph"), ratio("lightning")
        print(f"{r.workload:8s} {r.batch:6d} {r.name:13s} {r.samples_per_s:10.0f} {r.samples / r.samples_per_s:8.3f} "
              f"{vs_limit:8.3f} {vs_graph:8.3f} {vs_light:11.2f} {r.peak_mb:8.0f}")
        rows.append({"workload": r.workload, "batch": r.batch, "entry": r.name, "samples_per_s": r.samples_per_s,
                     "epoch_s": r.epoch_s, "vs_limit": vs_limit, "vs_graph": vs_graph, "vs_lightning": vs_light,
                     "peak_mb": r.peak_mb})
    if note:
        print(note)
    payload = {"header": header, "device": device, "notes": [note] if note else [], "results": rows}
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
