"""Datasets by name, read by torchvision's real loaders from tiny files in the real on-disk formats."""

from __future__ import annotations

import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aetrain.config import DataConfig
from aetrain.data import build_data
from aetrain.data.batches import BatchPlan
from aetrain.errors import DataError
from conftest import FAST, assert_one_line_error, choose, png_header, run_subprocess, save_pngs

CPU = torch.device("cpu")


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: big-endian magic (0, 0, dtype 0x08 = uint8, ndim), the dims, the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist(root: Path, folder: str, n: int = 40) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    raw = root / folder / "raw"
    write_idx(raw / "train-images-idx3-ubyte", images)
    write_idx(raw / "train-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    write_idx(raw / "t10k-images-idx3-ubyte", images[:5])
    write_idx(raw / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 5, dtype=np.uint8))
    return images


def make_cifar(root: Path, per_batch: int = 6) -> list[np.ndarray]:
    """CIFAR-10's python format: pickled dicts of uint8 rows (N, 3072) in channel-major order."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batches.append(data)
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": [int(x) for x in rng.integers(0, 10, per_batch)]}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return batches[:5]


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_idx_files_load_as_images_in_unit_range(tmp_path: Path, name: str, folder: str) -> None:
    images = make_mnist(tmp_path, folder)
    data = build_data(choose("data", name, root=str(tmp_path), val_fraction=0.25, batch_size=8), CPU, seed=0)
    assert data.spec.shape == (1, 28, 28) and data.spec.unit_interval
    assert (data.num_train, data.num_val) == (30, 10)
    everything = torch.cat([data.train.data, data.val]).flatten(1)
    expected = torch.from_numpy(images).float().div(255).flatten(1)
    assert torch.equal(everything.sort(dim=0).values, expected.sort(dim=0).values)  # same pixels, split apart


def test_cifar10_pickle_batches_load_channel_first(tmp_path: Path) -> None:
    batches = make_cifar(tmp_path)
    data = build_data(choose("data", "cifar10", root=str(tmp_path), val_fraction=0.2, batch_size=8), CPU, seed=0)
    assert data.spec.shape == (3, 32, 32) and (data.num_train, data.num_val) == (24, 6)
    first = torch.from_numpy(batches[0][0]).float().div(255).view(3, 32, 32)  # rows are R plane, G plane, B plane
    pool = torch.cat([data.train.data, data.val])
    assert any(torch.equal(first, x) for x in pool)


def test_missing_torchvision_files_are_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.root=.* has no readable MNIST.*data.download=true"):
        build_data(choose("data", "mnist", root=str(tmp_path), download=False), CPU, seed=0)


def test_image_folder_reads_every_image_recursively_resized(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for i in range(6):
        size = (12 + i, 10) if i % 2 else (20, 16)
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)).save(tmp_path / "imgs" / "sub" / "gray.jpg")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    cfg = choose("data", "image_folder", path=str(tmp_path / "imgs"), image_size=8, val_fraction=0.3,
                     batch_size=2, num_workers=0)
    data = build_data(cfg, CPU, seed=0)
    assert data.spec.shape == (3, 8, 8) and data.num_train + data.num_val == 7
    batch = next(data.train.epoch(0))
    assert batch.shape == (2, 3, 8, 8) and 0 <= batch.min() and batch.max() <= 1
    cfg.grayscale = True
    assert build_data(cfg, CPU, seed=0).spec.shape == (1, 8, 8)


def test_image_folder_errors(tmp_path: Path) -> None:
    cfg = choose("data", "image_folder", path=str(tmp_path), num_workers=0)
    with pytest.raises(DataError, match="no image files found"):
        build_data(cfg, CPU, seed=0)
    (tmp_path / "a.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        build_data(cfg, CPU, seed=0)


def test_tabular_rows_are_standardized_with_training_statistics(tmp_path: Path) -> None:
    rows = np.random.default_rng(0).normal(5.0, 3.0, (200, 7)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    data = build_data(choose("data", "tensor_file", path=str(tmp_path / "rows.npy")), CPU, seed=0)
    assert data.spec.shape == (7,) and not data.spec.unit_interval
    torch.testing.assert_close(data.train.data.mean(0), torch.zeros(7), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.train.data.std(0), torch.ones(7), atol=1e-5, rtol=0)


def test_uint8_image_arrays_are_scaled_to_unit_range(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (30, 3, 6, 5), dtype=np.uint8)
    torch.save(torch.from_numpy(images), tmp_path / "imgs.pt")
    data = build_data(choose("data", "tensor_file", path=str(tmp_path / "imgs.pt")), CPU, seed=0)
    assert data.spec.shape == (3, 6, 5) and data.spec.unit_interval
    assert data.train.data.max() <= 1 and float(data.spec.scale) == 255.0


@pytest.mark.parametrize(("content", "suffix", "message"), [
    (np.zeros((10, 4, 4)), ".npy", r"array of shape \(10, 4, 4\).*N x D rows or N x C x H x W"),
    (np.zeros(10), ".npy", r"array of shape \(10,\)"),
    (np.array([{"a": 1}], dtype=object), ".npy", r"array of Python objects \(dtype object\), which aetrain does "
                                                  "not unpickle"),
    (np.array([[1.0, np.nan]] * 5), ".npy", "NaN or infinite"),
    ({"x": torch.zeros(5, 2)}, ".pt", "holds a dict, not a tensor"),
    (b"", ".pt", "cannot read it as .pt"),
    (b"garbage", ".csv", "unknown file type"),
])
def test_bad_tensor_files_are_one_line_errors(tmp_path: Path, content: object, suffix: str, message: str) -> None:
    path = tmp_path / f"data{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif suffix == ".npy":
        np.save(path, content, allow_pickle=True)
    else:
        torch.save(content, path)
    with pytest.raises(DataError, match=message) as info:
        build_data(choose("data", "tensor_file", path=str(path)), CPU, seed=0)
    assert "\n" not in str(info.value)


def test_split_depends_on_split_seed_only_and_batches_on_the_training_seed() -> None:
    a = build_data(DataConfig(), CPU, seed=0)
    b = build_data(DataConfig(), CPU, seed=1)
    c = build_data(DataConfig(split_seed=1), CPU, seed=0)
    assert torch.equal(a.val, b.val) and not torch.equal(a.val, c.val)
    first = lambda d: next(d.train.epoch(0))  # noqa: E731
    assert torch.equal(first(a), first(a)) and not torch.equal(first(a), first(b))
    assert not torch.equal(first(a), next(a.train.epoch(1)))  # reshuffled every epoch


def test_batch_plan_covers_every_sample_once_per_epoch_and_can_start_midway() -> None:
    plan = BatchPlan(103, 10, seed=3)
    batches = plan.epoch(4)
    assert plan.sizes == [10] * 10 + [3]
    assert sorted(torch.cat(batches).tolist()) == list(range(103))
    data = torch.arange(103.0).unsqueeze(1)
    from aetrain.data.batches import TensorBatches

    tb = TensorBatches(data, plan, CPU)
    assert [x.squeeze(1).tolist() for x in tb.epoch(4, start=7)] == [b.float().tolist() for b in batches[7:]]
    assert BatchPlan(101, 10, seed=0).sizes == [10] * 10  # a last batch of one sample is dropped


def test_too_few_samples_for_the_split_is_a_clear_error(tmp_path: Path) -> None:
    np.save(tmp_path / "tiny.npy", np.random.rand(2, 2).astype(np.float32))
    with pytest.raises(DataError, match="data.val_fraction=0.2 leaves"):
        build_data(choose("data", "tensor_file", path=str(tmp_path / "tiny.npy")), CPU, seed=0)


# --- arrays without data, images too large to decode, damaged images ------------------------------------------------


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


# --- channels-last image arrays are read as images, not as H channels of W x C --------------------------------------

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


# --- MNIST's .gz files as downloaded; a failed download leaves nothing behind ---------------------------------------

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


def one_line_error(result, message: str) -> None:
    """Exit 2, one line `aetrain: error: ...` holding `message`, no traceback, no run dir."""
    assert result.returncode == 2, result.output
    assert result.err.startswith("aetrain: error: ") and result.err.count("\n") == 1, result.err
    assert message in result.err, result.err
    assert "Traceback" not in result.output
    assert not result.run_dir.exists()


def test_a_fifo_or_a_device_given_as_data_is_refused_instead_of_read(tmp_path: Path) -> None:
    """Reading a named pipe blocks until something writes to it (forever, here); /dev/zero never ends."""
    np.save(tmp_path / "rows.npy", np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32))
    os.mkfifo(tmp_path / "fifo.npy")
    os.symlink("/dev/zero", tmp_path / "zero.npy")
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(images / f"{i}.png")
    os.mkfifo(images / "4.png")
    cases = {
        "fifo.npy": (["data=tensor_file", f"data.path={tmp_path / 'fifo.npy'}"], "is a named pipe (FIFO), not a "
                                                                                   "regular file"),
        "zero.npy": (["data=tensor_file", f"data.path={tmp_path / 'zero.npy'}"], "is a character device, not a "
                                                                                   "regular file"),
        "labels": (["data=tensor_file", f"data.path={tmp_path / 'rows.npy'}", f"data.labels={tmp_path / 'fifo.npy'}"],
                   f"data.labels={tmp_path / 'fifo.npy'}: is a named pipe (FIFO)"),
        "image": (["data=image_folder", f"data.path={images}", "data.image_size=8"],
                  f"{images / '4.png'}: is a named pipe (FIFO), not a regular file"),
    }
    for name, (args, message) in cases.items():
        result = run_subprocess(*FAST, *args, cwd=tmp_path, run_dir=tmp_path / f"run-{name}", timeout=120)
        one_line_error(result, message)


def test_a_file_that_is_not_an_array_never_gets_advice_to_unpickle_it(cli, tmp_path: Path) -> None:
    (tmp_path / "random.npy").write_bytes(np.random.default_rng(0).bytes(4000))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(1).bytes(4000))
    torch.save({"x": np.zeros(3)}, tmp_path / "objects.pt")  # a numpy array inside: a pickled global
    cases = {"random.npy": "not a numpy array file", "objects.npy": "holds an array of Python objects (dtype object)",
             "random.pt": "not a torch tensor file", "objects.pt": "holds Python objects (numpy"}
    for name, message in cases.items():
        result = cli(*FAST, "data=tensor_file", f"data.path={tmp_path / name}", run_dir=tmp_path / f"run-{name}")
        one_line_error(result, message)
        assert "allow_pickle" not in result.err and "weights_only" not in result.err, result.err


def test_float64_data_beyond_float32s_range_is_refused_as_such(cli, tmp_path: Path) -> None:
    rows = np.random.default_rng(0).normal(size=(40, 3))
    rows[7, 1] = -3e300
    np.save(tmp_path / "huge.npy", rows)
    one_line_error(cli(*FAST, "data=tensor_file", f"data.path={tmp_path / 'huge.npy'}"),
                   "values beyond float32's range (max |x| = 3e+300")
    rows[7, 1] = -3e6  # float64 within float32's range trains
    np.save(tmp_path / "big.npy", rows)
    assert cli(*FAST, "data=tensor_file", f"data.path={tmp_path / 'big.npy'}").returncode == 0


def low_rank_rows(n: int = 400) -> np.ndarray:
    """Rows with structure (4 latent factors), negative values, and one feature constant at 7."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(n, 4)) @ rng.normal(size=(4, 12)) + 0.05 * rng.normal(size=(n, 12))
    rows[:, 5] = 7.0
    return rows.astype(np.float32)


