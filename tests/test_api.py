"""`aetrain.load_model`: a trained model back, taking data in the training data's form."""

from __future__ import annotations

import subprocess
import sys
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
    result = cli("data=tensor_file", f"data.path={tmp_path / 'rows.npy'}", "model.latent_dim=2",
                 "trainer.max_epochs=30", "trainer.device=cpu")
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


# --- what the API takes, per data kind (#16 item 5) ----------------------------------------------------

def test_numpy_arrays_and_float64_are_taken_as_float32_tensors(trained) -> None:
    model = aetrain.load_model(trained(*FAST))
    x = build_data(DataConfig(), torch.device("cpu"), seed=0).val[:8]
    expected = model.reconstruct(x)
    torch.testing.assert_close(model.reconstruct(x.double()), expected)
    torch.testing.assert_close(model.reconstruct(x.numpy().astype(np.float64)), expected)
    z = model.encode(x.numpy())
    assert isinstance(z, torch.Tensor) and z.dtype == torch.float32
    torch.testing.assert_close(model.decode(z.detach().numpy()), model.decode(z))


@pytest.mark.parametrize(("call", "given", "message"), [
    ("encode", np.zeros((8, 8)), r"x: shape \(8, 8\); this model takes \(N, 1, 8, 8\) \(images N x C x H x W\)"),
    ("reconstruct", torch.zeros(1, 8, 8), r"takes \(N, 1, 8, 8\) .* \(one sample\? add the batch axis: x\[None\]\)"),
    ("reconstruct", torch.zeros(4, 64), r"x: shape \(4, 64\); this model takes \(N, 1, 8, 8\)"),
    ("decode", torch.zeros(4, 3), r"z: shape \(4, 3\); this model takes \(N, 16\) \(codes\)"),
    ("encode", [[0.0] * 64], r"x: a list; this model takes a torch.Tensor or numpy array of shape \(N, 1, 8, 8\)"),
    ("encode", torch.full((2, 1, 8, 8), float("nan")), "x: contains NaN or infinite values"),
    ("encode", torch.zeros(2, 1, 8, 8, dtype=torch.bool), "x: dtype torch.bool; this model takes real numbers"),
    ("reconstruct", torch.full((2, 1, 8, 8), 255.0), r"x: values span \[255, 255\]; this model takes values in "
                                                      r"\[0, 1\].*; divide 0-255 pixel values by 255"),
])
def test_wrong_input_is_one_clear_error_saying_what_the_model_takes(trained, call: str, given: object,
                                                                     message: str) -> None:
    from aetrain.models.base import InputError

    model = aetrain.load_model(trained(*FAST))
    with pytest.raises(InputError, match=message) as info:
        getattr(model, call)(given)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_a_model_of_a_uint8_file_takes_and_gives_the_files_0_to_255_values(cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = (rng.random((200, 1, 6, 6)) < 0.3) * rng.integers(150, 256, (200, 1, 6, 6))  # sparse bright dots
    np.save(tmp_path / "images.npy", pixels.astype(np.uint8))
    result = cli("data=tensor_file", f"data.path={tmp_path / 'images.npy'}", "trainer.max_epochs=3",
                 "trainer.device=cpu", "outputs.plot_every=0")
    assert result.returncode == 0, result.err
    model = aetrain.load_model(result.run_dir)
    assert model.input_range == (0.0, 255.0) and "values in [0, 255]" in model.input_units
    x = torch.from_numpy(pixels[:16].astype(np.uint8))  # the file's own dtype is taken as it is
    x_hat = model.reconstruct(x)
    assert x_hat.dtype == torch.float32 and 0 <= x_hat.min() and x_hat.max() <= 255 and x_hat.max() > 20
    torch.testing.assert_close(model.reconstruct(x.float()), x_hat)
    with pytest.warns(UserWarning, match=r"every value is within \[0, 1\], but this model takes values in \[0, 255\]"):
        model.reconstruct(x.float() / 255)  # [0, 1] pixels given to a 0-255 model: most likely a mistake


# --- the package exposes its API only -------------------------------------------------------------------------------

def test_import_aetrain_exposes_its_api_and_nothing_else() -> None:
    out = subprocess.run([sys.executable, "-c", "import aetrain; print(sorted(n for n in dir(aetrain) if "
                          "not n.startswith('__')))"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['Config', 'ModelConfig', 'fit', 'load_model', 'register_model']"


def test_encode_decode_and_reconstruct_are_inference_unless_gradients_are_asked_for(trained) -> None:
    model = aetrain.load_model(trained(*FAST))
    x = build_data(DataConfig(), torch.device("cpu"), seed=0).val[:8]
    z = model.encode(x)
    for out in (z, model.decode(z), model.reconstruct(x)):
        assert not out.requires_grad and out.grad_fn is None
    assert model.encode(x.numpy()).numpy().shape == (8, 16)  # the common case: codes as numpy features
    x_in = x.clone().requires_grad_()
    loss = model.reconstruct(x_in, grad=True).square().sum() + model.decode(model.encode(x_in, grad=True),
                                                                             grad=True).sum()
    loss.backward()
    assert x_in.grad is not None and x_in.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())
