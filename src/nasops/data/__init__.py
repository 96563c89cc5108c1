"""Datasets, splits and batches for training and evaluating supernets.

The small bundled sets are read whole into memory as uint8 images [N, C, H, W] and int64 labels
(:class:`ImageSet`), where batching them in the main process is fastest:

* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, nothing to download). It has no
  official test split, so a fixed 20% is set aside as one.
* ``fashion-mnist``: the IDX files (``train-images-idx3-ubyte[.gz]``, ...), by default from
  /usr/share/datasets/fashion-mnist (Debian's ``dataset-fashion-mnist``).
* ``cifar10``: the python-pickle batches directory (``data_batch_1`` ... ``data_batch_5``,
  ``test_batch``), read with an unpickler that only builds numpy arrays.

Image folders are read lazily from disk by DataLoader workers (:mod:`nasops.data.folders`), so memory
does not grow with them:

* ``imagefolder``: one folder of images per class; ``train/`` and ``test/`` (or ``val/``)
  sub-folders when present, otherwise a fixed 20% of the images is the test split.
* ``imagenet``: the same, with the ``train/`` + ``val/`` layout required and ImageNet's
  normalisation and evaluation view (resize to resolution / 0.875, centre crop) by default.

:func:`load_splits` also sets aside a fixed, seeded held-out part of the training data, used to
score sub-networks during search and never trained on. :class:`BatchStream` (in memory) and
:class:`nasops.data.folders.FolderStream` (folders) make the training batches: a seeded permutation per
epoch, augmentation, normalised floats. Batch contents depend only on (seed, epoch, step), so a
resumed run sees the same batches and every DDP rank takes its own slice of the same global batch.
"""
from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# (BadImageError and FolderStream: re-exported, nasops.data is where users look for them)
from .batches import (BatchStream, check_batch_size, epoch_order, eval_batches,  # noqa: F401
                      eval_resize, mix_seed, random_crop, resize_batch)
from .augment import IMAGENET_EVAL_CROP, eval_size  # noqa: F401
from .folders import BadImageError, FolderSet, FolderStream, class_folders  # noqa: F401
from ..utils.checks import check_count, is_int, is_number
from ..utils.registry import Registry

# ImageNet's per-channel statistics, the normalisation of the released AttentiveNAS/AlphaNet models
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("dataset", "imagenet")
_TEST_FRACTION = 0.2
_SPLIT_SEED = 0x5EED  # fixed: the test split of a dataset never depends on a run's seed


@dataclass(frozen=True)
class Dataset:
    """A registered dataset: ``read(split, root, **options)`` -> ImageSet or FolderSet, and what
    loading it needs to know."""
    read: Callable
    needs_dir: bool = False         # read needs a directory: the recipe's data_dir or default_dir
    default_dir: str | None = None
    how_to_get: str = ""            # said by the errors that find the data missing
    normalization: str = "dataset"  # what the recipe's normalization: null means for it
    eval_crop: float | None = None  # what the recipe's eval_crop: null means for it


def _adopt(name: str, read) -> None:  # an entry point's bare reader: the defaults
    register_dataset(name)(read)


DATASETS = Registry("dataset", "dataset", "nasops.datasets", adopt=_adopt)


