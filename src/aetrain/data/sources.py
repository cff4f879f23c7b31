"""Datasets by name, each read with the library that owns its format.

A source returns samples in *data units*, the form a user hands to `encode`/`reconstruct`:
images as float tensors in [0, 1] (torchvision's ToTensor convention); tensor files as the
values in the file. `aetrain.data.build_data` then splits, scales and places them.

Labels come with the samples where the dataset has them: the digits' and the torchvision sets'
classes, an image folder's first-level subfolders, a tensor file's `data.labels` file. Training
ignores them unless `data.classes` picks some; the commands after training use them.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import pickle
import re
import shutil
import stat
import urllib.error
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from aetrain.atomic import write_atomic
from aetrain.config import DataConfig
from aetrain.errors import ConfigError, DataError
from aetrain.registry import Registry


@dataclass
class Source:
    """Loaded samples: an in-memory tensor (N, *shape), or a dataset of images when they may not fit."""

    samples: torch.Tensor | Dataset
    shape: tuple[int, ...]
    in_unit_interval: bool  # values known to lie in [0, 1]
    uint8: bool = False  # values are 0..255 integers (tensor files): scaled by 1/255
    note: str = ""  # how the samples were read, when it is not plain (a channels-last array converted): for the header
    labels: torch.Tensor | None = None  # (N,) int64 class of each sample; None = unlabelled
    class_names: tuple[str, ...] | None = None  # the name of each label (label i: class_names[i]); None = the numbers


SOURCES: Registry[Callable[[DataConfig], Source]] = Registry("data")


@SOURCES.register("digits")
def _digits(cfg: DataConfig) -> Source:
    table = _digits_table()  # (1797, 65): 64 pixels 0..16, then the label
    images = torch.from_numpy(table[:, :-1]).float().div_(16.0)  # (1797, 64), 0..16 -> [0, 1]
    return Source(images.view(-1, 1, 8, 8), (1, 8, 8), True, labels=torch.from_numpy(table[:, -1]).long())


def _digits_table() -> np.ndarray:
    """scikit-learn's bundled digits as (1797, 65): 64 pixel values 0..16 and the digit.

    Read straight from the file scikit-learn ships (datasets/data/digits.csv.gz, the file its
    `load_digits` reads): importing scikit-learn costs ~2 s of start-up, reading the file 30 ms.
    """
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():  # a future layout: take the slow, public road
        from sklearn.datasets import load_digits

        digits = load_digits()
        return np.concatenate([digits.data, digits.target[:, None]], axis=1)
    return np.loadtxt(path, delimiter=",")  # the last column is the label


def _torchvision(cls: type, cfg: DataConfig, expected: str) -> Dataset:
    root = Path(cfg.root)
    try:
        with _undone_on_failure(root, _download_paths(cls, root)) if cfg.download else contextlib.nullcontext():
            return cls(str(root), train=True, download=cfg.download)
    except (RuntimeError, urllib.error.URLError, OSError) as e:
        if cfg.download:
            reason = str(e).strip().splitlines()[-1]
            raise DataError(f"data.download=true: could not fetch {cls.__name__} into {cfg.root} ({reason}); "
                            f"without network, place the files there: {expected}") from None
        raise DataError(f"data.root={cfg.root} has no readable {cls.__name__}: {expected}; "
                        "set data.download=true to fetch it") from None


def _download_paths(cls: type, root: Path) -> list[Path]:
    """What torchvision's download of `cls` writes under root: MNIST/ (FashionMNIST/); cifar-10-batches-py/ and its
    archive."""
    return [root / name for name in (getattr(cls, "base_folder", cls.__name__), getattr(cls, "filename", "")) if name]


@contextlib.contextmanager
def _undone_on_failure(root: Path, paths: list[Path]) -> Iterator[None]:
    """Remove what a failed download created (folders up to root, new files at `paths`), never what was there."""
    new_top = next((p for p in reversed([root, *root.parents]) if not p.exists()), None)  # the highest folder made
    before = {p: _tree(p) for p in paths if p.exists()}
    try:
        yield
    except BaseException:
        if new_top is not None:
            shutil.rmtree(new_top, ignore_errors=True)  # everything under it is the attempt's
        else:
            created = [q for p in paths for q in (_tree(p) - before[p] if p in before else _tree(p))]
            for q in sorted(created, reverse=True):  # a folder's entries before the folder
                shutil.rmtree(q, ignore_errors=True) if q.is_dir() else q.unlink(missing_ok=True)
        raise


def _tree(path: Path) -> set[Path]:
    return {path, *path.rglob("*")} if path.is_dir() else {path} if path.exists() else set()


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _mnist_like(cls_name: str) -> Callable[[DataConfig], Source]:
    def load(cfg: DataConfig) -> Source:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        raw = Path(cfg.root) / cls_name / "raw"
        extracted = _extract_gz(raw, MNIST_FILES)
        missing = [name for name in MNIST_FILES if not (raw / name).is_file()]
        expected = (f"{raw} lacks {', '.join(missing)} (or .gz)" if missing else
                    f"{raw} holds {', '.join(MNIST_FILES)} but they are not readable idx files")
        ds = _torchvision(cls, cfg, expected)
        images = ds.data.unsqueeze(1).float().div_(255.0)  # (N, 28, 28) uint8 -> (N, 1, 28, 28) in [0, 1]
        note = f"extracted {len(extracted)} .gz files in {raw}" if extracted else ""
        return Source(images, tuple(images.shape[1:]), True, note=note, labels=ds.targets.long())

    return load


def _extract_gz(folder: Path, names: Sequence[str]) -> list[str]:
    """Decompress `name.gz` into `name` where only the .gz is there, as the MNIST mirrors serve the files.

    torchvision reads only the decompressed files and, asked to download, would fetch the official ones over a
    local copy whose checksum differs. Each file is written atomically: an interrupted extraction leaves none.
    """
    extracted = []
    for name in names:
        gz = folder / f"{name}.gz"
        if (folder / name).is_file() or not gz.is_file():
            continue
        try:
            data = gzip.decompress(gz.read_bytes())
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"data.root: cannot decompress {gz}: {e}") from None
        try:
            write_atomic(folder / name, data)
        except OSError as e:
            raise DataError(f"data.root: cannot write {folder / name} next to {gz.name} ({e.strerror}); decompress "
                            "it yourself (gunzip -k) or copy the folder somewhere writable") from None
        extracted.append(gz.name)
    return extracted


SOURCES.add("mnist", _mnist_like("MNIST"))
SOURCES.add("fashion_mnist", _mnist_like("FashionMNIST"))


@SOURCES.register("cifar10")
def _cifar10(cfg: DataConfig) -> Source:
    import torchvision

    class CIFAR10(torchvision.datasets.CIFAR10):
        # torchvision checks the official md5 sums; a local copy (a cluster's shared one, a
        # subset) is accepted when every batch file is present. A damaged file fails to unpickle.
        def _check_integrity(self) -> bool:
            base = Path(self.root) / self.base_folder
            return all((base / name).is_file() for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:  # class names: an autoencoder has no use for them
            self.classes, self.class_to_idx = [], {}

    ds = _torchvision(CIFAR10, cfg, f"expected {cfg.root}/cifar-10-batches-py/data_batch_1..5, test_batch")
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255.0)  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return Source(images.contiguous(), (3, 32, 32), True, labels=torch.tensor(ds.targets, dtype=torch.long))


class ImageFiles(Dataset):
    """Every image under a directory (recursively), resized and center-cropped to a square."""

    def __init__(self, root: Path, size: int, grayscale: bool) -> None:
        from torchvision import transforms
        from torchvision.datasets.folder import IMG_EXTENSIONS

        # every entry named like an image that is not a folder: a FIFO or device among them is refused by the source
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and not p.is_dir())
        self.grayscale = grayscale
        self.transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                                             transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as img:
                img = img.convert("L" if self.grayscale else "RGB")
        except (OSError, Image.DecompressionBombError) as e:  # damage the header check could not see
            raise DataError(f"data.path: cannot read image {self.files[i]}: {e}") from None
        return self.transform(img)  # (C, size, size) in [0, 1]


@SOURCES.register("image_folder")
def _image_folder(cfg: DataConfig) -> Source:
    root = _existing_path(cfg, "a directory of images")
    if not root.is_dir():
        raise DataError(f"data.path={cfg.path}: not a directory; data=image_folder needs a directory of images")
    ds = ImageFiles(root, cfg.image_size, cfg.grayscale)
    if len(ds) == 0:
        raise DataError(f"data.path={cfg.path}: no image files found (looked for png, jpg, jpeg, bmp, ...)")
    for path in ds.files:  # before Pillow opens any: a FIFO would block the check forever
        _require_regular_file(path, f"data.path={cfg.path}: {path}")
    _check_images(ds.files, cfg)
    shape = (1 if cfg.grayscale else 3, cfg.image_size, cfg.image_size)  # what the transform makes of any image
    labels, names = _folder_labels(root, ds.files)
    return Source(ds, shape, True, labels=labels, class_names=names)


def _check_images(files: list[Path], cfg: DataConfig) -> None:
    """Refuse a folder with an unreadable image before the run starts, not when a batch first reaches it.

    Each file's header is parsed (format, size: Pillow's decompression-bomb limit applies) and
    `verify` run, which for PNG reads every chunk and checks its CRC without decompressing
    (0.03 ms for a 12 kB PNG, 0.9 ms for a 3 MB one, against 16 ms to decode it). Damage inside a
    JPEG's compressed data only shows when it is decoded, and fails the run then, naming the file.
    """
    from PIL import Image

    bad = []
    for path in files:
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as e:  # Pillow raises many kinds on damaged files (SyntaxError, EOFError, struct.error...)
            bad.append(f"{path}: {str(e).strip() or type(e).__name__}")
    if bad:
        more = f" (and {len(bad) - 1} more of the {len(files)} files)" if len(bad) > 1 else ""
        raise DataError(f"data.path={cfg.path}: cannot read image {bad[0]}{more}; remove or replace "
                        f"{'them' if more else 'it'}")


def _folder_labels(root: Path, files: list[Path]) -> tuple[torch.Tensor | None, tuple[str, ...] | None]:
    """torchvision's ImageFolder convention: the class of an image is its first-level subfolder, numbered in
    sorted order of the folder names; returns (labels, the folder name of each label). (None, None), unlabelled,
    when any image lies directly in `root`."""
    folders = [f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else None for f in files]
    if None in folders:
        return None, None
    names = tuple(sorted(set(folders)))
    number = {name: i for i, name in enumerate(names)}
    return torch.tensor([number[name] for name in folders], dtype=torch.long), names


@SOURCES.register("tensor_file")
def _tensor_file(cfg: DataConfig) -> Source:
    path = _existing_path(cfg, "a .npy or .pt file")
    x = _read_array(path, f"data.path={cfg.path}", "data=tensor_file reads .npy or .pt")
    if not isinstance(x, torch.Tensor):
        raise DataError(f"data.path={cfg.path}: holds a {type(x).__name__}, not a tensor; save a single tensor")
    if x.layout != torch.strided:  # torch's dense operations (min, indexing by batch) refuse sparse layouts
        kind = "a sparse tensor" if "sparse" in str(x.layout) else "a tensor of layout"
        raise DataError(f"data.path={cfg.path}: holds {kind} ({x.layout}); save a dense one: x.to_dense()")
    if x.ndim not in (2, 4):
        raise DataError(
            f"data.path={cfg.path}: array of shape {tuple(x.shape)}; data=tensor_file needs N x D rows or "
            "N x C x H x W images (add a channel axis to N x H x W grayscale: x[:, None])"
        )
    if x.shape[0] == 0:
        raise DataError(f"data.path={cfg.path}: array of shape {tuple(x.shape)} holds no samples")
    if 0 in x.shape[1:]:
        raise DataError(f"data.path={cfg.path}: array of shape {tuple(x.shape)} has an empty axis; each sample needs "
                        "values")
    if x.dtype == torch.bool or x.is_complex():
        raise DataError(f"data.path={cfg.path}: dtype {x.dtype}; needs real numbers")
    uint8 = x.dtype == torch.uint8
    if not torch.isfinite(x).all():  # in the file's own dtype: float64 beyond float32's range is another problem
        raise DataError(f"data.path={cfg.path}: contains NaN or infinite values")
    _require_float32_range(x, f"data.path={cfg.path}")
    x = x.float()
    low, high = float(x.min()), float(x.max())
    # [0, 1] data is taken as it is (intensities, probabilities); data spanning less than one 8-bit grey level is
    # not meant that way (the digits times 3e-10 would train on values of 1e-10): it is standardized
    in_unit = uint8 or (0 <= low and high <= 1 and high - low >= UNIT_MIN_SPAN)
    x, note = _channels_first(x, cfg)
    return Source(x.contiguous(), tuple(x.shape[1:]), in_unit, uint8, note, labels=_labels_file(cfg, len(x)))


UNIT_MIN_SPAN = 1 / 255  # float data in [0, 1] is used as it is when it spans at least one 8-bit grey level
LAYOUTS = ("auto", "nchw", "nhwc")
MAX_CHANNELS = 4  # gray, gray + alpha, RGB, RGBA: what `data.layout=auto` takes for a channel axis


def _channels_first(x: torch.Tensor, cfg: DataConfig) -> tuple[torch.Tensor, str]:
    """N x C x H x W images by `data.layout` (rows pass through), and a note when a channels-last array was converted.

    numpy, PIL, TensorFlow and most image libraries write N x H x W x C; read as given, a (200, 32, 32, 3)
    array would train as 32 channels of 32 x 3 images.
    """
    if cfg.layout not in LAYOUTS:
        raise ConfigError(f"data.layout={cfg.layout!r} is not one of: {', '.join(LAYOUTS)}")
    if x.ndim != 4:
        if cfg.layout != "auto":
            raise DataError(f"data.layout={cfg.layout} is for 4-d image arrays; data.path={cfg.path} holds N x D rows "
                            f"{tuple(x.shape)}")
        return x, ""
    layout, note = cfg.layout, ""
    if layout == "auto":
        first, last = x.shape[1] <= MAX_CHANNELS, x.shape[3] <= MAX_CHANNELS
        if first and last:
            raise DataError(f"data.path={cfg.path}: array of shape {tuple(x.shape)} could be N x C x H x W or "
                            "N x H x W x C; set data.layout=nchw or data.layout=nhwc")
        layout = "nhwc" if last else "nchw"
        note = (f"read as N x H x W x C {tuple(x.shape)} by data.layout=auto; set data.layout=nchw to take it as "
                "N x C x H x W") if layout == "nhwc" else ""
    return (x.permute(0, 3, 1, 2) if layout == "nhwc" else x), note  # (N, H, W, C) -> (N, C, H, W)


def _read_array(path: Path, setting: str, readable: str) -> Any:
    """What a .npy (without pickles) or .pt (weights_only) file holds; a one-line DataError naming `setting`
    when it cannot be read, with `readable` saying which files are. Never advises unpickling: numpy and torch
    suggest `allow_pickle=` or `weights_only=False` for files they cannot read, which would run the file's code."""
    _require_regular_file(path, setting)
    if path.suffix == ".npy":
        return torch.from_numpy(_read_npy(path, setting))
    if path.suffix == ".pt":
        try:
            with warnings.catch_warnings():  # torch's notes on a sparse tensor's loading: it is refused later
                warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            found = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch names the Python object it refused
            if found:
                raise DataError(f"{setting}: holds Python objects ({found.group(1)}), which aetrain does not unpickle "
                                "(unpickling can run code); save a tensor: torch.save(tensor, path)") from None
            raise DataError(f"{setting}: not a torch tensor file (torch.save writes a zip archive; this is not "
                            "one, or it is damaged)") from None
        except Exception as e:  # empty, truncated, damaged: torch raises many kinds
            raise DataError(f"{setting}: cannot read it as .pt array: {_first_line(e)}") from None
    raise DataError(f"{setting}: unknown file type; {readable}")


NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file (numpy.lib.format)


def _read_npy(path: Path, setting: str) -> np.ndarray:
    """A .npy file's array. numpy.load takes any file that lacks the .npy header for a pickle and, with
    allow_pickle=False, advises loading it with allow_pickle: random bytes, or a renamed file, are "not a
    numpy array file" here instead."""
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head != NPY_MAGIC:
        raise DataError(f"{setting}: not a numpy array file (a .npy file starts with \\x93NUMPY, written by "
                        "numpy.save; this one does not)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e):  # an array of Python objects: its elements are pickles
            raise DataError(f"{setting}: holds an array of Python objects (dtype object), which aetrain does not "
                            "unpickle (unpickling can run code); save an array of numbers") from None
        raise DataError(f"{setting}: cannot read it as .npy array: {_first_line(e)}") from None
    except Exception as e:  # a truncated or damaged file
        raise DataError(f"{setting}: cannot read it as .npy array: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _require_regular_file(path: Path, setting: str) -> None:
    """Refuse anything but a regular file (symlinks followed) before it is opened: reading a FIFO blocks until
    another process writes to it, possibly forever, and a device such as /dev/zero never ends."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise DataError(f"{setting}: cannot read it ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in FILE_KINDS if test(mode)), "a special file")
        raise DataError(f"{setting}: is {kind}, not a regular file; data is read from regular files only")


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _require_float32_range(x: torch.Tensor, setting: str) -> None:
    """Float64 values beyond float32's range would become infinite where aetrain computes (float32)."""
    if x.is_floating_point() and x.element_size() > 4 and x.numel():
        largest = float(x.abs().max())
        if largest > FLOAT32_MAX:
            raise DataError(f"{setting}: values beyond float32's range (max |x| = {largest:.3g}; float32 holds up to "
                            f"{FLOAT32_MAX:.3g}), in which aetrain trains; rescale the data (divide it by a power of "
                            "ten) before saving it")


def _labels_file(cfg: DataConfig, n: int) -> torch.Tensor | None:
    """data.labels: a .npy or .pt file of `n` integer labels (whole-number floats are accepted), or None."""
    if cfg.labels is None:
        return None
    path = Path(cfg.labels)
    if not path.exists():
        raise DataError(f"data.labels={cfg.labels}: no such file; it should hold {n} integer labels (.npy or .pt)")
    y = _read_array(path, f"data.labels={cfg.labels}", "labels are read from .npy or .pt")
    if not isinstance(y, torch.Tensor) or y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] != 1):
        found = f"shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else f"a {type(y).__name__}"
        raise DataError(f"data.labels={cfg.labels}: holds {found}; it should be a vector of {n} integer labels")
    y = y.reshape(-1)
    if len(y) != n:
        raise DataError(f"data.labels={cfg.labels}: {len(y)} labels for {n} samples in data.path={cfg.path}; "
                        "give one label per sample")
    if y.dtype == torch.bool or y.is_complex() or (y.is_floating_point() and not bool((y == y.round()).all())):
        raise DataError(f"data.labels={cfg.labels}: labels must be integers (got dtype {y.dtype})")
    return y.long()


def _existing_path(cfg: DataConfig, what: str) -> Path:
    if not cfg.path:
        raise DataError(f"data.path is not set; data={cfg.name} needs {what}")
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(f"data.path={cfg.path}: does not exist; data={cfg.name} needs {what}")
    return path
