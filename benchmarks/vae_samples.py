"""How recognisable a VAE's prior samples are: the measure behind the README's VAE numbers and tests/test_vae.py.

Trains `aetrain model=vae [overrides]` once per seed (in fresh processes, `trainer.seed=S`), decodes 400
draws from the prior N(0, I) and counts the share that a logistic regression trained on all real digits
recognises with probability >= 0.9. Uniform noise gets about 0.11 and real held-out digits about 0.72.

    python benchmarks/vae_samples.py                                       # the preset's defaults, seeds 0-4
    python benchmarks/vae_samples.py --seeds 0,1 -- model.latent_dim=16 trainer.max_epochs=100
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def recognised(run_dir: Path, classifier: object, num: int = 400) -> float:
    import aetrain

    model = aetrain.load_model(run_dir)
    samples = model.sample(num, torch.Generator().manual_seed(0)).reshape(num, -1).numpy()
    return float((classifier.predict_proba(samples).max(1) >= 0.9).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated trainer.seed values")
    parser.add_argument("overrides", nargs="*", default=[])
    args = parser.parse_args()
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    classifier = LogisticRegression(max_iter=5000).fit(digits.data / 16.0, digits.target)
    shares = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            out = Path(tmp) / f"seed{seed}"
            subprocess.run([sys.executable, "-m", "aetrain", "model=vae", f"hydra.run.dir={out}",
                            f"trainer.seed={seed}", "trainer.device=cpu", "trainer.num_threads=1",
                            "outputs.plot_every=0", "outputs.tensorboard=false", *args.overrides],
                           check=True, capture_output=True)
            summary = json.loads((out / "summary.json").read_text())
            shares.append(recognised(out, classifier))
            print(f"seed {seed}: {shares[-1]:.3f} recognised, val/loss {summary['best_val_loss']:.5g}, "
                  f"{summary['wall_time_s']:.0f} s", flush=True)
    print(f"{' '.join(args.overrides) or 'defaults'}: median {statistics.median(shares):.3f}, "
          f"min {min(shares):.3f}, max {max(shares):.3f} over {len(shares)} seeds")


if __name__ == "__main__":
    main()
