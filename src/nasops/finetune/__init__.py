"""Fine-tuning one picked sub-network alone, after the search.

The sub-network starts as the search exported it (the supernet's weights, BN statistics
re-calibrated), then trains as an ordinary static network on the run's training data (the recipe's augmentation, label
smoothing, Nesterov SGD and weight decay; a cosine learning rate from ``lr`` to 0, no warm-up,
no dropout), optionally distilled from the supernet's largest sub-network with the recipe's
distillation loss. After each epoch it is measured on the held-out split; the best epoch's
weights are kept (epoch 0, the inherited weights, included), so fine-tuning never returns a
network that the held-out split rates worse than the one it started from. The test split is
measured only before and after.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Mapping

import numpy as np
import torch
from tqdm import tqdm

from ..space import Arch
from ..evaluate import Evaluator, binomial_interval
from ..train.losses import distillation_loss, distillation_weight, smoothed_cross_entropy
from ..train.loop import peak_lr, training_stream
from ..train.recipe import loss_options
from ..train.step import batch_view, clip_gradients
from ..utils.checks import is_int, is_number

SPLITS = ("holdout", "test")


@dataclasses.dataclass
class FinetuneOptions:
    """How a pick is fine-tuned. None takes the run's recipe value (``lr``: a tenth of it)."""
    epochs: int = 5
    lr: float | None = None
    batch_size: int | None = None
    distill: bool = False        # add the recipe's distillation loss from the largest sub-network
    kd_weight: float | None = None
    seed: int = 0

    def check(self) -> "FinetuneOptions":
        if not is_int(self.epochs) or self.epochs < 1:
            raise ValueError(f"epochs = {self.epochs!r} must be a positive integer")
        if self.lr is not None and (not is_number(self.lr) or not 0 < self.lr < math.inf):
            raise ValueError(f"lr = {self.lr!r} must be a positive number")
        if self.batch_size is not None and (not is_int(self.batch_size) or self.batch_size < 1):
            raise ValueError(f"batch_size = {self.batch_size!r} must be a positive integer")
        if self.kd_weight is not None and (not is_number(self.kd_weight) or self.kd_weight < 0):
            raise ValueError(f"kd_weight = {self.kd_weight!r} must be a number >= 0")
        if not is_int(self.seed):
            raise ValueError(f"seed = {self.seed!r} must be an integer")
        if self.kd_weight is not None and not self.distill:
            raise ValueError(f"kd_weight = {self.kd_weight!r} weights the distillation, which "
                             f"only distill = True adds")
        return self


def encoding(space, arch) -> np.ndarray:
    """`arch` (an Arch, a dict of one, or an encoded vector) as a checked encoding of `space`."""
    if isinstance(arch, (Arch, Mapping)):
        return space.encode(arch)
    return space.rows(np.asarray(arch))[0]


def measured(evaluator: Evaluator, module, resolution: int) -> dict:
    """Held-out and test accuracy of `module`, with binomial 95% intervals."""
    out = {}
    for split in SPLITS:
        acc = evaluator.module_accuracy(module.eval(), split, resolution)
        out[f"{split}_acc"] = acc
        out[f"{split}_ci95"] = [float(v) for v in binomial_interval(acc, len(getattr(evaluator.splits, split)))]
    return out


