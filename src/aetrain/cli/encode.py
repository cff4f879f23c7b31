"""`aetrain encode <run dir> [key=value ...]`: the command line of `aetrain.commands.encode.encode`."""

from __future__ import annotations

from aetrain.cli.command import run_command

SUMMARY = "write the code of every sample (codes.npy, labels.npy) and a 2-D map of the codes"

DESCRIPTION = """
Encode every sample of the run's data (or split=train|val|test, or other data given with data=...).
A VAE's code is its posterior mean.

Writes <run dir>/encode/: codes.npy (n x latent_dim, float32), indices.npy (each row's sample index
in the dataset, as split.json numbers them), labels.npy (when the data has labels), codes.png (the
codes in 2-D, coloured by label, else by split: the codes themselves when 2-d, else their first two
principal components; map=tsne for t-SNE).
"""


def main(args: list[str]) -> None:
    from aetrain.config import EncodeConfig

    run_command("encode", args, EncodeConfig(), DESCRIPTION, "aetrain.commands.encode:encode")
