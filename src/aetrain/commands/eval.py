"""`aetrain eval <run dir>`: how well a trained model reconstructs, against PCA with as many components
as its code, and how useful its codes are as features.

On the run's validation split by default (or any split, or other data): per-sample errors
(eval/per_sample.csv), MSE, MAE, PSNR and, for images, SSIM for the autoencoder and for PCA fitted
on the run's training split (eval/metrics.json), a histogram of both methods' per-sample errors
(eval/errors.png) and the worst-reconstructed samples (eval/worst.png). Where the data has labels,
a logistic-regression probe is fitted on the run's training split and scored on the evaluated
samples, on three feature sets: the codes, PCA's codes of the same size, and the raw inputs.
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
from aetrain.commands.metrics import PCABaseline, data_range, probe_accuracy, quality, ssim_window
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
    resolve_split,
    table,
    warn_outside_training_range,
)
from aetrain.config import DataConfig, EvalConfig, validate_command
from aetrain.rundir import EVAL, EVAL_FILES

log = logging.getLogger(__name__)


def evaluate(run: str | Path, cfg: EvalConfig, data: DataConfig | None = None) -> dict[str, Any]:
    """Evaluate the model at `run` on `data` (None: the run's own); writes <run dir>/eval/ (or cfg.out) and
    returns what metrics.json holds."""
    validate_command("eval", cfg)
    folder = output_folder(run, cfg.out, EVAL)
    trained = open_run(run, cfg.device, "eval.device")
    target = RunData.of(trained, data)
    own = target if target.own else RunData.of(  # PCA and the probes are fitted on the run's own data
        trained, None, needed_for="aetrain eval fits PCA and the probes on its training split")
    split = resolve_split(cfg.split, target.own, "val")
    samples = target.select(split)
    require_samples(samples)
    train = own.select("train")
    warn_outside_training_range(samples, trained.spec)

    codes, recons = trained.forward(samples.x)
    ae = quality(samples.x, recons, trained.spec)
    pca = PCABaseline(train.x, trained.cfg.model.latent_dim)
    pca_recons = pca.reconstruct(samples.x)
    base = quality(samples.x, pca_recons, trained.spec)
    value_range = data_range(trained.spec)
    probe = _probe(trained, cfg, train, samples, codes, pca, target.own and split in ("train", "all"))

    unit = trained.units
    result = {
        "command": "eval", "run": str(trained.run_dir), "checkpoint": str(trained.checkpoint),
        "epoch": trained.epoch,
        "model": trained.cfg.model.name, "latent_dim": trained.cfg.model.latent_dim,
        "data": {"name": target.cfg.name, "own": target.own, "split": split, "num_samples": len(samples)},
        "units": unit, "data_range": value_range,
        "ssim_window": ssim_window(trained.spec.shape) if trained.is_image else None,
        "autoencoder": ae.summary(value_range),
        "pca": {"components": pca.components, "fit_samples": pca.fit_samples, **base.summary(value_range)},
        "probe": probe,
    }
    out = Outputs(folder, EVAL_FILES)
    out.add("metrics.json", json_text(result))
    out.add("per_sample.csv", _per_sample_csv(samples, ae, base))
    title = f"{samples.description}: {trained.description}"
    out.add("errors.png", figures.error_histogram(
        [("autoencoder", ae.mse, figures.AE), (pca.name, base.mse, figures.PCA)], title, trained.short_units))
    out.add("worst.png", _worst(trained, samples, recons, ae.mse, cfg.num_worst))
    written = out.write()

    s, b = result["autoencoder"], result["pca"]
    rows = [["MSE", s["mse"], b["mse"]], ["MAE", s["mae"], b["mae"]], ["PSNR (dB)", s["psnr_db"], b["psnr_db"]]]
    if trained.is_image:
        rows.append(["SSIM", s["ssim"], b["ssim"]])
    if "codes" in probe:
        rows.append(["probe accuracy", probe["codes"], probe["pca"]])
    lines = [f"aetrain eval: {trained.run_dir} ({trained.description})",
             f"  on {samples.description}; errors in {unit}",
             *table(rows, ["", "autoencoder", pca.name])]
    if "codes" in probe:
        lines.append(f"  probe on raw inputs: {probe['raw']:.4g} (logistic regression fitted on "
                     f"{probe['train_samples']} training samples, scored on {probe['test_samples']})")
    else:
        lines.append(f"  probe: {probe['skipped']}")
    lines.append(f"  wrote {', '.join(relative(p, trained.run_dir) for p in written)}")
    log_lines(lines)
    return result


def _probe(trained: Trained, cfg: EvalConfig, train: Samples, samples: Samples, codes: torch.Tensor,
           pca: PCABaseline, overlaps_training: bool) -> dict[str, Any]:
    """Probe accuracies on codes, PCA codes and raw inputs; or {"skipped": why}."""
    if cfg.probe_samples == 0:
        return {"skipped": "eval.probe_samples=0"}
    if train.labels is None or samples.labels is None:
        return {"skipped": "the data has no labels"}
    classes = np.unique(train.labels)
    if len(classes) < 2:
        return {"skipped": f"the run was trained on one class ({classes.tolist()}): nothing to tell apart"}
    keep = np.isin(samples.labels, classes)  # a probe can only name the classes it was fitted on
    if overlaps_training:
        keep &= samples.role != "train"  # scored on samples it did not see
    if not keep.any():
        return {"skipped": "no evaluated sample outside the training split has a class the probe knows"}
    test = samples.subset(keep)
    test_codes = codes[torch.from_numpy(keep)]
    rng = np.random.default_rng(0)
    pick = np.sort(rng.permutation(len(train))[: cfg.probe_samples])
    fit = train.subset(np.isin(np.arange(len(train)), pick))
    fit_codes = trained.forward(fit.x)[0]
    result: dict[str, Any] = {"train_samples": len(fit), "test_samples": len(test), "classes": len(classes)}
    slow = []
    for name, a, b in [("codes", fit_codes.numpy(), test_codes.numpy()), ("pca", pca.codes(fit.x), pca.codes(test.x)),
                       ("raw", fit.x.flatten(1).numpy(), test.x.flatten(1).numpy())]:
        result[name], converged = probe_accuracy(a, fit.labels, b, test.labels)
        slow += [] if converged else [name]
    if slow:
        result["not_converged"] = slow
        log.warning("probe: logistic regression did not converge in 1000 iterations on: %s", ", ".join(slow))
    return result


def _per_sample_csv(samples: Samples, ae: Any, base: Any) -> str:
    columns = {"index": samples.index}
    if samples.role is not None:
        columns["split"] = samples.role
    if samples.labels is not None:
        columns["label"] = samples.labels
    columns |= {"mse": ae.mse, "mae": ae.mae}
    if ae.ssim is not None:
        columns["ssim"] = ae.ssim
    columns |= {"pca_mse": base.mse, "pca_mae": base.mae}
    if base.ssim is not None:
        columns["pca_ssim"] = base.ssim
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for i in range(len(samples)):
        writer.writerow([_csv_value(v[i]) for v in columns.values()])
    return text.getvalue()


def _csv_value(v: Any) -> Any:
    return f"{v:.8g}" if isinstance(v, (float, np.floating)) else v


def _worst(trained: Trained, samples: Samples, recons: torch.Tensor, mse: np.ndarray, num: int) -> bytes:
    order = np.argsort(-mse, kind="stable")[:num]
    pick = torch.from_numpy(order)
    title = f"the {len(order)} worst-reconstructed of {samples.description}"
    label = (lambda i: f" ({samples.labels[i]})") if samples.labels is not None else (lambda i: "")  # noqa: E731
    captions = [f"#{samples.index[i]}{label(i)}\n{mse[i]:.3g}" for i in order]
    labelled = " (label)" if samples.labels is not None else ""
    if trained.is_image:
        x, x_hat = samples.x[pick], recons[pick]
        if not trained.spec.unit_interval:  # standardized images: shown over the originals' range
            low, high = float(x.min()), float(x.max())
            x, x_hat = ((t - low) / max(high - low, 1e-12) for t in (x, x_hat))
        return figures.worst_images(x.clamp(0, 1), x_hat.clamp(0, 1), mse[order],
                                    f"{title}\n(under each: sample index{labelled} and MSE)", captions)
    return figures.worst_rows(samples.x[pick].numpy(), recons[pick].numpy(),
                              f"{title} (sample index{labelled} and MSE)", captions, trained.short_units)
