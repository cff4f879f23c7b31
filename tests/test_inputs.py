"""What a user can type or point at that aetrain must refuse in one line (exit 2, nothing written), or
read the way the user meant: issue #16's bad inputs, each driven through the real CLI."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from aetrain.config import CHOICES, Config, OutputsConfig, TrainerConfig, validate
from aetrain.errors import ConfigError
from conftest import FAST


def assert_one_line_error(result, message: str) -> None:
    """Exit 2, one line `aetrain: error: ...` holding `message`, no traceback, no run dir."""
    assert result.returncode == 2, result.output
    assert result.err.startswith("aetrain: error: ") and result.err.count("\n") == 1, result.err
    assert message in result.err, result.err
    assert "Traceback" not in result.output
    assert not result.run_dir.exists()


# --- #16.12: no float key takes inf, -inf or nan ------------------------------------------------------

def _float_keys() -> list[tuple[str, str, str]]:
    """(group, choice, dotted key) of every float-valued key of every choice, trainer and outputs."""
    found = []

    def walk(obj: object, group: str, choice: str, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                walk(getattr(obj, f.name), group, choice, f"{prefix}{f.name}.")
            elif float in (hint, *typing.get_args(hint)) or hint == list[float]:
                found.append((group, choice, f"{prefix}{f.name}"))

    for group, choices in CHOICES.items():
        for name, make in choices.items():
            walk(make(), group, name, f"{group}.")
    walk(TrainerConfig(), "trainer", "", "trainer.")
    walk(OutputsConfig(), "outputs", "", "outputs.")
    return found


FLOAT_KEYS = _float_keys()


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=str)
@pytest.mark.parametrize(("group", "choice", "key"), FLOAT_KEYS, ids=lambda v: v if isinstance(v, str) else None)
def test_no_float_key_accepts_an_infinite_or_nan_value(group: str, choice: str, key: str, value: float) -> None:
    cfg = Config()
    if choice:
        setattr(cfg, group, CHOICES[group][choice]())
    *path, leaf = key.split(".")
    section = cfg
    for name in path:
        section = getattr(section, name)
    setattr(section, leaf, [value, 0.9] if isinstance(getattr(section, leaf), list) else value)
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=.* is out of range: must be "):
        validate(cfg)


def test_every_float_key_is_found() -> None:  # the parametrization above is only as good as this walk
    keys = {key for _, _, key in FLOAT_KEYS}
    assert {"optimizer.weight_decay", "optimizer.momentum", "optimizer.eps", "model.noise.level",
            "model.sparsity.weight", "model.sparsity.target", "model.beta", "optimizer.betas",
            "trainer.gradient_clip_val", "outputs.render_budget", "scheduler.min_lr"} <= keys


@pytest.mark.parametrize("args", [
    ["optimizer.weight_decay=inf"], ["optimizer=sgd", "optimizer.momentum=inf"], ["optimizer.eps=inf"],
    ["model=denoising_ae", "model.noise.level=inf"], ["model=sparse_ae", "model.sparsity.weight=inf"],
    ["optimizer=rmsprop", "optimizer.momentum=-inf"], ["model=sparse_ae", "model.sparsity.weight=nan"],
], ids=" ".join)
def test_infinite_values_are_refused_on_the_command_line(cli, args: list[str]) -> None:
    key = args[-1].partition("=")[0]
    assert_one_line_error(cli(*FAST, *args), f"{key}=")


# --- #16.11: batch norm on one sample, seeds out of range, model=null ---------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["model.batch_norm=true", "data.batch_size=1"], "model.batch_norm=true needs data.batch_size >= 2"),
    (["model=conv_ae", "model.batch_norm=true", "data.batch_size=1"], "model.batch_norm=true needs data.batch_size"),
    (["trainer.seed=18446744073709551616"], "trainer.seed=18446744073709551616 is out of range: must be an integer in "
                                            "[-2**63, 2**64 - 1]"),
    (["data.split_seed=-18446744073709551617"], "data.split_seed=-18446744073709551617 is out of range"),
    (["outputs.sample_seed=18446744073709551616"], "outputs.sample_seed=18446744073709551616 is out of range"),
    (["model=null"], "model=null: a run needs a model; choose one of: conv_ae, denoising_ae, dense_ae"),
    (["data=null"], "data=null: a run needs a data; choose one of: cifar10, digits"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_settings_that_failed_late_are_refused_before_anything_is_written(cli, args: list[str], message: str) -> None:
    assert_one_line_error(cli(*FAST, *args), message)


def test_any_seed_in_torchs_range_trains_and_draws_its_pictures(cli) -> None:
    """trainer.seed=1e14 passed validation and overflowed in epoch 1 (the batch order's seed is derived from it);
    a sample_seed torch refused silently drew no pictures."""
    result = cli("trainer.max_epochs=1", "data.batch_size=256", "trainer.device=cpu", "outputs.tensorboard=false",
                 "trainer.seed=100000000000000", "data.split_seed=-9223372036854775808",
                 "outputs.sample_seed=18446744073709551615")
    assert result.returncode == 0, result.output
    assert (result.run_dir / "reconstructions" / "epoch_001.png").is_file()
    assert "could not draw" not in result.output


# --- #16.6: a setting that would be silently ignored is refused -----------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    # the four: each choice has its own keys, so a key of another choice is unknown
    (["data.path=rows.npy"], "data.path: unknown key for data=digits (a key of data=image_folder, tensor_file)"),
    (["model.channels=[8,16]"], "model.channels: unknown key for model=dense_ae (a key of model=conv_ae"),
    (["model.noise.level=0.3"], "model.noise: unknown key for model=dense_ae (a key of model=denoising_ae)"),
    (["model=sparse_ae", "model.noise.level=0.3"], "model.noise: unknown key for model=sparse_ae"),
    (["scheduler=step", "scheduler.patience=3"], "scheduler.patience: unknown key for scheduler=step"),
    (["scheduler=cosine", "scheduler.gamma=0.5"], "scheduler.gamma: unknown key for scheduler=cosine"),
    (["model=denoising_ae", "model.channels=[8]"], "model.channels=[8] is used by model.backbone=conv only"),
    # found since: keys that exist but would do nothing in this combination
    (["model=sparse_ae", "model.sparsity.target=0.1"], "model.sparsity.target=0.1 is used by model.sparsity.kind=kl "
                                                       "only; this model has model.sparsity.kind=l1"),
    (["trainer.gradient_clip_algorithm=value"], "trainer.gradient_clip_algorithm=value does nothing without "
                                                "trainer.gradient_clip_val"),
    (["scheduler=onecycle", "optimizer.betas=[0.8,0.999]"], "optimizer.betas=[0.8, 0.999]: scheduler=onecycle cycles "
                                                            "beta1 between 0.85 and 0.95"),
    (["scheduler=onecycle", "optimizer=sgd", "optimizer.momentum=0.5"], "optimizer.momentum=0.5: scheduler=onecycle "
                                                                        "cycles the momentum"),
    (["hparams_search=optuna"], "hparams_search=optuna is a search: run it as a multirun, aetrain -m "
                                "hparams_search=optuna"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_setting_that_would_be_ignored_is_one_line_error(cli, args: list[str], message: str) -> None:
    assert_one_line_error(cli(*FAST, *args), message)


def test_onecycle_keeps_the_optimizers_momentum_when_told_not_to_cycle_it() -> None:
    import torch

    from aetrain.config import AdamConfig, OneCycleSchedulerConfig
    from aetrain.train.optim import build_optimizer, build_schedule

    cfg = Config(optimizer=AdamConfig(betas=[0.8, 0.99]), scheduler=OneCycleSchedulerConfig(cycle_momentum=False))
    validate(cfg)
    opt = build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(3))])
    schedule = build_schedule(cfg.scheduler, opt, total_steps=10)
    for _ in range(5):
        opt.step()
        schedule.after_step()
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)
    cycled = build_optimizer(AdamConfig(), [torch.nn.Parameter(torch.zeros(3))])
    build_schedule(OneCycleSchedulerConfig(), cycled, total_steps=10)  # the default: torch's 1cycle momentum
    assert cycled.param_groups[0]["betas"][0] == pytest.approx(0.95)


# --- #16.10: empty arrays, sparse tensors, decompression bombs ------------------------------------------

def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels and holds none: all Pillow sees of a huge image before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def save_pngs(folder: Path, n: int, size: int = 12) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: np.save(p / "x.npy", np.zeros((0, 10), np.float32)), "array of shape (0, 10) holds no samples"),
    (lambda p: np.save(p / "x.npy", np.zeros((100, 0), np.float32)), "array of shape (100, 0) has an empty axis"),
    (lambda p: np.save(p / "x.npy", np.zeros((100, 1, 0, 0), np.float32)), "array of shape (100, 1, 0, 0) has an "
                                                                            "empty axis"),
    (lambda p: torch.save(torch.eye(10).to_sparse(), p / "x.pt"), "holds a sparse tensor (torch.sparse_coo); save "
                                                                  "a dense one: x.to_dense()"),
    (lambda p: torch.save(torch.eye(10).to_sparse_csr(), p / "x.pt"), "holds a sparse tensor (torch.sparse_csr)"),
], ids=["0x10", "100x0", "100x1x0x0", "sparse_coo", "sparse_csr"])
def test_arrays_without_data_are_one_line_errors(cli, tmp_path: Path, make, message: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note that sparse CSR is in beta
        make(tmp_path)
    path = next(tmp_path.glob("x.*"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be a second line on the console
        assert_one_line_error(cli(*FAST, "data=tensor_file", f"data.path={path}"), message)


def test_an_image_too_large_to_decode_is_a_one_line_error(cli, tmp_path: Path) -> None:
    save_pngs(tmp_path / "imgs", 9)
    (tmp_path / "imgs" / "huge.png").write_bytes(png_header(30000, 30000))  # 900 megapixels, a few bytes on disk
    result = cli(*FAST, "data=image_folder", f"data.path={tmp_path / 'imgs'}", "data.num_workers=0")
    assert_one_line_error(result, "huge.png")
    assert "decompression bomb" in result.err


# --- #16.18: a damaged image in a folder is found before the run dir is made ----------------------------

@pytest.mark.parametrize("damage", [
    lambda p: p.write_bytes(b"not an image at all"),
    lambda p: p.write_bytes(p.read_bytes()[:-30]),  # truncated: the header parses, the chunks do not
    lambda p: p.write_bytes(p.read_bytes()[:60] + bytes(20) + p.read_bytes()[80:]),  # zeroed bytes inside the data
], ids=["not_an_image", "truncated", "zeroed_bytes"])
def test_a_damaged_image_is_refused_before_the_run_starts_and_a_rerun_is_a_fresh_run(cli, tmp_path: Path,
                                                                                    damage) -> None:
    images = tmp_path / "imgs"
    save_pngs(images, 20)
    good = (images / "017.png").read_bytes()
    damage(images / "017.png")  # sorted late: the run would reach it only in its first epoch
    args = [*FAST, "trainer.max_epochs=1", "data=image_folder", f"data.path={images}", "data.image_size=8",
            "data.num_workers=0", "outputs.plot_every=0", "outputs.tensorboard=false"]
    result = cli(*args)
    assert_one_line_error(result, f"data.path={images}: cannot read image {images / '017.png'}")
    (images / "017.png").write_bytes(good)
    again = cli(*args)
    assert again.returncode == 0, again.output
    assert not list((again.run_dir / ".hydra").glob("resume-*"))  # not mistaken for a resume


# --- #16.4: channels-last image arrays are read as images, not as H channels of W x C --------------------

def test_channels_last_arrays_are_converted_to_channels_first(tmp_path: Path) -> None:
    from aetrain.config import default_choice
    from aetrain.data import build_data

    x = torch.rand(50, 6, 5, 3)  # N x H x W x C
    torch.save(x, tmp_path / "nhwc.pt")
    cfg = default_choice("data", "tensor_file")
    cfg.path = str(tmp_path / "nhwc.pt")
    data = build_data(cfg, torch.device("cpu"), seed=0)
    assert data.spec.shape == (3, 6, 5)
    pool = torch.cat([data.train.data, data.val])
    assert any(torch.equal(x[0].permute(2, 0, 1), sample) for sample in pool)  # pixel (h, w) of channel c stays put
    cfg.layout = "nchw"  # the user's word wins over the guess
    assert build_data(cfg, torch.device("cpu"), seed=0).spec.shape == (6, 5, 3)


@pytest.mark.parametrize(("shape", "dtype", "expected"), [
    ((200, 32, 32, 3), np.float32, "3x32x32"), ((200, 28, 28, 1), np.uint8, "1x28x28"),
    ((200, 3, 32, 32), np.float32, "3x32x32"), ((200, 1, 28, 28), np.uint8, "1x28x28"),
], ids=str)
def test_image_arrays_train_channels_first_whichever_layout_they_come_in(cli, tmp_path: Path, shape, dtype,
                                                                           expected: str) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", (rng.random(shape) * (255 if dtype == np.uint8 else 1)).astype(dtype))
    result = cli(*FAST, "trainer.max_epochs=1", "data=tensor_file", f"data.path={tmp_path / 'x.npy'}",
                 "outputs.plot_every=0", "outputs.tensorboard=false")
    assert result.returncode == 0, result.output
    assert f"tensor_file {expected}," in result.out
    converted = shape[-1] in (1, 3)
    assert ("read as N x H x W x C" in result.out) == converted  # said once, in the header and train.log
    assert ("read as N x H x W x C" in (result.run_dir / "train.log").read_text()) == converted
    ckpt = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["data_spec"]["shape"] == [int(s) for s in expected.split("x")]


@pytest.mark.parametrize(("shape", "args", "message"), [
    ((50, 3, 4, 4), [], "data.path={path}: array of shape (50, 3, 4, 4) could be N x C x H x W or N x H x W x C; "
                        "set data.layout=nchw or data.layout=nhwc"),
    ((50, 6), ["data.layout=nhwc"], "data.layout=nhwc is for 4-d image arrays; data.path={path} holds N x D rows"),
    ((50, 6), ["data.layout=hwc"], "data.layout='hwc' is not one of: auto, nchw, nhwc"),
], ids=["ambiguous", "rows", "unknown"])
def test_a_layout_that_cannot_be_told_or_does_not_apply_is_one_line_error(cli, tmp_path: Path, shape, args,
                                                                          message: str) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).random(shape).astype(np.float32))
    assert_one_line_error(cli(*FAST, "data=tensor_file", f"data.path={path}", *args), message.format(path=path))


# --- #16.26: MNIST's .gz files as downloaded; a failed download leaves nothing behind -------------------

MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def write_mnist_gz(raw: Path, n: int = 40) -> np.ndarray:
    """The four files as the MNIST mirrors serve them: gzip-compressed idx (big-endian header, then uint8 bytes)."""
    import gzip
    import struct

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    arrays = [images, rng.integers(0, 10, n, dtype=np.uint8), images[:5], rng.integers(0, 10, 5, dtype=np.uint8)]
    raw.mkdir(parents=True, exist_ok=True)
    for name, a in zip(MNIST_FILES, arrays):
        header = struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
        (raw / f"{name}.gz").write_bytes(gzip.compress(header + a.tobytes()))
    return images


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
@pytest.mark.parametrize("download", ["false", "true"])
def test_mnist_gz_files_in_raw_are_read(cli, tmp_path: Path, monkeypatch, name: str, folder: str,
                                        download: str) -> None:
    import torchvision.datasets.mnist

    def offline(*args, **kwargs):  # never the network in a test; with download=true it must not be needed
        raise AssertionError("tried to download")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    images = write_mnist_gz(tmp_path / "data" / folder / "raw")
    result = cli(*FAST, "trainer.max_epochs=1", f"data={name}", f"data.root={tmp_path / 'data'}",
                 f"data.download={download}", "outputs.plot_every=0", "outputs.tensorboard=false")
    assert result.returncode == 0, result.output
    assert f"{name} 1x28x28, 36 train / 4 val samples" in result.out
    assert "extracted 4 .gz files" in result.out
    data = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)["data_spec"]
    assert data["shape"] == [1, 28, 28]
    assert (tmp_path / "data" / folder / "raw" / "train-images-idx3-ubyte").stat().st_size == 16 + images.size


def test_missing_mnist_files_are_named_with_what_to_do(cli, tmp_path: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    write_mnist_gz(raw)
    (raw / "t10k-images-idx3-ubyte.gz").unlink()
    result = cli(*FAST, "data=mnist", f"data.root={tmp_path / 'data'}", "data.download=false")
    assert_one_line_error(result, f"data.root={tmp_path / 'data'} has no readable MNIST: {raw} lacks "
                                  "t10k-images-idx3-ubyte (or .gz)")
    assert "data.download=true" in result.err


@pytest.mark.parametrize("existing", [False, True], ids=["new_root", "existing_root"])
def test_a_failed_download_removes_what_it_created_and_only_that(cli, tmp_path: Path, monkeypatch,
                                                                   existing: bool) -> None:
    import urllib.error

    import torchvision.datasets.mnist

    def unreachable(url, download_root, filename, md5):  # a partial file, then the network goes away
        (Path(download_root) / filename).write_bytes(b"\x1f\x8b partial")
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", unreachable)
    root = tmp_path / "data" / "sets"
    if existing:  # the user's own files, in the folders a download would use: none may go
        (root / "MNIST" / "raw").mkdir(parents=True)
        (root / "mine.npy").write_bytes(b"user data")
        (root / "MNIST" / "raw" / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = cli(*FAST, "data=mnist", f"data.root={root}", "data.download=true")
    assert_one_line_error(result, f"data.download=true: could not fetch MNIST into {root}")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# --- #16.9: a model that cannot fit in memory is refused before it is built -------------------------------

def test_a_model_too_large_for_memory_is_refused_in_one_line(cli, tmp_path: Path, monkeypatch) -> None:
    """A 20 x 2,000,000 array makes a dense model of a billion parameters: on a 24 GB machine it was OOM-killed
    after minutes. Here the machine is made to have 24 GB available, whatever this one has."""
    import aetrain.train.memory

    monkeypatch.setattr(aetrain.train.memory, "available_host_memory", lambda: 24 * 10**9)
    np.save(tmp_path / "wide.npy", np.zeros((20, 2_000_000), np.float32))
    result = cli(*FAST, "data=tensor_file", f"data.path={tmp_path / 'wide.npy'}")
    assert_one_line_error(result, "the model does not fit in memory: dense_ae on 2000000 inputs has 1,026,070,416 "
                                  "parameters and training needs at least 49.2 GB")  # 16 GB of it the doctor's check
    assert "but 24.0 GB is available; make the model smaller (model.hidden_dims, model.latent_dim)" in result.err


def test_a_model_no_machine_can_hold_is_refused(cli, tmp_path: Path) -> None:
    np.save(tmp_path / "rows.npy", np.zeros((20, 200_000), np.float32))
    result = cli(*FAST, "data=tensor_file", f"data.path={tmp_path / 'rows.npy'}", "model.hidden_dims=[10000000]")
    assert_one_line_error(result, "dense_ae on 200000 inputs has 4,000,")  # 4e12 parameters: 128 TB
    assert "make the model smaller (model.hidden_dims, model.latent_dim)" in result.err


def test_a_batch_whose_activations_cannot_fit_names_the_batch_and_image_size(cli, tmp_path: Path, monkeypatch) -> None:
    import aetrain.train.memory

    monkeypatch.setattr(aetrain.train.memory, "available_host_memory", lambda: 24 * 10**9)
    save_pngs(tmp_path / "imgs", 10, size=4)  # 4000 x 4000 once resized: 3.5 GB of layer outputs per image
    result = cli(*FAST, "model=conv_ae", "model.latent_dim=1", "data=image_folder", f"data.path={tmp_path / 'imgs'}",
                 "data.num_workers=0", "data.image_size=4000", "data.batch_size=8")
    assert_one_line_error(result, "the model does not fit in memory: conv_ae on 3x4000x4000 inputs")
    assert "lower data.batch_size or data.image_size" in result.err


def test_the_memory_estimate_is_a_lower_bound_of_what_training_takes() -> None:
    """Parameters counted without building the model; the estimate is below a measured run's peak (README)."""
    from aetrain.config import Config, DataConfig, DiagnosticsConfig
    from aetrain.models import FAMILIES
    from aetrain.train.memory import doctor_check_bytes, estimate

    cfg = Config(data=DataConfig(batch_size=64), diagnostics=DiagnosticsConfig(enabled=False))  # training alone
    state = torch.get_rng_state()
    need = estimate(cfg, FAMILIES.get("dense_ae"), _spec((1, 8, 8)), batch_size=64)
    assert torch.equal(state, torch.get_rng_state())  # counting draws no random numbers: runs stay as they were
    assert need.parameters == 64 * 256 + 256 + 256 * 128 + 128 + 128 * 16 + 16 + 16 * 128 + 128 + 128 * 256 + 256 + \
        256 * 64 + 64
    per_parameter = 4 * (1 + 1 + 2 + 1 + 1 + 2)  # weights, gradients, Adam's 2 moments, a checkpoint's copy and bytes
    assert need.parameter_bytes == per_parameter * need.parameters
    layers = [256, 256, 128, 128, 16, 128, 128, 256, 256, 64, 64]  # each layer's output; flatten is a view, no memory
    assert need.activation_bytes == 4 * 64 * sum(layers)
    # the doctor's check of the code units runs between epochs: the larger of the two counts, not their sum
    with_doctor = estimate(Config(data=DataConfig(batch_size=64)), FAMILIES.get("dense_ae"), _spec((1, 8, 8)),
                           batch_size=64)
    spec = _spec((1, 8, 8))
    with torch.device("meta"):
        model = FAMILIES.get("dense_ae").build(Config().model, spec)
    assert with_doctor.activation_bytes == max(need.activation_bytes, doctor_check_bytes(Config(), model, spec))


def _spec(shape: tuple[int, ...]):
    from aetrain.data.spec import DataSpec

    return DataSpec("x", shape, True, torch.tensor(0.0), torch.tensor(1.0), 0.0, 1.0)


def test_on_a_gpu_training_must_fit_its_free_memory_and_the_checkpoint_copies_the_host(monkeypatch) -> None:
    import aetrain.train.memory as memory
    from aetrain.config import Config
    from aetrain.models import FAMILIES

    cfg, family, spec, cuda = Config(), FAMILIES.get("dense_ae"), _spec((1, 8, 8)), torch.device("cuda")
    need = memory.estimate(cfg, family, spec, batch_size=64)
    monkeypatch.setattr(memory, "available_host_memory", lambda: need.host_bytes)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (need.device_bytes, 80 * 10**9))
    memory.check_fits(cfg, family, spec, cuda, batch_size=64)  # exactly enough of each
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (need.device_bytes - 1, 80 * 10**9))
    with pytest.raises(ConfigError, match="GB is free on cuda"):
        memory.check_fits(cfg, family, spec, cuda, batch_size=64)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (need.device_bytes, 80 * 10**9))
    monkeypatch.setattr(memory, "available_host_memory", lambda: need.host_bytes - 1)
    with pytest.raises(ConfigError, match="GB of host memory is available"):
        memory.check_fits(cfg, family, spec, cuda, batch_size=64)


@pytest.mark.skipif(not Path("/proc/meminfo").is_file(), reason="reads Linux's /proc/meminfo")
def test_available_memory_is_read_on_linux() -> None:
    from aetrain.train.memory import available_host_memory

    total = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) * 1024
    assert 0 < available_host_memory() <= total
