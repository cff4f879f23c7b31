"""`aetrain score`: reconstruction error as an anomaly score, its threshold, and AUROC beside PCA and
IsolationForest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import aetrain
from aetrain.config import DataConfig
from aetrain.data import load_source
from conftest import FAST


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_score_flags_above_the_validation_quantile_and_reports_auroc_beside_the_baselines(cli, trained) -> None:
    run = trained(*FAST, "data.classes=[0]", "model.latent_dim=8")
    result = cli.command("score", str(run), "device=cpu")
    assert result.returncode == 0, result.err
    split = json.loads((run / "split.json").read_text())
    source = load_source(DataConfig())
    labels = source.labels.numpy()
    rows = read_csv(run / "score/scores.csv")
    others = np.nonzero(labels != 0)[0].tolist()
    assert [int(r["index"]) for r in rows] == sorted(split["val"] + others)  # held out: validation and other classes
    assert {r["split"] for r in rows} == {"val", "excluded"} and len(split["val"]) == 36

    model = aetrain.load_model(run)
    errors = lambda idx: ((model.reconstruct(source.samples[idx]) - source.samples[idx]) ** 2).flatten(1).mean(1)  # noqa: E731
    threshold = float(np.quantile(errors(split["val"]).numpy(), 0.99))
    scores = np.array([float(r["score"]) for r in rows])
    np.testing.assert_allclose(scores, errors([int(r["index"]) for r in rows]).numpy(), rtol=1e-5)
    metrics = json.loads((run / "score/metrics.json").read_text())
    assert metrics["threshold"]["value"] == pytest.approx(threshold, rel=1e-5)
    assert metrics["threshold"]["of_them_scored"] == 36  # the digit's validation samples set it, and are scored
    assert "note: 36 of the scored samples are of the validation samples the threshold comes from" in result.out
    assert [int(r["flagged"]) for r in rows] == [int(s > metrics["threshold"]["value"]) for s in scores]

    from sklearn.metrics import average_precision_score, roc_auc_score

    anomaly = np.array([int(r["anomaly"]) for r in rows])
    assert anomaly.tolist() == [int(labels[int(r["index"])] != 0) for r in rows] and metrics["normal_classes"] == [0]
    detection = metrics["detection"]
    for key, column in [("autoencoder", "score"), ("pca", "pca_score"), ("isolation_forest", "isolation_forest_score")]:
        values = np.array([float(r[column]) for r in rows])
        assert detection[key]["auroc"] == pytest.approx(roc_auc_score(anomaly, values), abs=1e-6)
        assert detection[key]["average_precision"] == pytest.approx(average_precision_score(anomaly, values), abs=1e-6)
    for line in ("autoencoder", "PCA-8", "IsolationForest", "AUROC"):
        assert line in result.out
    assert (run / "score/roc.png").is_file() and (run / "score/scores.png").is_file()


def test_with_a_test_split_the_test_samples_are_scored_and_validation_sets_the_threshold(
        cli, trained, tmp_path) -> None:
    run = trained(*FAST, "data.classes=[1]", "data.test_fraction=0.2")
    result = cli.command("score", str(run), "device=cpu", "quantile=0.5", f"out={tmp_path}")
    assert result.returncode == 0, result.err
    split = json.loads((run / "split.json").read_text())
    rows = read_csv(tmp_path / "scores.csv")
    assert {int(r["index"]) for r in rows if r["split"] != "excluded"} == set(split["test"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["threshold"]["validation_samples"] == len(split["val"]) and metrics["threshold"]["quantile"] == 0.5
    assert metrics["threshold"]["of_them_scored"] == 0 and "by construction" not in result.out


def test_a_run_on_every_class_is_told_its_flags_hold_by_construction(cli, trained) -> None:
    """Without data.classes or a test split, score scores the very samples its threshold comes from: "4 of 359
    flagged" is the 0.99 quantile, whatever the model."""
    run = trained(*FAST)
    result = cli.command("score", str(run), "device=cpu")
    assert result.returncode == 0, result.err
    metrics = json.loads((run / "score/metrics.json").read_text())
    assert metrics["threshold"]["of_them_scored"] == metrics["data"]["num_samples"] == 359 and metrics["flagged"] == 4
    assert ("  note: every scored sample is one of the validation samples the threshold comes from, so about 1% of "
            "those are flagged by construction, anomalous or not; to score samples the threshold did not see, train "
            "with data.test_fraction > 0 (or data.classes=[...]), or score other data\n") in result.out


