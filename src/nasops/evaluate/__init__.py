"""Accuracy of sub-networks of a trained supernet: BN re-calibration on training images, then
top-1 accuracy on a split. Under torchrun the architectures are divided among the ranks (each
evaluates its share whole, with local BN statistics) and the results are gathered."""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from tqdm import tqdm

from ..data import Splits
from ..nn import Supernet, calibrate_bn
from ..nn.layers import DynamicBatchNorm2d
from ..space import SearchSpace
from ..utils import distributed as dist
from ..utils.cpu import use_channels_last
from ..utils.files import write_json
from ..utils.checks import is_int


def binomial_interval(accuracy, n: int, z: float = 1.959963984540054):
    """Wilson score interval (95% by default) of accuracies each measured on `n` images: arrays
    (low, high). An accuracy measured on n images is a binomial proportion; this interval keeps
    within [0, 1] and stays honest near 0 and 1, where most accuracies of interest lie."""
    if not is_int(n) or n < 1:
        raise ValueError(f"n = {n!r} must be a positive number of images")
    p = np.asarray(accuracy, dtype=np.float64)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("accuracies must lie in [0, 1]")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


class Evaluator:
    """Measures sub-networks of `net` on the splits of `splits`.

    Calibration uses the first `calib_images` training images of a fixed permutation, without
    augmentation, in batches of `batch_size`: every sub-network sees the same ones. Results are
    cached by (architecture, split), so nothing is evaluated twice.

    ``channels_last`` (True, False or "auto": channels-last on CPU, nasops.utils.cpu.use_channels_last)
    converts the supernet's weights to channels-last and runs the evaluation on channels-last
    batches, where the fused batch norm + activation and the NHWC depthwise kernels run; the
    accuracies are the same image for image (tested). The resized batches of each split are
    kept per resolution while they fit in `cache_bytes` (default 1 GiB), so that sub-networks at
    one resolution share them."""

    def __init__(self, net: Supernet, splits: Splits, batch_size: int = 256,
                 calib_images: int = 2048, device: torch.device | str = "cpu",
                 channels_last: bool | str = "auto", cache_bytes: int = 1 << 30):
        if not is_int(calib_images) or calib_images < 1:
            raise ValueError(f"calib_images = {calib_images!r} must be a positive integer")
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size = {batch_size!r} must be a positive integer")
        self.net, self.splits, self.batch_size, self.device = net, splits, batch_size, torch.device(device)
        order = np.random.default_rng(0).permutation(len(splits.train))[:calib_images]
        self._calib = splits.train.subset(np.sort(order))  # (once: every sub-network uses it)
        self.cache: dict[tuple, float] = {}
        self.channels_last = use_channels_last(channels_last, device)
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        self._stored: dict[tuple, list] = {}  # (split id, resolution) -> its batches
        self._stored_bytes, self.cache_bytes = 0, int(cache_bytes)

    @staticmethod
    def _check_split(name: str) -> str:
        if name not in ("holdout", "test", "train"):
            raise ValueError(f"split {name!r} is not allowed; allowed: ['holdout', 'test', 'train']")
        return name

    def _batches(self, data, resolution: int):
        key = (id(data), resolution)
        if key in self._stored:
            return self._stored[key]
        s = self.splits
        batches = data.views(resolution, self.batch_size, s.eval_crop, s.mean, s.std, self.device)
        if self.channels_last:
            batches = ((x.contiguous(memory_format=torch.channels_last), y) for x, y in batches)
        size = len(data) * data.channels * resolution * resolution * 4
        if self._stored_bytes + size > self.cache_bytes:
            return batches
        self._stored[key] = list(batches)
        self._stored_bytes += size
        return self._stored[key]

    @torch.no_grad()
    def calibrate(self, arch) -> int:
        """Makes `arch` the supernet's active sub-network with re-calibrated BN statistics (as
        before an export). Returns its resolution."""
        self.net.set_active(arch)
        res = self.net.active_arch.resolution
        calibrate_bn(self.net, (x for x, _ in self._batches(self._calib, res)))
        return res

    def calibration_batches(self, resolution: int):
        """The calibration images (the BN re-calibration's) as normalised batches at
        `resolution`: what int8 quantization calibrates its ranges on."""
        return (x for x, _ in self._batches(self._calib, resolution))

    @torch.no_grad()
    def module_accuracy(self, module, split: str, resolution: int) -> float:
        """Top-1 accuracy of any network `module` (a static one, an exported or quantized
        program) on `split`, fed exactly as the supernet's sub-networks are."""
        correct = seen = 0
        for x, y in self._batches(getattr(self.splits, self._check_split(split)), resolution):
            correct += int((module(x).argmax(1) == y).sum())
            seen += len(y)
        return correct / seen

    @torch.no_grad()
    def _measure(self, arch: np.ndarray, split: str) -> float:
        net = self.net
        res = self.calibrate(arch)
        was_training = net.training
        net.eval()
        correct = seen = 0
        for x, y in self._batches(getattr(self.splits, split), res):
            correct += (net(x).argmax(1) == y).sum()  # (on the device: one sync at the end)
            seen += len(y)
        net.train(was_training)
        return int(correct) / seen

    def accuracy(self, archs, split: str = "holdout", progress: bool = False) -> np.ndarray:
        """Top-1 accuracy (fraction) of each encoded architecture ([N, D] or [D]) on `split`
        ("holdout", "test" or "train"), after BN re-calibration. float64 [N]."""
        self._check_split(split)
        rows = self.net.space.rows(np.asarray(archs))
        keys = [(tuple(r.tolist()), split) for r in rows]
        todo = sorted({k for k in keys if k not in self.cache})
        mine = todo[dist.rank()::dist.world_size()]
        local = torch.zeros(len(todo), dtype=torch.float64)
        norms = [m for m in self.net.modules() if isinstance(m, DynamicBatchNorm2d)]
        groups = [m.process_group for m in norms]
        for m in norms:
            m.process_group = None  # each rank evaluates its architectures whole
        try:
            bar = tqdm(mine, desc=f"evaluate ({split})", unit="net",
                       disable=not progress or dist.rank() != 0)
            position = {k: i for i, k in enumerate(todo)}
            for key in bar:
                local[position[key]] = self._measure(np.asarray(key[0], dtype=np.int64), split)
        finally:
            for m, g in zip(norms, groups):
                m.process_group = g
        gathered = dist.all_reduce_sum(local.to(self.device) if self.device.type == "cuda" else local)
        for key, value in zip(todo, gathered.cpu().tolist()):
            self.cache[key] = value
        return np.array([self.cache[k] for k in keys], dtype=np.float64)


