"""`aetrain eval`: reconstruction quality against PCA of the code's size, SSIM, and linear probes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aetrain.commands.metrics import ssim
from aetrain.config import DataConfig
from aetrain.data import load_source
from conftest import FAST, copy_run, metrics_rows


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_picture(path: Path, min_side: int = 200) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= min_side, (path, image.size)


def test_eval_reports_the_autoencoder_beside_pca_on_the_validation_split(cli, trained) -> None:
    run = trained(*FAST)
    result = cli.command("eval", str(run), "device=cpu")
    assert result.returncode == 0, result.err
    metrics = json.loads((run / "eval/metrics.json").read_text())
    split = json.loads((run / "split.json").read_text())
    assert metrics["data"] == {"name": "digits", "own": True, "split": "val", "num_samples": 359}

    # the autoencoder's MSE is the run's val/loss (an mse model, best.pt), measured on the same samples
    ae, pca = metrics["autoencoder"], metrics["pca"]
    assert ae["mse"] == pytest.approx(min(float(r["val/loss"]) for r in metrics_rows(run)), rel=1e-5)
    assert ae["psnr_db"] == pytest.approx(10 * math.log10(1 / ae["mse"]))  # data range 1: images in [0, 1]
    assert 0 < ae["ssim"] < 1 and metrics["ssim_window"] == 7

    # PCA with as many components as the code, fitted on the run's training split: computed here independently
    from sklearn.decomposition import PCA

    x = load_source(DataConfig()).samples.flatten(1).numpy()
    fitted = PCA(16).fit(x[split["train"]])
    val = x[split["val"]]
    expected = ((fitted.inverse_transform(fitted.transform(val)) - val) ** 2).mean()
    assert (pca["components"], pca["fit_samples"]) == (16, 1438)
    assert pca["mse"] == pytest.approx(expected, rel=1e-4)

    rows = read_csv(run / "eval/per_sample.csv")
    assert [int(r["index"]) for r in rows] == split["val"] and {r["split"] for r in rows} == {"val"}
    assert np.mean([float(r["mse"]) for r in rows]) == pytest.approx(ae["mse"], rel=1e-6)
    assert np.mean([float(r["pca_ssim"]) for r in rows]) == pytest.approx(pca["ssim"], rel=1e-6)

    probe = metrics["probe"]
    assert (probe["train_samples"], probe["test_samples"], probe["classes"]) == (1438, 359, 10)
    assert probe["raw"] > 0.9 and 0.1 < probe["codes"] <= 1 and 0.1 < probe["pca"] <= 1
    assert "PCA-16" in result.out and "probe accuracy" in result.out and "probe on raw inputs" in result.out
    for picture in ("errors.png", "worst.png"):
        assert_picture(run / "eval" / picture)


def test_eval_of_tabular_rows_with_labels_on_every_sample(cli, trained, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    rows = (rng.normal(size=(300, 5)) + labels[:, None] * 3) * [1, 10, 100, 1000, 1] + 50
    np.save(tmp_path / "rows.npy", rows.astype(np.float32))
    np.save(tmp_path / "labels.npy", labels)
    run = trained("data=tensor_file", f"data.path={tmp_path / 'rows.npy'}", f"data.labels={tmp_path / 'labels.npy'}",
                  "model.latent_dim=2", "trainer.max_epochs=5")
    result = cli.command("eval", str(run), "split=all", "device=cpu", f"out={tmp_path / 'ev'}")
    assert result.returncode == 0, result.err
    metrics = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert metrics["data"]["num_samples"] == 300 and metrics["autoencoder"]["ssim"] is None
    assert metrics["units"].startswith("model units: standardized")
    assert metrics["probe"]["test_samples"] == 60  # split=all: the probe is scored on the samples it did not fit
    rows = read_csv(tmp_path / "ev/per_sample.csv")
    assert len(rows) == 300 and "ssim" not in rows[0] and {r["split"] for r in rows} == {"train", "val"}
    assert_picture(tmp_path / "ev/worst.png")
    assert not (run / "eval").exists()  # out= writes there instead


def test_ssim_is_the_definition_of_wang_et_al() -> None:
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.random((3, 2, 7, 7)))
    b = (a + 0.1 * torch.from_numpy(rng.normal(size=(3, 2, 7, 7)))).clamp(0, 1)
    np.testing.assert_allclose(ssim(a, a, 1.0), 1.0)
    # a 7x7 image holds one 7x7 window: SSIM is the formula on Gaussian-weighted statistics, per channel
    g = np.exp(-((np.arange(7) - 3.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    expected = []
    for x, y in zip(a.numpy(), b.numpy()):
        per_channel = []
        for xc, yc in zip(x, y):
            mx, my = (w * xc).sum(), (w * yc).sum()
            vx, vy, cxy = (w * xc**2).sum() - mx**2, (w * yc**2).sum() - my**2, (w * xc * yc).sum() - mx * my
            c1, c2 = 0.01**2, 0.03**2
            per_channel.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
        expected.append(np.mean(per_channel))
    np.testing.assert_allclose(ssim(a, b, 1.0), expected, rtol=1e-10)
    assert (ssim(a, b, 1.0) < 1).all()


@pytest.mark.slow
def test_the_default_run_reconstructs_better_than_pca_with_as_many_components(cli, shared, tmp_path: Path) -> None:
    """Acceptance (#14): `aetrain` at its defaults (dense_ae, latent 16, 200 epochs), then `aetrain eval`.
    (The run is shared with test_doctor and test_lr_find.)"""
    run_dir = copy_run(shared("model=dense_ae"), tmp_path / "run")  # trained with exit code 0
    result = cli.command("eval", str(run_dir), "device=cpu")
    assert result.returncode == 0, result.err
    metrics = json.loads((run_dir / "eval/metrics.json").read_text())
    assert metrics["pca"]["components"] == 16
    assert metrics["autoencoder"]["mse"] < metrics["pca"]["mse"]
    assert metrics["autoencoder"]["ssim"] > metrics["pca"]["ssim"]
    assert all(0.5 < metrics["probe"][k] <= 1 for k in ("codes", "pca", "raw"))