def test_tabular_rows_with_a_labels_file_are_scored_the_same_way(cli, trained, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(300, 2)) @ rng.normal(size=(2, 8))  # rows on a 2-d plane in 8 dimensions
    odd = rng.normal(size=(60, 8)) * 2  # rows off the plane
    np.save(tmp_path / "rows.npy", np.concatenate([normal, odd]).astype(np.float32))
    np.save(tmp_path / "labels.npy", np.repeat([0, 1], [300, 60]))
    run = trained("data=tensor_file", f"data.path={tmp_path / 'rows.npy'}", f"data.labels={tmp_path / 'labels.npy'}",
                  "data.classes=[0]", "model.latent_dim=2", "trainer.max_epochs=40")
    result = cli.command("score", str(run), "device=cpu")
    assert result.returncode == 0, result.err
    metrics = json.loads((run / "score/metrics.json").read_text())
    assert metrics["data"]["num_samples"] == 60 + 60 and metrics["anomalies"] == 60
    assert metrics["detection"]["autoencoder"]["auroc"] > 0.9

    # the same data without its labels: scores and flags, no AUROC, and the earlier ROC curve is gone
    result = cli.command("score", str(run), "data.labels=null", "device=cpu")
    assert result.returncode == 0, result.err
    assert "no AUROC: the data has no labels" in result.out
    metrics = json.loads((run / "score/metrics.json").read_text())
    assert metrics["data"]["num_samples"] == 360 and metrics["detection"] == {"skipped": "the data has no labels"}
    assert "label" not in read_csv(run / "score/scores.csv")[0] and not (run / "score/roc.png").exists()


# Settings that get the autoencoder there: the preset's dense_ae with a code of 8 (PCA's 8 components beside it),
# trained for 200 epochs on the ~142 training samples of one digit. (measured: see README, Anomaly detection)
ANOMALY_SETTINGS = ("model.latent_dim=8",)


@pytest.mark.slow
@pytest.mark.parametrize("digit", range(10))
def test_each_digit_trained_alone_tells_its_held_out_samples_from_the_other_digits(cli, tmp_path: Path,
                                                                                    digit: int) -> None:
    """Acceptance (#14): AUROC >= 0.95 on the digit's validation samples against every other digit."""
    train = cli(f"data.classes=[{digit}]", *ANOMALY_SETTINGS, "trainer.device=cpu", "outputs.plot_every=0",
                "outputs.tensorboard=false", "outputs.report=false", "diagnostics.enabled=false")  # the same numbers
    assert train.returncode == 0, train.err
    result = cli.command("score", str(train.run_dir), "device=cpu")
    assert result.returncode == 0, result.err
    detection = json.loads((train.run_dir / "score/metrics.json").read_text())["detection"]
    assert detection["autoencoder"]["auroc"] >= 0.95, detection
    assert {"pca", "isolation_forest"} <= set(detection) and "IsolationForest" in result.out


def test_score_histograms_bars_are_shares_of_each_group_as_their_label_says() -> None:
    """They were densities labelled 'each group sums to 1' and reached 175 (their areas summed to 1)."""
    from aetrain.commands.figures import SCORE_SHARE_LABEL, score_figure

    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.gamma(2.0, 0.002, 300), rng.gamma(2.0, 0.02, 40)])  # small errors: densities ~100
    anomaly = np.arange(340) >= 300
    fig = score_figure(scores, anomaly, float(np.quantile(scores[:300], 0.99)), "digits", "values in [0, 1]")
    ax = fig.axes[0]
    assert ax.get_ylabel() == SCORE_SHARE_LABEL == "share of the group's samples"
    fig.canvas.draw()
    label = ax.yaxis.label.get_window_extent()
    assert 0 <= label.y0 and label.y1 <= fig.bbox.height and label.x0 >= 0  # all of it on the picture
    from matplotlib.patches import Rectangle

    bars = [p for p in ax.patches if isinstance(p, Rectangle)]  # the filled histograms' bars (outlines: polygons)
    assert len({p.get_facecolor() for p in bars}) == 2
    for colour in {p.get_facecolor() for p in bars}:
        assert sum(p.get_height() for p in bars if p.get_facecolor() == colour) == pytest.approx(1.0)
