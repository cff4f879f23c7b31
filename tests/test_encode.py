"""`aetrain encode`: every sample's code, its labels and indices, and a 2-D map of the codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import aetrain
from aetrain.config import DataConfig
from aetrain.data import load_source
from conftest import FAST


@pytest.mark.parametrize("model", ["dense_ae", "vae"])
def test_encode_writes_the_code_of_every_sample_as_the_python_api_gives_it(cli, trained, model: str) -> None:
    run = trained(*FAST, f"model={model}", "model.latent_dim=16")  # the VAE's default is 4
    result = cli.command("encode", str(run), "device=cpu")
    assert result.returncode == 0, result.err
    codes = np.load(run / "encode/codes.npy")
    source = load_source(DataConfig())
    assert codes.shape == (1797, 16) and codes.dtype == np.float32
    with torch.no_grad():
        expected = aetrain.load_model(run).encode(source.samples)  # a VAE: its posterior mean
    np.testing.assert_allclose(codes, expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(np.load(run / "encode/labels.npy"), source.labels.numpy())
    np.testing.assert_array_equal(np.load(run / "encode/indices.npy"), np.arange(1797))
    with Image.open(run / "encode/codes.png") as image:
        assert image.size[0] > 400
    assert "principal components of the 16-d codes" in result.out


def test_encode_a_split_draws_a_tsne_map_and_leaves_no_stale_labels(cli, trained, tmp_path) -> None:
    run = trained(*FAST)
    out = tmp_path / "codes"
    result = cli.command("encode", str(run), "split=val", "map=tsne", "map_samples=100", "device=cpu", f"out={out}")
    assert result.returncode == 0, result.err
    split = json.loads((run / "split.json").read_text())
    np.testing.assert_array_equal(np.load(out / "indices.npy"), split["val"])
    assert np.load(out / "codes.npy").shape == (359, 16) and "t-SNE" in result.out
    rows = tmp_path / "rows.npy"
    np.save(rows, load_source(DataConfig()).samples[:50].numpy())  # the same kind of images, without labels
    result = cli.command("encode", str(run), "data=tensor_file", f"data.path={rows}", "device=cpu", f"out={out}")
    assert result.returncode == 0, result.err
    assert np.load(out / "codes.npy").shape == (50, 16)
    assert not (out / "labels.npy").exists()  # the earlier call's labels would describe other samples