def write_evaluations(path: str, space, archs, accuracy, split: str, source: str) -> None:
    """The evaluation file `python -m nasops.predictor` reads: JSON with the space, the encodings,
    their MFLOPs and accuracies."""
    archs = np.asarray(archs)
    write_json(path, {"format": "nasops-evaluations-1", "space": space.config, "split": split,
                      "source": source, "encodings": archs.tolist(),
                      "mflops": space.flops(archs).tolist(),
                      "accuracy": np.asarray(accuracy, dtype=float).tolist()}, indent=None)


def read_evaluations(path: str):
    """(space, encodings [N, D], accuracy [N]) of an evaluation file; ValueError if malformed."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"evaluation file {path!r} does not exist")
    try:
        with open(path) as f:
            doc = json.load(f)
        if doc.get("format") != "nasops-evaluations-1":
            raise ValueError("format is not 'nasops-evaluations-1'")
        space = SearchSpace(doc["space"], source=path)
        archs = space.rows(np.asarray(doc["encodings"], dtype=np.int64))
        acc = np.asarray(doc["accuracy"], dtype=np.float64)
        if acc.shape != (len(archs),):
            raise ValueError(f"{len(archs)} encodings but {acc.size} accuracies")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(f"{path} is not a nasops evaluation file: {e}") from None
    return space, archs, acc

