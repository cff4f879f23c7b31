"""`aetrain export`: the model, encoder and decoder with the scaling built in, checked in onnxruntime (or torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import aetrain
from conftest import FAST


def serve_onnx(path: Path, feed: np.ndarray) -> np.ndarray:
    """What a user's serving code does: onnxruntime on the CPU, float32 in."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: feed.astype(np.float32)})[0]


def assert_serves_like_the_python_api(run: Path, x: np.ndarray, tol: float = 1e-4) -> None:
    """The exported graphs take raw inputs in the training data's form, at any batch size, and give what
    `aetrain.load_model` gives (differences in model units: divided by the stored scale)."""
    model = aetrain.load_model(run)
    scale = model.scaling.scale.numpy()
    with torch.no_grad():
        z = model.encode(torch.from_numpy(x)).numpy()
        x_hat = model.reconstruct(torch.from_numpy(x)).numpy()
    for batch in (x, x[:1]):  # the batch axis is dynamic
        n = len(batch)
        assert np.abs((serve_onnx(run / "export/model.onnx", batch) - x_hat[:n]) / scale).max() <= tol
        assert np.abs(serve_onnx(run / "export/encoder.onnx", batch) - z[:n]).max() <= tol
        assert np.abs((serve_onnx(run / "export/decoder.onnx", z[:n]) - x_hat[:n]) / scale).max() <= tol


def test_onnx_export_of_a_dense_run_serves_raw_digits_in_onnxruntime(cli, trained) -> None:
    run = trained(*FAST)
    result = cli.command("export", str(run))
    assert result.returncode == 0, result.err
    info = json.loads((run / "export/export.json").read_text())
    assert info["format"] == "onnx" and info["parts"]["encoder"]["output"] == {"z": ["batch", 16]}
    assert max(info["check"]["max_difference_model_units"].values()) <= 1e-4
    assert "checked in onnxruntime" in result.out
    from aetrain.config import DataConfig
    from aetrain.data import load_source

    assert_serves_like_the_python_api(run, load_source(DataConfig()).samples[:37].numpy())


def test_an_export_that_fails_its_check_writes_nothing(cli, trained) -> None:
    run = trained(*FAST)
    before = sorted(p.name for p in run.iterdir())
    result = cli.command("export", str(run), "tolerance=1e-12", "out=" + str(run / "ep"))
    assert result.returncode == 1
    assert "differs from PyTorch by" in result.err
    assert "more than export.tolerance=1e-12; nothing was written" in result.err
    assert sorted(p.name for p in run.iterdir()) == before  # neither ep/ nor a staging folder


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export_data")
    rng = np.random.default_rng(0)
    np.save(root / "rgb.npy", rng.integers(0, 256, (80, 3, 12, 10), dtype=np.uint8))  # 0-255 values, 12x10
    np.save(root / "gray.npy", rng.random((80, 1, 9, 16)).astype(np.float32))  # [0, 1], odd size
    latent = rng.normal(size=(200, 3))
    rows = latent @ rng.normal(size=(3, 7)) * [1, 10, 100, 1000, 10000, 1, 1] + [0, 0, 0, 0, 5e4, -3, 0]
    np.save(root / "rows.npy", rows.astype(np.float32))  # standardized inside the model; units up to 1e4
    return root


RUNS = {
    "conv digits 1x8x8": ("model=conv_ae",),
    "conv rgb uint8 3x12x10": ("model=conv_ae", "data=tensor_file", "data.path={root}/rgb.npy"),
    "conv gray 1x9x16": ("model=conv_ae", "model.batch_norm=true", "data=tensor_file", "data.path={root}/gray.npy"),
    "dense rows": ("data=tensor_file", "data.path={root}/rows.npy", "model.latent_dim=3"),
    "vae conv digits": ("model=vae", "model.backbone=conv"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNS)
def test_onnx_round_trips_conv_and_dense_runs_of_any_shape(cli, trained, data_files: Path, name: str) -> None:
    """Acceptance (#14): several image sizes, 1 and 3 channels, tabular rows, within 1e-4 in onnxruntime."""
    args = [a.format(root=data_files) for a in RUNS[name]]
    run = trained(*args, "trainer.max_epochs=2", "data.batch_size=16")
    result = cli.command("export", str(run))
    assert result.returncode == 0, result.err
    if "data=tensor_file" in args:
        x = np.load(next(a.split("=", 1)[1] for a in args if a.startswith("data.path=")))[:23].astype(np.float32)
    else:
        from aetrain.config import DataConfig
        from aetrain.data import load_source

        x = load_source(DataConfig()).samples[:23].numpy()
    assert_serves_like_the_python_api(run, x)  # raw inputs: uint8 values 0-255, rows in their own units


@pytest.mark.slow
# the user's side of format=torchscript
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["torchscript", "exported_program"])
def test_torchscript_and_exported_programs_load_back_in_torch(cli, trained, fmt: str) -> None:
    run = trained(*FAST, "model=conv_ae")
    result = cli.command("export", str(run), f"format={fmt}")
    assert result.returncode == 0, result.err
    suffix = {"torchscript": ".torchscript.pt", "exported_program": ".pt2"}[fmt]
    load = ((lambda p: torch.jit.load(str(p))) if fmt == "torchscript"
            else (lambda p: torch.export.load(str(p)).module()))
    from aetrain.config import DataConfig
    from aetrain.data import load_source

    x = load_source(DataConfig()).samples[:5]
    model = aetrain.load_model(run)
    torch.testing.assert_close(load(run / f"export/model{suffix}")(x), model.reconstruct(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(load(run / f"export/encoder{suffix}")(x[:1]), model.encode(x[:1]).detach(), atol=1e-5,
                               rtol=0)
