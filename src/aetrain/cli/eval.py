"""`aetrain eval <run dir> [key=value ...]`: the command line of `aetrain.commands.eval.evaluate`."""

from __future__ import annotations

from aetrain.cli.command import run_command

SUMMARY = "evaluate a trained model: per-sample errors, MSE/MAE/PSNR/SSIM beside PCA, linear probes"

DESCRIPTION = """
Reconstruct the run's validation split (or split=test|train|all, or other data given with data=...)
and compare the autoencoder with PCA fitted on the run's training split with as many components as the
code has. Errors are in model units (images in [0, 1]; standardized data in standard deviations), as
val/loss. Where the data has labels, a logistic-regression probe fitted on the training split is
scored on the codes, on PCA's codes and on the raw inputs.

Writes <run dir>/eval/: metrics.json, per_sample.csv (one row per sample), errors.png (histogram of
per-sample errors, both methods), worst.png (the worst-reconstructed samples).
"""


def main(args: list[str]) -> None:
    from aetrain.config import EvalConfig

    run_command("eval", args, EvalConfig(), DESCRIPTION, "aetrain.commands.eval:evaluate")
