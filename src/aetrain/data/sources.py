"""Datasets by name, each read with the library that owns its format.

A source returns samples in *data units*, the form a user hands to `encode`/`reconstruct`:
images as float tensors in [0, 1] (torchvision's ToTensor convention); tensor files as the
values in the file. `aetrain.data.build_data` then splits, scales and places them.

Labels come with the samples where the dataset has them: the digits' and the torchvision sets'
classes, an image folder's first-level subfolders, a tensor file's `data.labels` file. Training
ignores them unless `data.classes` picks some; the commands after training use them.
"""

from __future__ import annotations

import importlib.util
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from aetrain.config import DataConfig
from aetrain.errors import DataError
from aetrain.registry import Registry


@dataclass
class Source:
    """Loaded samples: an in-memory tensor (N, *shape), or a dataset of images when they may not fit."""

    samples: torch.Tensor | Dataset
    shape: tuple[int, ...]
    in_unit_interval: bool  # values known to lie in [0, 1]
    uint8: bool = False  # values are 0..255 integers (tensor files): scaled by 1/255
    labels: torch.Tensor | None = None  # (N,) int64 class of each sample; None = unlabelled


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
        return cls(str(root), train=True, download=cfg.download)
    except (RuntimeError, urllib.error.URLError, OSError) as e:
        if cfg.download:
            reason = str(e).strip().splitlines()[-1]
            raise DataError(f"data.download=true: could not fetch {cls.__name__} into {cfg.root} ({reason}); "
                            f"without network, place the files there: {expected}") from None
        raise DataError(f"data.root={cfg.root} has no readable {cls.__name__}: expected {expected}; "
                        "set data.download=true to fetch it") from None


def _mnist_like(cls_name: str) -> Callable[[DataConfig], Source]:
    def load(cfg: DataConfig) -> Source:
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        ds = _torchvision(cls, cfg, f"{cfg.root}/{cls_name}/raw/train-images-idx3-ubyte and the other idx files")
        images = ds.data.unsqueeze(1).float().div_(255.0)  # (N, 28, 28) uint8 -> (N, 1, 28, 28) in [0, 1]
        return Source(images, tuple(images.shape[1:]), True, labels=ds.targets.long())

    return load


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

    ds = _torchvision(CIFAR10, cfg, f"{cfg.root}/cifar-10-batches-py/data_batch_1..5, test_batch")
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255.0)  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    return Source(images.contiguous(), (3, 32, 32), True, labels=torch.tensor(ds.targets, dtype=torch.long))


class ImageFiles(Dataset):
    """Every image under a directory (recursively), resized and center-cropped to a square."""

    def __init__(self, root: Path, size: int, grayscale: bool) -> None:
        from torchvision import transforms
        from torchvision.datasets.folder import IMG_EXTENSIONS

        self.files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        self.grayscale = grayscale
        self.transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as img:
                img = img.convert("L" if self.grayscale else "RGB")
        except OSError as e:
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
    return Source(ds, tuple(ds[0].shape), True, labels=_folder_labels(root, ds.files))


def _folder_labels(root: Path, files: list[Path]) -> torch.Tensor | None:
    """torchvision's ImageFolder convention: the class of an image is its first-level subfolder, numbered in
    sorted order of the folder names. None (unlabelled) when any image lies directly in `root`."""
    folders = [f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else None for f in files]
    if None in folders:
        return None
    number = {name: i for i, name in enumerate(sorted(set(folders)))}
    return torch.tensor([number[name] for name in folders], dtype=torch.long)


@SOURCES.register("tensor_file")
def _tensor_file(cfg: DataConfig) -> Source:
    path = _existing_path(cfg, "a .npy or .pt file")
    try:
        if path.suffix == ".npy":
            x = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.suffix == ".pt":
            x = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise DataError(f"data.path={cfg.path}: unknown file type; data=tensor_file reads .npy or .pt")
    except DataError:
        raise
    except Exception as e:  # numpy and torch raise many kinds on a damaged or foreign file
        raise DataError(f"data.path={cfg.path}: cannot read it as {path.suffix} array: {e}") from None
    if not isinstance(x, torch.Tensor):
        raise DataError(f"data.path={cfg.path}: holds a {type(x).__name__}, not a tensor; save a single tensor")
    if x.ndim not in (2, 4):
        raise DataError(
            f"data.path={cfg.path}: array of shape {tuple(x.shape)}; data=tensor_file needs N x D rows or "
            "N x C x H x W images (add a channel axis to N x H x W grayscale: x[:, None])"
        )
    if x.dtype == torch.bool or x.is_complex():
        raise DataError(f"data.path={cfg.path}: dtype {x.dtype}; needs real numbers")
    uint8 = x.dtype == torch.uint8
    x = x.float()
    if not torch.isfinite(x).all():
        raise DataError(f"data.path={cfg.path}: contains NaN or infinite values")
    in_unit = uint8 or bool(x.min() >= 0 and x.max() <= 1)
    return Source(x.contiguous(), tuple(x.shape[1:]), in_unit, uint8, labels=_labels_file(cfg, len(x)))


def _labels_file(cfg: DataConfig, n: int) -> torch.Tensor | None:
    """data.labels: a .npy or .pt file of `n` integer labels (whole-number floats are accepted), or None."""
    if cfg.labels is None:
        return None
    path = Path(cfg.labels)
    if not path.is_file():
        raise DataError(f"data.labels={cfg.labels}: no such file; it should hold {n} integer labels (.npy or .pt)")
    try:
        if path.suffix == ".npy":
            y = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.suffix == ".pt":
            y = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise DataError(f"data.labels={cfg.labels}: unknown file type; labels are read from .npy or .pt")
    except DataError:
        raise
    except Exception as e:  # numpy and torch raise many kinds on a damaged or foreign file
        raise DataError(f"data.labels={cfg.labels}: cannot read it as {path.suffix} array: {e}") from None
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
