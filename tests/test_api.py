"""`aetrain.load_model`: a trained model back, taking data in the training data's form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import aetrain
from aetrain.config import DataConfig
from aetrain.data import build_data
from aetrain.errors import CheckpointError
from conftest import FAST


def test_load_model_from_a_run_dir_or_file_encodes_and_decodes_images(cli) -> None:
    result = cli(*FAST, "model=conv_ae", "model.latent_dim=5")
    model = aetrain.load_model(result.run_dir)  # the run's best.pt
    assert not model.training
    x = build_data(DataConfig(), torch.device("cpu"), seed=0).val[:16]  # images in [0, 1], (16, 1, 8, 8)
    z = model.encode(x)
    assert z.shape == (16, 5)
    torch.testing.assert_close(model.decode(z), model.reconstruct(x))
    assert model.reconstruct(x).shape == x.shape
    last = aetrain.load_model(result.run_dir / "checkpoints/last.pt")
    torch.testing.assert_close(last.encode(x), model.encode(x))  # 2 epochs, both improved: best == last


def test_validation_loss_matches_reconstructing_the_validation_split(cli) -> None:
    result = cli(*FAST)
    model = aetrain.load_model(result.run_dir)  # best.pt
    val = build_data(DataConfig(), torch.device("cpu"), seed=0).val
    mse = torch.nn.functional.mse_loss(model.reconstruct(val), val).item()
    best = min(float(r["val/loss"]) for r in result.metrics())
    assert mse == pytest.approx(best, rel=1e-5)


def test_tabular_model_takes_and_returns_rows_in_their_original_units(cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(400, 2))
    rows = (latent @ rng.normal(size=(2, 6)) * [1, 10, 100, 1, 10, 100] + 50).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    result = cli("data=tensor_file", f"data.path={tmp_path / 'rows.npy'}", "model.latent_dim=2", "trainer.max_epochs=30",
                 "trainer.device=cpu")
    assert result.returncode == 0, result.err
    model = aetrain.load_model(result.run_dir)
    x = torch.from_numpy(rows)
    rel = ((model.reconstruct(x) - x).pow(2).mean(0) / x.var(0)).max().item()
    assert rel < 0.1  # every feature, whatever its scale, comes back in its own units


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_loading_something_that_is_not_a_checkpoint_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        aetrain.load_model(path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        aetrain.load_model(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        aetrain.load_model(tmp_path)