def register_dataset(name: str, *, needs_dir: bool = False, default_dir: str | None = None,
                     how_to_get: str = "", normalization: str = "dataset",
                     eval_crop: float | None = None):
    """Decorator: registers ``read(split, root=None, **options)`` as the dataset `name` (the
    recipe's dataset=). `split` is "train" or "test"; `root` the recipe's data_dir (or
    `default_dir`), checked to exist when `needs_dir`; `options` are workers and
    skip_bad_images, for readers of files. `read` returns an :class:`ImageSet` (in memory) or a
    :class:`~nasops.data.folders.FolderSet`."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization = {normalization!r} is not allowed; allowed: "
                         f"{list(NORMALIZATIONS)}")

    def add(read):
        DATASETS.register(name, Dataset(read, needs_dir, default_dir, how_to_get, normalization,
                                        eval_crop))
        return read
    return add


@dataclass
class ImageSet:
    """Images (uint8 [N, C, H, W]) with labels (int64 [N]) and the class names."""
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                             f"{list(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape "
                             f"{list(self.labels.shape)}")
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.classes):
            raise ValueError(f"labels must be in [0, {len(self.classes)}), got "
                             f"[{int(self.labels.min())}, {int(self.labels.max())}]")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def subset(self, index) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index], self.classes)

    def views(self, resolution: int, batch_size: int, crop: float | None, mean, std, device):
        """Evaluation batches (x normalised on `device` at `resolution`, y) in order."""
        for x, y in eval_batches(self, batch_size, mean, std):
            yield eval_resize(x.to(device), resolution, crop), y.to(device)


def _fixed_permutation(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def _split(data: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """(rest, part): `fraction` of the items, chosen by a seeded permutation."""
    order = _fixed_permutation(len(data), seed)
    count = int(round(len(data) * fraction))
    return data.subset(np.sort(order[count:])), data.subset(np.sort(order[:count]))


# -- readers ------------------------------------------------------------------------------------
@register_dataset("digits")
def _digits(split: str, root: str | None = None, **options) -> ImageSet:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # values 0..16
    full = ImageSet(torch.from_numpy(images), torch.from_numpy(d.target.astype(np.int64)),
                    [str(c) for c in d.target_names])
    train, test = _split(full, _TEST_FRACTION, _SPLIT_SEED)
    return train if split == "train" else test


def _open_maybe_gz(directory: str, name: str, dataset: str, expected: str):
    for candidate in (name, name + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path, (gzip.open(path, "rb") if candidate.endswith(".gz") else open(path, "rb"))
    raise FileNotFoundError(f"{dataset}: {name}[.gz] not found in {directory!r}; expected {expected}. "
                            f"To get the data: {DATASETS.get(dataset).how_to_get}")


def read_idx(path: str, data: bytes) -> np.ndarray:
    """An IDX array (unsigned bytes): magic 0x0000 08 ndim, big-endian int32 sizes, the data."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic 0x000008nn expected, "
                         f"got {data[:4].hex() or 'nothing'})")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = data[4 + 4 * ndim:]
    if len(body) != int(np.prod(shape)):
        raise ValueError(f"{path}: IDX header says shape {list(shape)} ({int(np.prod(shape))} "
                         f"bytes) but {len(body)} bytes follow")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


@register_dataset(
    "fashion-mnist", needs_dir=True, default_dir="/usr/share/datasets/fashion-mnist",
    how_to_get="install Debian's package dataset-fashion-mnist (apt-get install "
               "dataset-fashion-mnist puts the files in /usr/share/datasets/fashion-mnist), or "
               "download the four IDX files from https://github.com/zalandoresearch/fashion-mnist "
               "and set data_dir=DIR")
