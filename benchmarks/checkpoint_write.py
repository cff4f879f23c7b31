"""What best.pt costs now that it is a file of its own rather than a hard link to last.pt.

For the default dense and conv models on the digits (Adam, one epoch trained so that the optimizer
holds its state), the checkpoint is serialized as training serializes it, then written the way the
Checkpointer writes it (temp file, fsync, rename, fsync of the folder), interleaved:
- `last`: last.pt alone, what every epoch writes;
- `last+best`: last.pt, then the same bytes again as best.pt, what an epoch that improves writes
  (before: last.pt, then a hard link, which wrote no data).
Both run on the background writer thread during training, so the training loop waits for neither
unless the next epoch ends first.

    python benchmarks/checkpoint_write.py                # 30 rounds each, medians
    python benchmarks/checkpoint_write.py --rounds 60 --dir /some/disk
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from aetrain.atomic import write_atomic
from aetrain.commands.train import build_parts
from aetrain.config import Config, DataConfig, OutputsConfig, TrainerConfig, default_choice
from aetrain.train import checkpoint
from aetrain.train.engine import Engine


def checkpoint_bytes(model: str) -> bytes:
    cfg = Config(model=default_choice("model", model), data=DataConfig(),
                 trainer=TrainerConfig(max_epochs=1, device="cpu"),
                 outputs=OutputsConfig(plot_every=0, tensorboard=False))
    cfg.diagnostics.enabled = False
    engine = Engine(build_parts(cfg), [])
    engine.fit()
    return checkpoint.serialize(checkpoint.payload(engine))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp) / "checkpoints"
        print(f"{'model':<10} {'bytes':>10} {'last ms':>9} {'last+best ms':>13} {'best adds ms':>13}")
        for model in ("dense_ae", "conv_ae"):
            data = checkpoint_bytes(model)
            last, both = [], []
            for _ in range(args.rounds):
                tic = time.perf_counter()
                write_atomic(folder / "last.pt", data, durable=True)
                last.append(time.perf_counter() - tic)
                tic = time.perf_counter()
                write_atomic(folder / "last.pt", data, durable=True)
                write_atomic(folder / "best.pt", data, durable=True)
                both.append(time.perf_counter() - tic)
            a, b = statistics.median(last) * 1e3, statistics.median(both) * 1e3
            print(f"{model:<10} {len(data):>10,} {a:>9.2f} {b:>13.2f} {b - a:>13.2f}")


if __name__ == "__main__":
    main()
