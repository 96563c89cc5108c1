"""Batches: the training order and augmentation of in-memory image sets (:class:`BatchStream`),
the evaluation batches and the resize to a sub-network's resolution. A batch depends only on
(seed, epoch, step), so a resumed run sees the same batches and every DDP rank takes its own
slice of the same global batch."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .augment import eval_size
from ..utils.checks import is_int

if TYPE_CHECKING:
    from . import ImageSet


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, C, H, W] as the network's input: (x / 255 - mean) / std per channel
    (mean and std broadcast over [N, C, H, W], e.g. [1, C, 1, 1]); a new float32 tensor."""
    return images.to(torch.float32, copy=True).div_(255.0).sub_(mean).div_(std)


def resize_batch(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """A batch resized to resolution x resolution (bicubic, as the paper does)."""
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False)


def eval_resize(x: torch.Tensor, resolution: int, crop: float | None = None) -> torch.Tensor:
    """The evaluation view of a normalised batch at a sub-network's resolution: resized to it
    (crop None), or resized to ceil(resolution / crop) and centre-cropped to the resolution, as
    the official ImageNet evaluation does (crop 0.875; the crop offset rounds like torchvision's
    CenterCrop)."""
    if crop is None:
        return resize_batch(x, resolution)
    size = eval_size(resolution, crop)
    x = resize_batch(x, size)
    top = int(round((size - resolution) / 2.0))
    return x[..., top:top + resolution, top:top + resolution]


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (SplitMix64 steps), for per-epoch / per-step generators."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h >> 1


class BatchStream:
    """Training batches of an ImageSet: shuffled per epoch, augmented, normalised.

    `batch_size` is the global batch; with `world` > 1 each rank gets its contiguous slice
    (batch_size / world images) of the same global batch, so a DDP run sees exactly the data of
    one process with the whole batch. Incomplete last batches are dropped."""

    def __init__(self, data: ImageSet, batch_size: int, mean: torch.Tensor, std: torch.Tensor,
                 seed: int = 0, *, rank: int = 0, world: int = 1, **augmentation):
        """`augmentation`: augment (True: a random crop of the zero-padded image), flip (False:
        also a random horizontal flip)."""
        check_batch_size(batch_size, world, len(data))
        augmentation = augmentation_options(augmentation, augment=True, flip=False)
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.augment, self.flip = augmentation["augment"], augmentation["flip"]
        self.rank, self.world = rank, world
        self.mean, self.std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
        self.pad = max(1, data.images.shape[-1] // 8)  # 4 px at 32, 1 px at 8
        self._order = (None, None)  # (epoch, permutation): drawn once per epoch, not per step

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data) // self.batch_size

    def batch(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of global batch `step` of `epoch`: float [B, C, H, W], labels [B]."""
        if self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.data), self.seed, epoch))
        index = self._order[1][step * self.batch_size:(step + 1) * self.batch_size]
        gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch, step))  # augmentation
        x = self.data.images[index]
        if self.augment:
            x = random_crop(x, self.pad, gen)
            if self.flip:
                mirror = torch.rand(len(x), generator=gen) < 0.5
                x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(-1), x)
        part = slice(self.rank * len(x) // self.world, (self.rank + 1) * len(x) // self.world)
        return self.normalize(x[part]), self.data.labels[index][part]

    def epoch(self, epoch: int, start_step: int = 0, device: torch.device | str = "cpu"):
        """(x, y) on `device` for each step of `epoch` from `start_step` (FolderStream's
        interface)."""
        for step in range(start_step, self.steps_per_epoch):
            x, y = self.batch(epoch, step)
            yield x.to(device), y.to(device)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.mean, self.std)


def augmentation_options(given: dict, **defaults) -> dict:
    """The augmentation keywords a stream was given over its `defaults`; TypeError naming one it
    does not take."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"unknown augmentation option(s) {unknown}; allowed: {sorted(defaults)}")
    return {**defaults, **given}


def check_batch_size(batch_size, world: int, images: int) -> None:
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size = {batch_size!r} must be a positive integer")
    if batch_size % world:
        raise ValueError(f"batch_size = {batch_size} must be a multiple of the number of "
                         f"processes ({world})")
    if batch_size > images:
        raise ValueError(f"batch_size = {batch_size} exceeds the {images} training images")


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the n training images in `epoch` (a permutation seeded by (seed, epoch))."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Each image zero-padded by `pad` and cropped back to its size at a random offset."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)).view(n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w)).view(n, 1, 1, w)
    return padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), rows, cols]


def eval_batches(data: ImageSet, batch_size: int, mean: torch.Tensor, std: torch.Tensor,
                 rank: int = 0, world: int = 1):
    """Un-augmented, normalised (x, y) batches in order; rank r of `world` gets batches r, r +
    world, ... so the ranks together see every image once."""
    m, s = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    for start in range(rank * batch_size, len(data), world * batch_size):
        x = data.images[start:start + batch_size]
        yield normalize(x, m, s), data.labels[start:start + batch_size]