def _fashion_mnist(split: str, root: str, **options) -> ImageSet:
    prefix = "train" if split == "train" else "t10k"
    expected = ("the IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (optionally .gz), as Debian's "
                "dataset-fashion-mnist installs them")
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        path, f = _open_maybe_gz(root, f"{prefix}-{kind}", "fashion-mnist", expected)
        with f:
            try:
                raw = f.read()
            except (OSError, EOFError) as e:
                raise ValueError(f"{path} cannot be read: {e}") from None
        arrays.append((path, read_idx(path, raw)))
    (ipath, images), (lpath, labels) = arrays
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"fashion-mnist: {ipath} has shape {list(images.shape)} and {lpath} "
                         f"{list(labels.shape)}; expected [N, H, W] images and [N] labels")
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]
    return ImageSet(torch.from_numpy(images.copy())[:, None],
                    torch.from_numpy(labels.astype(np.int64)), classes)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batches hold: dicts, lists, strings and numpy arrays (a generic
    unpickler would run whatever code a crafted file names)."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how Python 3 writes bytes at protocol 2

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_batch(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a CIFAR-10 python batch: {e}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR-10 python batch: expected a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


@register_dataset(
    "cifar10", needs_dir=True,
    how_to_get="download and unpack the CIFAR-10 python version from "
               "https://www.cs.toronto.edu/~kriz/cifar.html and set data_dir=DIR/cifar-10-batches-py")
def _cifar10(split: str, root: str, **options) -> ImageSet:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"cifar10: {name} not found in {root!r}; expected the python "
                                    f"batches directory (data_batch_1 ... data_batch_5, test_batch). "
                                    f"To get the data: {DATASETS.get('cifar10').how_to_get}")
        batch = _cifar_batch(path)
        data, lab = batch.get("data"), batch.get("labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != 3072 or lab is None or len(lab) != len(data):
            raise ValueError(f"{path}: expected 'data' uint8 [N, 3072] and N 'labels'")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(lab, dtype=np.int64))
    classes = [str(i) for i in range(10)]
    meta = os.path.join(root, "batches.meta")
    if os.path.isfile(meta):
        names_ = _cifar_batch(meta).get("label_names")
        if isinstance(names_, list) and len(names_) == 10:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names_]
    return ImageSet(torch.from_numpy(np.concatenate(images)),
                    torch.from_numpy(np.concatenate(labels)), classes)


def _folders(name: str, root: str, split: str, workers: int = 0, skip_bad_images: bool = False,
             test_dirs=("test", "val"), split_required: bool = False) -> FolderSet:
    """A split of image folders: `root`'s train/ and the first of `test_dirs` found beside it;
    without them (and unless `split_required`), a fixed 20% of the images of `root` is the test
    split."""
    workers = check_count("workers", workers, 0)
    options = {"dataset": name, "workers": workers, "skip_bad_images": skip_bad_images}
    train_dir = os.path.join(root, "train")
    test_dir = next((os.path.join(root, d) for d in test_dirs if os.path.isdir(os.path.join(root, d))),
                    None)
    if os.path.isdir(train_dir) and test_dir:
        classes = class_folders(train_dir, name) if split == "test" else None  # (not its files)
        return FolderSet.scan(train_dir if split == "train" else test_dir, classes, **options)
    if split_required:
        raise FileNotFoundError(f"{name}: {root!r} must hold train/ and {'/ or '.join(test_dirs)}/ "
                                f"folders. To get the data: {DATASETS.get(name).how_to_get}")
    train, test = _split(FolderSet.scan(root, **options), _TEST_FRACTION, _SPLIT_SEED)
    return train if split == "train" else test


@register_dataset(
    "imagefolder", needs_dir=True,
    how_to_get="set data_dir=DIR, a folder with one sub-folder of images per class (or train/ and "
               "test/ folders of those)")
def _imagefolder(split: str, root: str, workers: int = 0, skip_bad_images: bool = False,
                 **options) -> FolderSet:
    return _folders("imagefolder", root, split, workers, skip_bad_images)


@register_dataset(
    "imagenet", needs_dir=True, normalization="imagenet", eval_crop=IMAGENET_EVAL_CROP,
    how_to_get="set data_dir=DIR, the ImageNet folder with train/ and val/, each with one "
               "sub-folder of JPEGs per class (the layout of torchvision's ImageFolder)")
def _imagenet(split: str, root: str, workers: int = 0, skip_bad_images: bool = False,
              **options) -> FolderSet:
    return _folders("imagenet", root, split, workers, skip_bad_images, test_dirs=("val",),
                    split_required=True)


