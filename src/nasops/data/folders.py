"""Image folders read lazily from disk (the ``imagefolder`` and ``imagenet`` datasets).

Only the file names and labels are held in memory (in two numpy buffers, so that DataLoader
workers forked from the trainer share them instead of copying them page by page as Python
objects' reference counts change); images are decoded by ``torch.utils.data.DataLoader`` worker
processes when a batch needs them.

Training batches (:class:`FolderStream`) are deterministic in (seed, epoch, step): the epoch's
order is a permutation seeded by (seed, epoch), and each image's augmentation is seeded by
(seed, epoch, step, its position in the global batch), whichever worker decodes it. Each rank
decodes only its own slice of the global batch, and a stream started at step k of an epoch never
decodes the images of steps 0..k-1 (a resumed run skips them without reading them).

A file Pillow cannot read raises :class:`BadImageError` naming it, or, with ``skip_bad_images``,
is left out of its batch and counted (:attr:`FolderStream.bad_images`).
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from .augment import AutoAugment, center_view, random_resized_crop, require_pil
from .batches import augmentation_options, check_batch_size, epoch_order, mix_seed, normalize

log = logging.getLogger("nasops.data")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class BadImageError(ValueError):
    """An image file that cannot be decoded."""


def class_folders(root: str, dataset: str = "imagefolder") -> list[str]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{dataset}: {root!r} is not a directory; expected one sub-folder "
                                f"of images per class")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise ValueError(f"{dataset}: {root!r} has no class sub-folders; expected one sub-folder "
                         f"of images per class")
    return classes


class FolderSet:
    """Image files (paths relative to `root`) with labels (int64) and the class names.

    `workers` DataLoader processes decode its evaluation batches; `skip_bad_images` leaves out (and
    counts) files that cannot be decoded instead of raising BadImageError."""
    channels = 3  # images are converted to RGB

    def __init__(self, root: str, names: np.ndarray, offsets: np.ndarray, labels: np.ndarray,
                 classes: list[str], workers: int = 0, skip_bad_images: bool = False):
        self.root, self.names, self.offsets = root, names, offsets
        self.labels, self.classes = labels, classes
        self.workers, self.skip_bad_images = workers, skip_bad_images

    @classmethod
    def scan(cls, root: str, classes: list[str] | None = None, dataset: str = "imagefolder",
             **options) -> "FolderSet":
        """The images (by suffix, sorted by name) in the class sub-folders of `root`; `classes`
        (when given) must be exactly those sub-folders."""
        found = class_folders(root, dataset)
        if classes is not None and found != classes:
            raise ValueError(f"{dataset}: {root!r} has classes {found[:5]}{'...' if len(found) > 5 else ''} "
                             f"({len(found)}), expected the {len(classes)} classes of the training folder")
        names, labels = [], []
        for label, name in enumerate(found):
            files = sorted(e.name for e in os.scandir(os.path.join(root, name))
                           if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file())
            names += [f"{name}/{f}".encode() for f in files]
            labels += [label] * len(files)
        if not names:
            raise ValueError(f"{dataset}: no images ({', '.join(IMAGE_SUFFIXES)}) under {root!r}")
        offsets = np.zeros(len(names) + 1, dtype=np.int64)
        np.cumsum([len(n) for n in names], out=offsets[1:])
        blob = np.frombuffer(b"".join(names), dtype=np.uint8)
        return cls(root, blob, offsets, np.asarray(labels, dtype=np.int64), found, **options)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        name = self.names[self.offsets[i]:self.offsets[i + 1]].tobytes().decode()
        return os.path.join(self.root, name)

    def subset(self, index) -> "FolderSet":
        index = np.asarray(index, dtype=np.int64)
        starts, ends = self.offsets[index], self.offsets[index + 1]
        offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        names = (np.concatenate([self.names[s:e] for s, e in zip(starts, ends)])
                 if len(index) else np.zeros(0, dtype=np.uint8))
        return FolderSet(self.root, names, offsets, self.labels[index], self.classes,
                         self.workers, self.skip_bad_images)

    def channel_stats(self, count: int = 256, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std (in [0, 1] units) of a fixed sample of `count` images, each
        seen as its centre view at `size` px: the "dataset" normalisation of an image folder."""
        index = np.sort(np.random.default_rng(0).permutation(len(self))[:count])
        sums, squares, pixels = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
        for x, _ in self.eval_batches(size, 64, 1.0, index=index):
            x = x.double() / 255.0
            sums += x.sum((0, 2, 3))
            squares += (x * x).sum((0, 2, 3))
            pixels += x.numel() // 3
        mean = sums / pixels
        std = (squares / pixels - mean * mean).clamp(min=0).sqrt()
        return mean.float(), std.float().clamp(min=1e-3)

    def views(self, resolution: int, batch_size: int, crop: float | None, mean, std, device):
        """Evaluation batches (x normalised on `device`, y): the centre views at `resolution`
        (crop None: the shorter side resized to the resolution)."""
        mean, std = mean.view(1, -1, 1, 1).to(device), std.view(1, -1, 1, 1).to(device)
        for x, y in self.eval_batches(resolution, batch_size, 1.0 if crop is None else crop):
            yield normalize(x.to(device), mean, std), y.to(device)

    def eval_batches(self, resolution: int, batch_size: int, crop: float, index=None):
        """uint8 [B, 3, resolution, resolution] batches of the centre views (augment.center_view)
        of the images in order (or of `index`), with their labels."""
        keys = np.arange(len(self)) if index is None else np.asarray(index)
        batches = _Lazy(lambda: ([(int(i), 0) for i in keys[s:s + batch_size]]
                                 for s in range(0, len(keys), batch_size)),
                        -(-len(keys) // batch_size))
        transform = _EvalView(resolution, crop)
        for x, y, bad in _loader(_Decode(self, transform), batches, self.workers):
            self._check(bad)
            if x is not None:
                yield x, y

    def _check(self, bad: list[tuple[str, str]]) -> None:
        if bad and not self.skip_bad_images:
            path, error = bad[0]
            raise BadImageError(f"{path} is not a readable image ({error}); remove or replace it, "
                                f"or set skip_bad_images=true to leave such files out")
        for path, error in bad:
            log.warning("skipped %s: not a readable image (%s)", path, error)


# -- decoding (in DataLoader workers) -------------------------------------------------------------
class _EvalView:
    def __init__(self, resolution: int, crop: float):
        self.resolution, self.crop = resolution, crop

    def __call__(self, image, rng):
        return center_view(image, self.resolution, self.crop)


class _TrainView:
    """Random-resized crop at `size`, then horizontal flip and AutoAugment (each optional);
    without `augment`, the centre view."""

    def __init__(self, size: int, augment: bool, flip: bool, autoaugment: bool):
        self.size, self.augment, self.flip = size, augment, flip
        self.autoaugment = AutoAugment() if autoaugment else None

    def __call__(self, image, rng):
        if not self.augment:
            return center_view(image, self.size, 1.0)
        image = random_resized_crop(image, self.size, rng)
        if self.flip and rng.random() < 0.5:
            image = image.transpose(require_pil()[0].FLIP_LEFT_RIGHT)
        if self.autoaugment is not None:
            image = self.autoaugment(image, rng)
        return image


class _Decode(torch.utils.data.Dataset):
    """Item (index, seed) of a FolderSet: (uint8 [3, H, W] or None, label, path, error or None)."""

    def __init__(self, files: FolderSet, transform):
        self.files, self.transform = files, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, key):
        index, seed = key
        path, label = self.files.path(index), int(self.files.labels[index])
        Image = require_pil()[0]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")  # (decodes the whole file)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return None, label, path, f"{type(e).__name__}: {e}"
        image = self.transform(image, np.random.default_rng(seed))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())
        return pixels, label, path, None


