"""`aetrain score <run dir> [key=value ...]`: the command line of `aetrain.commands.score.score`."""

from __future__ import annotations

from aetrain.cli.command import run_command

SUMMARY = "score anomalies by reconstruction error: threshold, flags, AUROC beside PCA and IsolationForest"

DESCRIPTION = """
Score samples by their reconstruction error (mean squared, model units) and flag those above the
score.quantile quantile of the run's validation errors. By default the scored samples are those the
run held out (its test split, else its validation split) and every sample of a class not trained
on (data.classes); with data given (data=... or data.path=... with data.labels=...), all of it.

With labels, samples of score.normal_classes (default: the classes trained on) are normal, the
others anomalous: AUROC and average precision of the autoencoder, and on the same samples of PCA's
reconstruction error and of IsolationForest, both fitted on the run's training split.

Writes <run dir>/score/: scores.csv (index, split, label, anomaly, score, flagged, and the two
baselines' scores), metrics.json, scores.png (score histograms of normal and anomalous samples, the
threshold), roc.png (with labels).
"""


def main(args: list[str]) -> None:
    from aetrain.config import ScoreConfig

    run_command("score", args, ScoreConfig(), DESCRIPTION, "aetrain.commands.score:score")