def load_dataset(name: str, split: str = "train", root: str | None = None, workers: int = 0,
                 skip_bad_images: bool = False) -> ImageSet | FolderSet:
    """One split ("train" or "test") of a registered dataset (module docstring). `root` is the
    dataset's directory (some have a default); `workers` and `skip_bad_images` apply to folders
    (nasops.data.folders.FolderSet)."""
    dataset = DATASETS.get(name)
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r} is not allowed; allowed: ['train', 'test']")
    if dataset.needs_dir:
        root = root or dataset.default_dir
        if root is None:
            raise ValueError(f"dataset {name!r} needs a directory (data_dir); {dataset.how_to_get}")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{name}: data directory {root!r} does not exist. To get the "
                                    f"data: {dataset.how_to_get}")
    data = dataset.read(split, root, workers=workers, skip_bad_images=skip_bad_images)
    if not isinstance(data, (ImageSet, FolderSet)):
        raise TypeError(f"dataset {name!r} returned {type(data).__name__} for split {split!r}; "
                        f"a reader returns a nasops.data.ImageSet (or FolderSet)")
    return data


@dataclass
class Splits:
    train: ImageSet | FolderSet    # what the supernet trains on
    holdout: ImageSet | FolderSet  # a fixed part of the training data, for scoring sub-networks
    test: ImageSet | FolderSet     # the dataset's test split, for final numbers only
    mean: torch.Tensor  # per-channel mean and std the images are normalised with, in [0, 1] units
    std: torch.Tensor
    # evaluation view: None resizes to the resolution (in memory; folders: the shorter side, then
    # the centre square); a fraction f resizes to ceil(resolution / f) and centre-crops the
    # resolution (the official ImageNet evaluation: 0.875)
    eval_crop: float | None = None


def load_splits(name: str, root: str | None = None, holdout: float = 0.1,
                holdout_seed: int = 0, limit: int | None = None,
                normalization: str | None = None, eval_crop: float | None = None,
                **read_options) -> Splits:
    """Train / held-out / test splits. `holdout` is the fraction of the training data set aside
    (by a permutation seeded with `holdout_seed`); `limit` keeps a fixed subset of at most that
    many training images (before the held-out split), for short studies. `normalization`:
    "dataset" (the training split's channel mean and std; for folders, those of a fixed sample
    of 256 images), "imagenet" (ImageNet's, as the released models expect) or None (imagenet for
    the imagenet dataset, dataset otherwise); `eval_crop`: see Splits (None for imagenet: 0.875).
    `read_options` go to the dataset's reader (:func:`load_dataset`: for folders, `workers` and
    `skip_bad_images`, see nasops.data.folders.FolderSet)."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout = {holdout!r} must be a fraction in (0, 1)")
    dataset = DATASETS.get(name)
    if normalization is None:
        normalization = dataset.normalization
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization = {normalization!r} is not allowed; allowed: "
                         f"{list(NORMALIZATIONS) + [None]}")
    if eval_crop is None:
        eval_crop = dataset.eval_crop
    if eval_crop is not None and (not is_number(eval_crop)
                                  or not 0 < eval_crop <= 1):
        raise ValueError(f"eval_crop = {eval_crop!r} must be null or a fraction in (0, 1]")
    train = load_dataset(name, "train", root, **read_options)
    test = load_dataset(name, "test", root, **read_options)
    if limit is not None:
        if not is_int(limit) or limit < 2:
            raise ValueError(f"limit = {limit!r} must be None or an integer >= 2")
        if limit < len(train):
            train = train.subset(np.sort(_fixed_permutation(len(train), holdout_seed + 1)[:limit]))
    train, held = _split(train, holdout, holdout_seed)
    if len(train) == 0 or len(held) == 0:
        raise ValueError(f"holdout = {holdout} of {len(train) + len(held)} images leaves an "
                         f"empty split")
    if normalization == "imagenet":
        if train.channels != 3:
            raise ValueError(f"normalization = 'imagenet' needs RGB images; {name} has "
                             f"{train.channels} channel(s)")
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    elif isinstance(train, FolderSet):
        mean, std = train.channel_stats()
    else:
        pixels = train.images.permute(1, 0, 2, 3).reshape(train.channels, -1).double() / 255.0
        mean, std = pixels.mean(1).float(), pixels.std(1).float().clamp(min=1e-3)
    return Splits(train, held, test, mean, std, None if eval_crop is None else float(eval_crop))