def test_standardized_model_units_mean_the_same_at_any_scale_and_constant_features_are_reported(cli,
                                                                                               tmp_path: Path) -> None:
    """aetrain divided standard deviations below 1e-8 by 1e-8: data at 3e-10 trained on values near 0, its val/loss
    said nothing; a constant feature seen off its value in validation blew val/loss up by 1e16."""
    rows = low_rank_rows()
    losses = {}
    for scale in (1.0, 3e-10, 2e12):
        np.save(tmp_path / "rows.npy", (rows.astype(np.float64) * scale).astype(np.float32))
        result = cli(*FAST, "data=tensor_file", f"data.path={tmp_path / 'rows.npy'}", "outputs.plot_every=0",
                     run_dir=tmp_path / f"run-{scale:g}")
        assert result.returncode == 0, result.err
        assert ("1 of 12 features constant in the training split (5): centred, and scaled by the median standard "
                "deviation of the others") in result.out
        losses[scale] = float(result.metrics()[-1]["val/loss"])
    assert losses[3e-10] == pytest.approx(losses[1.0], rel=1e-3)
    assert losses[2e12] == pytest.approx(losses[1.0], rel=1e-3)
    assert 0.05 < losses[1.0] < 1.5  # standard deviations: the error of a model that has learnt a little


