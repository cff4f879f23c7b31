"""`aetrain export <run dir> [key=value ...]`: the command line of `aetrain.commands.export.export`."""

from __future__ import annotations

from aetrain.cli.command import run_command

SUMMARY = "export the model, encoder and decoder to ONNX (or TorchScript, ExportedProgram), checked"

DESCRIPTION = """
Export three graphs with a dynamic batch axis and the data scaling built in, so they take and give
data in the training data's form (images in [0, 1], a tensor file's own values): model (x -> x_hat),
encoder (x -> z; a VAE's posterior mean) and decoder (z -> x_hat). Each is loaded back and run on real
samples (the run's validation split, or the data given) at two batch sizes, ONNX in onnxruntime; the
export fails (exit code 1, nothing written) when any output differs from PyTorch by more than
export.tolerance in model units.

Writes <run dir>/export/: model.onnx, encoder.onnx, decoder.onnx (format=torchscript: *.torchscript.pt,
format=exported_program: *.pt2) and export.json (inputs, outputs, units, the check's differences).
format=onnx needs the export extra: pip install 'aetrain[export]'.
"""


def main(args: list[str]) -> None:
    from aetrain.config import ExportConfig

    run_command("export", args, ExportConfig(), DESCRIPTION, "aetrain.commands.export:export")
