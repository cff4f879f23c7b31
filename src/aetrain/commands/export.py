"""`aetrain export <run dir> format=onnx|torchscript|exported_program`: the model for inference outside aetrain.

Three graphs, each with a dynamic batch axis and the data scaling built in, so they take and give
data in the training data's form (data units: images in [0, 1], a tensor file's own values), as
`aetrain.load_model`'s `reconstruct`, `encode` and `decode` do:

    model    x (batch, *shape) float32 -> x_hat (batch, *shape)
    encoder  x (batch, *shape) float32 -> z (batch, latent_dim)     (a VAE: the posterior mean)
    decoder  z (batch, latent_dim)     -> x_hat (batch, *shape)

The graphs are written to a temporary folder, loaded back and run on real samples (the run's
validation split, or the data given) at two batch sizes: ONNX in onnxruntime, TorchScript with
torch.jit.load, an ExportedProgram with torch.export.load. The largest difference from the PyTorch
model, in model units (data units divided by the stored scale, so the bound means the same for
pixels and for rows in thousands), must stay within `export.tolerance`; only then are the files
moved into <run dir>/export/, with export.json describing them.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aetrain.commands.trained import RunData, Trained, json_text, log_lines, open_run, output_folder, relative, table
from aetrain.config import DataConfig, ExportConfig, validate_command
from aetrain.errors import AetrainError, ConfigError
from aetrain.models import Autoencoder
from aetrain.rundir import EXPORT, EXPORT_INFO, EXPORT_PARTS, EXPORT_SUFFIXES

log = logging.getLogger(__name__)

SUFFIX = EXPORT_SUFFIXES
NAMES = {"model": ("x", "x_hat"), "encoder": ("x", "z"), "decoder": ("z", "x_hat")}  # input, output


class ExportCheckFailed(AetrainError):
    """An exported graph computes something else than the PyTorch model (beyond the tolerance)."""

    exit_code = 1  # the command was fine; the export is not


class Reconstruct(nn.Module):
    """Data units in, reconstruction in data units out: `Autoencoder.reconstruct` without the Python checks."""

    def __init__(self, model: Autoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.scaling.inverse(m.generate(m.code(m.scaling(x))))  # (B, *shape) -> (B, *shape)


class Encode(nn.Module):
    def __init__(self, model: Autoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.code(self.model.scaling(x))  # (B, *shape) -> (B, latent_dim)


class Decode(nn.Module):
    def __init__(self, model: Autoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.scaling.inverse(self.model.generate(z))  # (B, latent_dim) -> (B, *shape)


WRAPPERS: dict[str, Callable[[Autoencoder], nn.Module]] = {"model": Reconstruct, "encoder": Encode, "decoder": Decode}


def export(run: str | Path, cfg: ExportConfig, data: DataConfig | None = None) -> dict[str, Any]:
    """Export the model at `run` as cfg.format, check it on real samples of `data` (None: the run's own
    validation split), and move it into <run dir>/export/ (or cfg.out). Returns what export.json holds."""
    validate_command("export", cfg)
    _require_libraries(cfg.format)
    folder = output_folder(run, cfg.out, EXPORT)
    trained = open_run(run, "cpu")
    target = RunData.of(trained, data)
    samples = target.select("val" if target.own else "all")
    idx = torch.arange(min(cfg.check_samples, len(samples)))
    if len(idx) == 0:
        raise ConfigError(f"export: no samples to check the export on ({samples.description})")
    x = _data_units(trained, samples.x[idx])  # (n, *shape): what a user would feed the graphs
    model = trained.model.float().eval()
    with torch.no_grad():
        inputs = {"x": x, "z": Encode(model)(x)}

    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent if folder.parent.exists() else None))
    try:
        differences = {}
        for part in EXPORT_PARTS:
            wrapper = WRAPPERS[part](model).eval()
            name_in, name_out = NAMES[part]
            path = staging / f"{part}{SUFFIX[cfg.format]}"
            WRITERS[cfg.format](wrapper, inputs[name_in], path, name_in, name_out)
            run_exported = LOADERS[cfg.format](path, name_in)
            differences[part] = _difference(trained, part, wrapper, run_exported, inputs[name_in])
        # a NaN difference passes `> tolerance`: any non-finite one fails, whichever part has it
        worst = next((p for p, d in differences.items() if not math.isfinite(d)), max(differences, key=differences.get))
        if not math.isfinite(differences[worst]) or differences[worst] > cfg.tolerance:
            raise ExportCheckFailed(
                f"export format={cfg.format}: {worst} differs from PyTorch by {differences[worst]:.3g} "
                f"(model units) on the first {len(idx)} of {samples.description}, "
                + ("not a finite number" if not math.isfinite(differences[worst]) else
                   f"more than export.tolerance={cfg.tolerance:g}") + "; nothing was written")
        info = _info(trained, cfg, samples.description, len(idx), differences)
        (staging / EXPORT_INFO).write_text(json_text(info))
        written = _move_into(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    checked = "onnxruntime" if cfg.format == "onnx" else {"torchscript": "torch.jit.load",
                                                          "exported_program": "torch.export.load"}[cfg.format]
    log_lines([f"aetrain export: {trained.run_dir} ({trained.description}) as {cfg.format}",
               f"  checked in {checked} on the first {len(idx)} of {samples.description}, at batch sizes "
               f"{len(idx)} and 1; largest difference from PyTorch in model units:",
               *table([[part, NAMES[part][0], NAMES[part][1], differences[part]] for part in EXPORT_PARTS],
                      ["", "input", "output", "max |difference|"]),
               f"  inputs and outputs in data units: {trained.model.input_units}",
               f"  wrote {', '.join(relative(p, trained.run_dir) for p in written)}"])
    return info


def _require_libraries(fmt: str) -> None:
    if fmt != "onnx":
        return
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"format=onnx needs {', '.join(missing)}: pip install 'aetrain[export]'")


def _data_units(trained: Trained, x: torch.Tensor) -> torch.Tensor:
    scaling = trained.model.scaling
    with torch.no_grad():
        return scaling.inverse(x.to(scaling.shift.device)).float().contiguous()


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1)


def _write_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path, name_in: str, name_out: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        torch.onnx.export(wrapper, (example,), str(path), input_names=[name_in], output_names=[name_out],
                          dynamic_shapes=({0: _batch_dim()},), dynamo=True, external_data=False, verbose=False)


def _write_torchscript(wrapper: nn.Module, example: torch.Tensor, path: Path, name_in: str, name_out: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch marks TorchScript deprecated; it still runs
        torch.jit.save(torch.jit.trace(wrapper, example), str(path))


def _write_exported_program(wrapper: nn.Module, example: torch.Tensor, path: Path, name_in: str, name_out: str) -> None:
    program = torch.export.export(wrapper, (example,), dynamic_shapes=({0: _batch_dim()},))
    torch.export.save(program, str(path))


def _load_onnx(path: Path, name_in: str) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {name_in: x.numpy()})[0])


def _load_torchscript(path: Path, name_in: str) -> Callable[[torch.Tensor], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path))
    return lambda x: module(x)


def _load_exported_program(path: Path, name_in: str) -> Callable[[torch.Tensor], torch.Tensor]:
    module = torch.export.load(str(path)).module()
    return lambda x: module(x)


WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "exported_program": _write_exported_program}
LOADERS = {"onnx": _load_onnx, "torchscript": _load_torchscript, "exported_program": _load_exported_program}


@torch.no_grad()
def _difference(trained: Trained, part: str, wrapper: nn.Module, exported: Callable[[torch.Tensor], torch.Tensor],
                x: torch.Tensor) -> float:
    """The largest |exported - PyTorch| over the samples, run as one batch and one sample at a time (the dynamic
    axis), in model units: outputs in data units are divided by the stored scale."""
    expected = wrapper(x)
    got = exported(x)
    single = torch.cat([exported(x[i : i + 1]) for i in range(min(len(x), 4))])
    if got.shape != expected.shape:
        raise ExportCheckFailed(f"export: {part} gives shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
    scale = trained.model.scaling.scale if part != "encoder" else torch.tensor(1.0)
    diff = ((got - expected).abs() / scale).max()
    diff_single = ((single - expected[: len(single)]).abs() / scale).max()
    return float(torch.maximum(diff, diff_single))


def _info(trained: Trained, cfg: ExportConfig, description: str, n: int,
          differences: dict[str, float]) -> dict[str, Any]:
    shape = ["batch", *trained.spec.shape]
    code = ["batch", trained.cfg.model.latent_dim]
    return {
        "format": cfg.format, "run": str(trained.run_dir), "checkpoint": str(trained.checkpoint),
        "epoch": trained.epoch, "model": trained.cfg.model.name,
        "parts": {
            "model": {"file": f"model{SUFFIX[cfg.format]}", "input": {"x": shape}, "output": {"x_hat": shape}},
            "encoder": {"file": f"encoder{SUFFIX[cfg.format]}", "input": {"x": shape}, "output": {"z": code}},
            "decoder": {"file": f"decoder{SUFFIX[cfg.format]}", "input": {"z": code}, "output": {"x_hat": shape}},
        },
        "dtype": "float32",
        "units": f"inputs and outputs in data units: {trained.model.input_units}",
        "check": {"runtime": "onnxruntime" if cfg.format == "onnx" else "torch", "samples": description,
                  "num_samples": n, "max_difference_model_units": differences, "tolerance": cfg.tolerance},
        "torch_version": str(torch.__version__),
    }


def _move_into(staging: Path, folder: Path) -> list[Path]:
    """Move the checked files into `folder`, replacing an earlier export of the same format."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"out={folder}: exists and is not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(staging.iterdir(), key=lambda p: (p.name == EXPORT_INFO, p.name)):  # export.json last
        shutil.move(path, folder / path.name)  # a rename (atomic) when the staging folder is on the same file system
        written.append(folder / path.name)
    return written
