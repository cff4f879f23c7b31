"""Labels, `data.classes`, the test split, and split.json: which samples a run trains, validates and tests on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import aetrain
from aetrain.config import DataConfig
from aetrain.data import build_data, load_source, split_samples
from aetrain.errors import DataError
from conftest import FAST, choose

CPU = torch.device("cpu")


def digits_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target


def test_without_test_fraction_or_classes_the_split_is_the_one_aetrain_always_made() -> None:
    source = load_source(DataConfig())
    split = split_samples(DataConfig(), source)
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(0))  # the split of before this change
    assert torch.equal(split.val, order[:359].sort().values) and torch.equal(split.train, order[359:].sort().values)
    assert len(split.test) == 0 and len(split.excluded()) == 0


def test_test_split_is_held_out_from_training_and_validation() -> None:
    cfg = DataConfig(test_fraction=0.1)
    data = build_data(cfg, CPU, seed=0)
    s = data.split
    assert (len(s.val), len(s.test), len(s.train)) == (359, 180, 1797 - 359 - 180)
    every = torch.cat([s.train, s.val, s.test])
    assert sorted(every.tolist()) == list(range(1797))  # disjoint, and together every sample
    assert data.num_train == len(s.train) and data.num_val == len(s.val)
    images = load_source(cfg).samples
    torch.testing.assert_close(data.val, images[s.val])  # digits are in [0, 1]: model units are data units


def test_classes_keep_only_samples_of_those_labels_before_splitting() -> None:
    labels = digits_labels()
    split = split_samples(DataConfig(classes=[3, 7]), load_source(DataConfig()))
    kept = np.nonzero(np.isin(labels, [3, 7]))[0]
    assert set(labels[split.train.numpy()]) == set(labels[split.val.numpy()]) == {3, 7}
    assert len(split.val) == round(len(kept) * 0.2) and len(split.train) + len(split.val) == len(kept)
    assert torch.equal(split.excluded(), torch.from_numpy(np.nonzero(~np.isin(labels, [3, 7]))[0]))


def test_classes_need_labels_that_exist(tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", np.random.rand(40, 3).astype(np.float32))
    with pytest.raises(DataError, match=r"data.classes=\[0\]: data=tensor_file has no labels; give one label per "
                                        r"sample with data.labels="):
        build_data(choose("data", "tensor_file", path=str(tmp_path / "rows.npy"), classes=[0]), CPU, seed=0)
    with pytest.raises(DataError, match=r"data.classes=\[12\]: no sample has label 12; the labels are: 0, 1, 2"):
        build_data(DataConfig(classes=[12]), CPU, seed=0)


def test_a_labels_file_gives_tensor_file_rows_their_classes(tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", np.random.rand(60, 3).astype(np.float32))
    np.save(tmp_path / "labels.npy", np.repeat([5, -1, 2], 20).astype(np.float64))  # whole-number floats are fine
    cfg = choose("data", "tensor_file", path=str(tmp_path / "rows.npy"), labels=str(tmp_path / "labels.npy"),
                 classes=[-1])
    source = load_source(cfg)
    assert source.labels.dtype == torch.long and source.labels.tolist() == [5] * 20 + [-1] * 20 + [2] * 20
    split = split_samples(cfg, source)
    assert set(split.train.tolist()) | set(split.val.tolist()) == set(range(20, 40))


@pytest.mark.parametrize(("labels", "message"), [
    (np.zeros(59), "59 labels for 60 samples"),
    (np.zeros((60, 2)), r"holds shape \(60, 2\); it should be a vector of 60 integer labels"),
    (np.full(60, 0.5), "labels must be integers"),
])
def test_bad_labels_files_are_one_line_errors(tmp_path: Path, labels: np.ndarray, message: str) -> None:
    np.save(tmp_path / "rows.npy", np.random.rand(60, 3).astype(np.float32))
    np.save(tmp_path / "labels.npy", labels)
    with pytest.raises(DataError, match=message):
        load_source(choose("data", "tensor_file", path=str(tmp_path / "rows.npy"), labels=str(tmp_path / "labels.npy")))


def test_image_folder_classes_are_its_subfolders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i, folder in enumerate(["cat", "ant", "cat", "bee", "ant"]):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / folder / f"{i}.png")
    cfg = choose("data", "image_folder", path=str(tmp_path), image_size=4, num_workers=0)
    assert load_source(cfg).labels.tolist() == [0, 0, 1, 2, 2]  # ant/0, ant/4, bee/3, cat/0, cat/2: sorted names
    Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / "loose.png")
    assert load_source(cfg).labels is None  # an image outside any class folder: unlabelled


def test_a_run_writes_its_split_and_validates_on_exactly_those_samples(cli) -> None:
    result = cli(*FAST, "data.test_fraction=0.1", "data.classes=[0,1,2]")
    assert result.returncode == 0, result.err
    saved = json.loads((result.run_dir / "split.json").read_text())
    labels = digits_labels()
    assert saved["num_samples"] == 1797 and saved["data"]["classes"] == [0, 1, 2]
    assert set(labels[saved["train"] + saved["val"] + saved["test"]]) == {0, 1, 2}
    assert len(saved["test"]) == round(537 * 0.1) and not set(saved["test"]) & set(saved["train"] + saved["val"])
    images = load_source(DataConfig()).samples
    model = aetrain.load_model(result.run_dir)
    val = images[saved["val"]]
    mse = torch.nn.functional.mse_loss(model.reconstruct(val), val).item()
    assert mse == pytest.approx(min(float(r["val/loss"]) for r in result.metrics()), rel=1e-5)


@pytest.mark.parametrize(("args", "message"), [
    (["data.test_fraction=1"], "data.test_fraction=1.0 is out of range: must be in [0, 1)"),
    (["data.test_fraction=0.8"], "data.test_fraction=0.8 is out of range: must be below 1 - data.val_fraction = 0.8"),
    (["data.classes=[]"], "data.classes=[] is out of range: must be a non-empty list of distinct labels"),
    (["data.classes=[1,1]"], "data.classes=[1, 1] is out of range"),
    (["data.classes=[10]"], "data.classes=[10]: no sample has label 10"),
    (["data.labels=y.npy"], "data.labels: unknown key for data=digits (a key of data=tensor_file)"),
])
def test_bad_split_keys_are_one_line_errors(cli, args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.returncode == 2 and result.err.count("\n") == 1 and message in result.err, result.err
    assert not result.run_dir.exists()


def test_an_edited_split_json_is_refused_saying_which_samples_differ(cli) -> None:
    result = cli(*FAST, "outputs.plot_every=0")
    path = result.run_dir / "split.json"
    saved = json.loads(path.read_text())
    moved = saved["val"][3]
    saved["val"].remove(moved)
    saved["train"] = sorted(saved["train"] + [moved])
    path.write_text(json.dumps(saved))
    for command in ("eval", "score", "encode"):
        refused = cli.command(command, str(result.run_dir))
        assert refused.returncode == 2 and refused.err.count("\n") == 1, refused.output
        assert (f"train/val/test 1438/359/0 now, 1439/358/0 in split.json; 1 sample in another split (sample {moved}: "
                f"train in split.json, val now)" in refused.err), refused.err
        assert "or split.json was edited" in refused.err


def test_an_image_folders_class_names_are_stored_with_the_run_and_used_by_the_commands(cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for c, folder in enumerate(["ant", "bee", "cat"]):
        (tmp_path / "imgs" / folder).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(rng.normal(60 + 70 * c, 20, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / folder / f"{i}.png")
    data = ["data=image_folder", f"data.path={tmp_path / 'imgs'}", "data.image_size=8", "data.grayscale=true",
            "data.num_workers=0", "data.val_fraction=0.25"]
    result = cli(*FAST, *data, "outputs.plot_every=0", "data.classes=[0,1]")
    assert result.returncode == 0, result.err
    assert json.loads((result.run_dir / "split.json").read_text())["class_names"] == ["ant", "bee", "cat"]
    ckpt = torch.load(result.run_dir / "checkpoints/last.pt", weights_only=True)
    assert ckpt["data_fingerprint"]["class_names"] == ["ant", "bee", "cat"]
    encoded = cli.command("encode", str(result.run_dir))
    assert encoded.returncode == 0 and "labels 0 (ant), 1 (bee), 2 (cat)" in encoded.out, encoded.output
    scored = cli.command("score", str(result.run_dir))
    assert scored.returncode == 0 and "normal: classes 0 (ant), 1 (bee) (" in scored.out, scored.output
    assert json.loads((result.run_dir / "score/metrics.json").read_text())["class_names"] == ["ant", "bee", "cat"]
    split = json.loads((result.run_dir / "split.json").read_text())
    del split["class_names"]  # a run from before names were stored: the folder still names them
    (result.run_dir / "split.json").write_text(json.dumps(split))
    assert "labels 0 (ant), 1 (bee), 2 (cat)" in cli.command("encode", str(result.run_dir)).out
