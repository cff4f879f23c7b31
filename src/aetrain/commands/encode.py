"""`aetrain encode <run dir>`: the code of every sample, for use as features elsewhere, and a 2-D map of them.

Writes into <run dir>/encode/: codes.npy (n, latent_dim) float32, in the order of indices.npy (each
row's index among the source's samples, the indices split.json uses), labels.npy when the data has
labels, and codes.png: the codes in two dimensions, coloured by label (by split when unlabelled).
The map is the codes themselves when the code has two dimensions, otherwise their first two
principal components (a linear projection: distances and clusters it shows are really there, though
it may overlap clusters that are apart in more dimensions), or t-SNE with map=tsne (which separates
clusters but distorts distances and global layout). A VAE's code is its posterior mean.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from aetrain.commands import figures
from aetrain.commands.trained import (
    Outputs,
    RunData,
    log_lines,
    open_run,
    output_folder,
    relative,
    require_samples,
    resolve_split,
)
from aetrain.config import DataConfig, EncodeConfig, validate_command
from aetrain.rundir import ENCODE, ENCODE_FILES

log = logging.getLogger(__name__)


def encode(run: str | Path, cfg: EncodeConfig, data: DataConfig | None = None) -> dict[str, Any]:
    """Encode the samples of `data` (None: the run's own) with the model at `run`; writes <run dir>/encode/."""
    validate_command("encode", cfg)
    folder = output_folder(run, cfg.out, ENCODE)
    trained = open_run(run, cfg.device, "encode.device")
    target = RunData.of(trained, data)
    split = resolve_split(cfg.split, target.own, "all")
    samples = target.select(split)
    require_samples(samples)
    codes = trained.forward(samples.x)[0].numpy().astype(np.float32)  # (n, latent_dim)

    rng = np.random.default_rng(0)
    shown = np.sort(rng.permutation(len(codes))[: cfg.map_samples])  # a seeded subset keeps t-SNE and the plot fast
    points, method, axes = _map(codes[shown], cfg.map)
    groups, group_title = (samples.labels[shown], "label") if samples.labels is not None else (
        (samples.role[shown], "split") if samples.role is not None else (None, ""))
    drawn = f"{len(shown)} of them" if len(shown) < len(codes) else "all"
    title = f"codes of {samples.description} ({drawn} drawn)\n{method}\n{trained.description}"

    out = Outputs(folder, ENCODE_FILES)
    out.add("codes.npy", _npy(codes))
    out.add("indices.npy", _npy(samples.index))
    if samples.labels is not None:
        out.add("labels.npy", _npy(samples.labels.astype(np.int64)))
    names = samples.class_names if samples.labels is not None else None
    out.add("codes.png", figures.code_map(points, groups, group_title, title, axes, class_names=names))
    written = out.write()
    log_lines([f"aetrain encode: {trained.run_dir} ({trained.description})",
               f"  {samples.description} -> codes {codes.shape[0]} x {codes.shape[1]}"
               + (f", labels {', '.join(samples.label_name(int(v)) for v in np.unique(samples.labels)[:20])}"
                  if samples.labels is not None else ""),
               f"  codes.png: {method}",
               f"  wrote {', '.join(relative(p, trained.run_dir) for p in written)}"])
    return {"num_samples": len(codes), "latent_dim": codes.shape[1], "map": method,
            "files": [str(p) for p in written]}


def _map(codes: np.ndarray, how: str) -> tuple[np.ndarray, str, tuple[str, str]]:
    """2-D points of `codes` (n, d), what they are, and the axis labels."""
    n, d = codes.shape
    if d == 1:  # one number per sample: spread the points vertically so they do not hide each other
        jitter = np.random.default_rng(0).uniform(-1, 1, n)
        return np.stack([codes[:, 0], jitter], 1), "the 1-d code (vertical position is random)", ("code", "jitter")
    if how == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(codes)
        return points, (f"t-SNE of the {d}-d codes (perplexity {perplexity:g}; "
                        "distances between clusters mean little)"), ("t-SNE 1", "t-SNE 2")
    if d == 2 and how == "auto":
        return codes, "the 2-d codes themselves", ("code 1", "code 2")
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=0).fit(codes)
    share = pca.explained_variance_ratio_
    return (pca.transform(codes), f"the first 2 principal components of the {d}-d codes "
            f"({100 * share.sum():.0f}% of their variance)",
            (f"principal component 1 ({100 * share[0]:.0f}%)", f"principal component 2 ({100 * share[1]:.0f}%)"))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