class _Finetune:
    """One fine-tuning: the student, its optimizer and schedule, the teacher if any."""

    def __init__(self, net, cfg, evaluator: Evaluator, arch, options: FinetuneOptions,
                 weights: dict | None):
        self.cfg, self.options, self.evaluator = cfg, options, evaluator
        space = net.space
        self.teacher = None
        if options.distill:
            largest = space.encode(space.max_arch())
            self.teacher_res = evaluator.calibrate(largest)
            self.teacher = net.extract(largest).eval()
        self.resolution = evaluator.calibrate(arch)
        self.student = net.extract(arch)
        if weights is not None:  # (an exported pick: exactly its weights and BN statistics)
            self.student.load_state_dict(weights)
        torch.manual_seed(options.seed)
        splits = evaluator.splits
        self.stream = training_stream(dict(cfg, seed=options.seed), splits,
                                      max(space.config["resolution"]),
                                      batch_size=options.batch_size)
        decay = [p for p in self.student.parameters() if p.dim() > 1]
        rest = [p for p in self.student.parameters() if p.dim() <= 1]
        # default: a tenth of the peak the recipe trains with at this batch size (lr_batch scaling)
        self.lr = options.lr if options.lr is not None else peak_lr(
            dict(cfg, batch_size=self.stream.batch_size)) / 10
        self.optimizer = torch.optim.SGD([{"params": decay, "weight_decay": cfg["weight_decay"]},
                                          {"params": rest, "weight_decay": 0.0}], lr=self.lr,
                                         momentum=cfg["momentum"], nesterov=cfg["nesterov"])
        total = options.epochs * self.stream.steps_per_epoch
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(1.0, step / total))))
        if options.distill:
            self.kd_weight = distillation_weight(cfg["kd"], options.kd_weight if options.kd_weight
                                                 is not None else cfg["kd_weight"])
            self.kd_options = loss_options(cfg)

    def loss(self, x, y) -> torch.Tensor:
        cfg = self.cfg
        logits = self.student(batch_view(x, self.resolution, cfg["channels_last"]))
        loss = smoothed_cross_entropy(logits, y, cfg["label_smoothing"])
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher(batch_view(x, self.teacher_res, cfg["channels_last"]))
            loss = loss + self.kd_weight * distillation_loss(cfg["kd"], logits, target,
                                                             self.kd_options)
        return loss

    def epoch(self, epoch: int, bar) -> float:
        """Trains one epoch; the mean loss."""
        self.student.train()
        total, count = 0.0, 0
        for x, y in self.stream.epoch(epoch):
            loss = self.loss(x, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning: the loss is {loss.item()} at epoch "
                                         f"{epoch + 1}; lower lr (now {self.lr:g})")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(self.student, self.cfg["grad_clip"], self.cfg["grad_clip_mode"])
            self.optimizer.step()
            self.schedule.step()
            total, count = total + loss.item(), count + 1
            bar.update()
        return total / max(count, 1)


def finetune(net, cfg, evaluator: Evaluator, arch, options: FinetuneOptions | None = None,
             progress: bool = True, weights: dict | None = None):
    """Fine-tunes sub-network `arch` (an encoding, Arch or dict) of the trained supernet `net`
    (whose recipe is `cfg`) on `evaluator`'s data (see the module docstring), starting from the
    supernet's weights with BN re-calibrated by `evaluator`, or from `weights`, the state dict of
    the static network (an exported pick's state_dict.pt). Returns the
    static network (eval mode, the best epoch's weights) and a report: before, after (held-out
    and test accuracy with 95% intervals), the gain in points, and each epoch's loss and held-out
    accuracy."""
    options = (options or FinetuneOptions()).check()
    start = time.perf_counter()
    job = _Finetune(net, cfg, evaluator, encoding(net.space, arch), options, weights)
    before = measured(evaluator, job.student, job.resolution)
    best = (before["holdout_acc"], 0, copy.deepcopy(job.student.state_dict()))
    history = []
    with tqdm(total=options.epochs * job.stream.steps_per_epoch, desc="fine-tune", unit="step",
              disable=not progress) as bar:
        for epoch in range(options.epochs):
            loss = job.epoch(epoch, bar)
            acc = evaluator.module_accuracy(job.student.eval(), "holdout", job.resolution)
            history.append({"epoch": epoch + 1, "loss": loss, "holdout_acc": acc})
            if acc > best[0]:
                best = (acc, epoch + 1, copy.deepcopy(job.student.state_dict()))
    job.student.load_state_dict(best[2])
    after = measured(evaluator, job.student, job.resolution)
    report = {"before": before, "after": after, "kept_epoch": best[1],
              "gain_points": {s: 100 * (after[f"{s}_acc"] - before[f"{s}_acc"]) for s in SPLITS},
              "options": dataclasses.asdict(options) | {"lr": job.lr} | (
                  {"kd_weight": job.kd_weight, "kd": cfg["kd"]} if options.distill else {}),
              "steps": options.epochs * job.stream.steps_per_epoch, "history": history,
              "seconds": time.perf_counter() - start}
    return job.student.eval(), report
