"""`aetrain score <run dir>`: reconstruction error as an anomaly score.

Every sample's score is its mean squared reconstruction error in model units. The threshold is
`score.quantile` of the scores of the run's validation split (samples of the kind trained on that
the model never fitted), and samples above it are flagged. Which samples are scored: by default
those the run held out (its test split if it has one, else its validation split) plus every sample
of a class it was not trained on (`data.classes`); with data given on the command line, every
sample of it.

Where labels are known, samples whose label is in `score.normal_classes` (default: the classes
trained on) are normal and the others anomalous; scikit-learn then gives the AUROC and the average
precision (anomalies as the positive class) of the autoencoder's scores and, on the same samples,
of two baselines fitted on the run's training split: PCA's reconstruction error with as many
components as the code has, and IsolationForest.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aetrain.commands import figures
from aetrain.commands.metrics import PCABaseline, isolation_forest_scores, per_sample_errors
from aetrain.commands.trained import (
    Outputs,
    RunData,
    Samples,
    Trained,
    json_text,
    log_lines,
    open_run,
    output_folder,
    relative,
    require_samples,
    table,
    warn_outside_training_range,
)
from aetrain.config import DataConfig, ScoreConfig, validate_command
from aetrain.errors import ConfigError
from aetrain.rundir import SCORE, SCORE_FILES

log = logging.getLogger(__name__)


def score(run: str | Path, cfg: ScoreConfig, data: DataConfig | None = None) -> dict[str, Any]:
    """Score the samples of `data` (None: the run's held-out ones) with the model at `run`; writes <run dir>/score/."""
    validate_command("score", cfg)
    folder = output_folder(run, cfg.out, SCORE)
    trained = open_run(run, cfg.device, "score.device")
    target = RunData.of(trained, data)
    own = target if target.own else RunData.of(  # the threshold and the baselines come from the run's own data
        trained, None, needed_for="aetrain score takes its threshold, PCA and IsolationForest from its splits")
    samples = _scored(target, cfg.split)
    require_samples(samples)
    normal_classes = cfg.normal_classes if cfg.normal_classes is not None else trained.cfg.data.classes
    anomaly = _anomalies(samples, normal_classes)  # before the work: score.normal_classes may name no label
    warn_outside_training_range(samples, trained.spec)
    val, train = own.select("val"), own.select("train")

    scores = _errors(trained, samples.x)
    threshold = float(np.quantile(_errors(trained, val.x), cfg.quantile))
    flagged = scores > threshold
    # the run's validation samples among those scored: about 1 - quantile of them are flagged by construction
    same = int(np.isin(samples.index, val.index).sum()) if target.own else 0
    pca = PCABaseline(train.x, trained.cfg.model.latent_dim)
    pca_scores = per_sample_errors(samples.x, pca.reconstruct(samples.x))[0]
    forest_scores = isolation_forest_scores(train.x, samples.x, cfg.seed)

    methods = [("autoencoder", scores, figures.AE), (pca.name, pca_scores, figures.PCA),
               ("IsolationForest", forest_scores, figures.FOREST)]
    detection, reason = _detection(methods, anomaly)

    result: dict[str, Any] = {
        "command": "score", "run": str(trained.run_dir), "checkpoint": str(trained.checkpoint),
        "epoch": trained.epoch,
        "model": trained.cfg.model.name, "latent_dim": trained.cfg.model.latent_dim,
        "data": {"name": target.cfg.name, "own": target.own, "scored": samples.description,
                 "num_samples": len(samples)},
        "units": trained.units,
        "threshold": {"value": threshold, "quantile": cfg.quantile, "validation_samples": len(val),
                      "of_them_scored": same},
        "flagged": int(flagged.sum()),
        "normal_classes": normal_classes,
        "class_names": list(samples.class_names) if samples.class_names is not None else None,
        "anomalies": None if anomaly is None else int(anomaly.sum()),
        "detection": detection if detection else {"skipped": reason},
    }
    if anomaly is not None:
        result["flagged_anomalies"] = int((flagged & anomaly).sum())
        result["flagged_normal"] = int((flagged & ~anomaly).sum())

    out = Outputs(folder, SCORE_FILES)
    out.add("metrics.json", json_text(result))
    out.add("scores.csv", _scores_csv(samples, scores, flagged, anomaly, pca_scores, forest_scores))
    title = f"{samples.description}\n{trained.description}"
    if detection:
        out.add("roc.png", figures.roc_curves([(name, *_roc(anomaly, s), detection[key]["auroc"], colour)
                                               for (name, s, colour), key in zip(methods, detection)],
                                              f"normal: {_classes(samples, normal_classes)}, anomalous: the "
                                              f"others\n{title}"))
    out.add("scores.png", figures.score_histograms(scores, anomaly if detection else None, threshold, title,
                                                   trained.short_units))
    written = out.write()
    log_lines(_report(trained, cfg, result, samples, detection, reason, pca.name, written))
    return result


def _classes(samples: Samples, classes: list[int] | None) -> str:
    """"classes [0, 2]", with the labels' names where they have them: "classes 0 (ant), 2 (cat)"."""
    if classes is None or samples.class_names is None:
        return f"classes {classes}"
    return f"class{'es' if len(classes) > 1 else ''} {', '.join(samples.label_name(c) for c in classes)}"


def _scored(target: RunData, split: str) -> Samples:
    """The samples to score: split=auto is the run's held-out samples (test, else val, and every sample of a class
    not trained on); every sample of other data."""
    if split != "auto":
        return target.select(split)
    if not target.own:
        return target.select("all")
    held_out = "test" if len(target.split.test) else "val"
    others = target.split.excluded()
    idx = torch.cat([target.split.val if held_out == "val" else target.split.test, others]).sort().values
    name = "validation" if held_out == "val" else "test"
    more = f" and {len(others)} of classes not trained on" if len(others) else ""
    return target.samples(idx, f"{len(idx) - len(others)} {name} samples{more} ({target.described})")


def _errors(trained: Trained, x: torch.Tensor) -> np.ndarray:
    return per_sample_errors(x, trained.forward(x)[1])[0]


def _anomalies(samples: Samples, normal_classes: list[int] | None) -> np.ndarray | None:
    """(n,) bool: the sample's label is not a normal class; None when labels or normal classes are unknown."""
    if samples.labels is None:
        return None
    if normal_classes is None:
        return np.zeros(len(samples), dtype=bool)  # trained on every class: every labelled sample is normal
    present = set(np.unique(samples.labels).tolist())
    missing = [c for c in normal_classes if c not in present]
    if len(missing) == len(normal_classes):
        raise ConfigError(f"score.normal_classes={normal_classes}: no scored sample has any of these labels; "
                          f"the labels are: {', '.join(map(str, sorted(present)[:20]))}")
    return ~np.isin(samples.labels, normal_classes)


def _detection(methods: list[tuple[str, np.ndarray, str]], anomaly: np.ndarray | None
               ) -> tuple[dict[str, dict[str, float]], str]:
    """AUROC and average precision of each method, keyed autoencoder, pca, isolation_forest; or ({}, why not)."""
    if anomaly is None:
        return {}, "the data has no labels"
    if anomaly.all() or not anomaly.any():
        kind = "anomalous" if anomaly.all() else "normal"
        return {}, (f"every scored sample is {kind}; set score.normal_classes (the labels that are normal) or score "
                    "data with both kinds")
    from sklearn.metrics import average_precision_score, roc_auc_score

    keys = ("autoencoder", "pca", "isolation_forest")
    return {key: {"auroc": float(roc_auc_score(anomaly, s)),
                  "average_precision": float(average_precision_score(anomaly, s))}
            for key, (_, s, _) in zip(keys, methods)}, ""


def _roc(anomaly: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(anomaly, scores)
    return fpr, tpr


def _scores_csv(samples: Samples, scores: np.ndarray, flagged: np.ndarray, anomaly: np.ndarray | None,
                pca_scores: np.ndarray, forest_scores: np.ndarray) -> str:
    columns: dict[str, Any] = {"index": samples.index}
    if samples.role is not None:
        columns["split"] = samples.role
    if samples.labels is not None:
        columns["label"] = samples.labels
    if anomaly is not None:
        columns["anomaly"] = anomaly.astype(int)
    columns |= {"score": scores, "flagged": flagged.astype(int), "pca_score": pca_scores,
                "isolation_forest_score": forest_scores}
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for i in range(len(samples)):
        writer.writerow([f"{v[i]:.8g}" if isinstance(v[i], (float, np.floating)) else v[i] for v in columns.values()])
    return text.getvalue()


def _report(trained: Trained, cfg: ScoreConfig, result: dict[str, Any], samples: Samples,
            detection: dict[str, dict[str, float]], reason: str, pca_name: str, written: list[Path]) -> list[str]:
    t = result["threshold"]
    lines = [f"aetrain score: {trained.run_dir} ({trained.description})",
             f"  scored {samples.description}",
             f"  threshold {t['value']:.4g} = the {cfg.quantile:g} quantile of the errors of {t['validation_samples']} "
             f"validation samples: {result['flagged']} of {len(samples)} flagged"]
    if t["of_them_scored"]:
        share = f"{100 * (1 - cfg.quantile):.3g}%"
        which = ("every scored sample is one" if t["of_them_scored"] == len(samples) else
                 f"{t['of_them_scored']} of the scored samples are")
        lines.append(f"  note: {which} of the validation samples the threshold comes from, so about {share} of "
                     f"those are flagged by construction, anomalous or not; to score samples the threshold did not "
                     "see, train with data.test_fraction > 0 (or data.classes=[...]), or score other data")
    if detection:
        normal = len(samples) - result["anomalies"]
        lines.append(f"  normal: {_classes(samples, result['normal_classes'])} ({normal} samples); "
                     f"anomalous: the other {result['anomalies']}, of which {result['flagged_anomalies']} flagged; "
                     f"{result['flagged_normal']} normal samples flagged")
        names = {"autoencoder": "autoencoder", "pca": pca_name, "isolation_forest": "IsolationForest"}
        lines += table([[names[k], v["auroc"], v["average_precision"]] for k, v in detection.items()],
                       ["", "AUROC", "average precision"])
    else:
        lines.append(f"  no AUROC: {reason}")
    lines.append(f"  wrote {', '.join(relative(p, trained.run_dir) for p in written)}")
    return lines