class _Lazy:
    """The batches of keys a DataLoader asks for, made as it asks (not one list per epoch)."""

    def __init__(self, make, length: int):
        self.make, self.length = make, length

    def __iter__(self):
        return iter(self.make())

    def __len__(self):
        return self.length


def _collate(items):
    good = [item for item in items if item[3] is None]
    x = torch.stack([item[0] for item in good]) if good else None
    y = torch.tensor([item[1] for item in good], dtype=torch.int64)
    return x, y, [(item[2], item[3]) for item in items if item[3] is not None]


def _loader(dataset, batches, workers: int, pin_memory: bool = False):
    # (its own generator: a DataLoader otherwise draws its workers' seeds from the global RNG,
    # which dropout and drop-connect use, so a resumed run would draw other masks)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                       collate_fn=_collate, pin_memory=pin_memory,
                                       generator=torch.Generator().manual_seed(0))


# -- training batches ---------------------------------------------------------------------------
class FolderStream:
    """Training batches of a FolderSet (module docstring): `batch_size` is the global batch, each
    of `world` ranks decodes its contiguous slice; crops of `size` px; incomplete last batches
    are dropped. Same interface as data.BatchStream."""

    def __init__(self, data: FolderSet, batch_size: int, mean: torch.Tensor, std: torch.Tensor,
                 size: int, seed: int = 0, *, rank: int = 0, world: int = 1, **augmentation):
        """`augmentation`: augment (True: Inception crops; False: centre views), flip (True) and
        autoaugment (False: AutoAugment's ImageNet policy)."""
        check_batch_size(batch_size, world, len(data))
        a = augmentation_options(augmentation, augment=True, flip=True, autoaugment=False)
        self.data, self.batch_size, self.seed, self.rank, self.world = data, batch_size, seed, rank, world
        self.mean, self.std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
        self.transform = _TrainView(size, a["augment"], a["flip"], a["autoaugment"])
        self.bad_images = 0  # files skipped so far (skip_bad_images)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data) // self.batch_size

    def keys(self, epoch: int, start_step: int = 0):
        """This rank's (image index, augmentation seed) lists, one per step from `start_step`."""
        order = epoch_order(len(self.data), self.seed, epoch).numpy()
        part = self.batch_size // self.world
        for step in range(start_step, self.steps_per_epoch):
            first = step * self.batch_size + self.rank * part
            yield [(int(order[first + j]), mix_seed(self.seed, epoch, step, self.rank * part + j))
                   for j in range(part)]

    def epoch(self, epoch: int, start_step: int = 0, device: torch.device | str = "cpu"):
        """(x, y) on `device` for each step of `epoch` from `start_step`: x normalised float
        [B / world, 3, size, size] (decoded while the caller trains on the previous batches)."""
        device = torch.device(device)
        mean, std = self.mean.to(device), self.std.to(device)
        batches = _Lazy(lambda: self.keys(epoch, start_step), self.steps_per_epoch - start_step)
        for x, y, bad in _loader(_Decode(self.data, self.transform), batches, self.data.workers,
                                 pin_memory=device.type == "cuda"):
            self.data._check(bad)
            self.bad_images += len(bad)
            if x is None:
                raise BadImageError(f"every image of a batch of epoch {epoch + 1} was unreadable "
                                    f"(e.g. {bad[0][0]}); check the data folder")
            x = normalize(x.to(device, non_blocking=True), mean, std)
            yield x, y.to(device, non_blocking=True)