def test_a_checkpoint_with_the_old_scaling_loads_as_it_was_trained_and_is_not_resumed_on_other_numbers(
        cli, tmp_path: Path) -> None:
    import aetrain

    rows = low_rank_rows()
    np.save(tmp_path / "rows.npy", rows)
    result = cli(*FAST, "data=tensor_file", f"data.path={tmp_path / 'rows.npy'}", "outputs.plot_every=0")
    for name in ("best.pt", "last.pt"):  # as aetrain wrote it before: the constant feature divided by 1e-8
        path = result.run_dir / "checkpoints" / name
        ckpt = torch.load(path, weights_only=True)
        for scale in (ckpt["data_spec"]["scale"], ckpt["model"]["scaling.scale"]):
            scale[5] = 1e-8
        torch.save(ckpt, path)
    model = aetrain.load_model(result.run_dir)
    assert float(model.scaling.scale[5]) == pytest.approx(1e-8)  # the scaling it was trained with, as stored
    x_hat = model.reconstruct(torch.from_numpy(rows[:8]))  # feature 5 comes back as 7 + 1e-8 x the model's output
    torch.testing.assert_close(x_hat[:, 5], torch.full((8,), 7.0), atol=1e-6, rtol=0)
    resumed = cli(f"trainer.resume={result.run_dir}", "trainer.max_epochs=3", *FAST[1:])
    assert resumed.returncode == 2 and resumed.err.count("\n") == 1, resumed.output
    assert "the checkpoint scaled this data into model units otherwise than this aetrain does" in resumed.err
