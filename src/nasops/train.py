"""Stage 1: train a supernet with the sandwich rule, in-place distillation and a sampling strategy.

    python -m nasops.train                                  # the digits recipe (CPU, minutes)
    python -m nasops.train --recipe fashion-mnist strategy=bestup-3-loss kd=alpha epochs=10
    python -m nasops.train --resume runs/digits-uniform-seed0-20261123-101500
    torchrun --nproc_per_node=2 -m nasops.train --recipe fashion-mnist

Each step trains, on one batch, the largest sub-network (label-smoothed cross-entropy, dropout and
drop-connect), the smallest and ``num_sampled`` sub-networks drawn by the strategy (distilled
from the largest's detached logits by ``kd``: "kl" or AlphaNet's "alpha"), accumulates their
gradients and takes one SGD step (Nesterov momentum, warm-up then cosine learning rate, gradient
clipping). Weight decay applies once per step, which is weight decay on the largest sub-network
only (it uses every weight) as the papers do; BN and bias parameters have none.

A run directory holds ``config.yaml`` (the resolved recipe), ``metrics.jsonl`` (losses and
learning rate every ``log_every`` steps; per epoch, the BN-calibrated held-out accuracy of the
smallest and largest sub-networks), ``curves.png`` (with matplotlib), ``tensorboard/`` (with
tensorboard), ``checkpoint.pt`` (written atomically every epoch and on SIGINT/SIGTERM) and at the
end ``final.json``: the held-out and test accuracy of the smallest and largest sub-networks.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
import zlib
from importlib import resources

import numpy as np
import torch
import yaml
from tqdm import tqdm

from . import distributed as dist
from .checkpoint import FORMAT as CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from .cli import STAGES, prog as prog_name
from .data import DATASETS, NORMALIZATIONS, BatchStream, FolderSet, FolderStream, splits_of
from .evaluate import Evaluator
from .losses import KD_LOSSES, distillation_loss, smoothed_cross_entropy
from .nn import Supernet, frozen_bn_stats, preserved_bn_stats, resize_batch, sync_batchnorm
from .ops import BACKENDS, set_dw_backend
from .plots import MISSING as PLOTS_MISSING, plot_training_curves
from .predictor import AccuracyPredictor
from .sampling import Strategy, parse_strategy
from .space import SearchSpace

log = logging.getLogger("nasops.train")

# amp key -> autocast dtype of the training forwards
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Every recipe key: its default and what it does. A recipe file or a key=value override sets any.
KEYS = {
    "recipe": ("digits", "name of the recipe these values start from (set by --recipe)"),
    # data
    "dataset": ("digits", "digits, fashion-mnist, cifar10 (in memory), imagefolder or imagenet "
                          "(read from disk by workers)"),
    "data_dir": (None, "the dataset's directory (null: the dataset's default; digits needs none)"),
    "workers": (2, "imagefolder/imagenet: DataLoader processes decoding images, per rank"),
    "skip_bad_images": (False, "imagefolder/imagenet: leave out (and count) unreadable files "
                               "instead of stopping with an error naming the file"),
    "image_size": (None, "imagefolder/imagenet: side of the random-resized training crops "
                         "(null: the space's largest resolution)"),
    "holdout": (0.1, "fraction of the training images held out to score sub-networks"),
    "holdout_seed": (0, "seed of the held-out split"),
    "limit": (None, "train on a fixed subset of at most this many images (null: all)"),
    "normalization": (None, "per-channel mean/std: dataset (the training split's), imagenet "
                            "(ImageNet's, as the released supernets expect) or null (imagenet "
                            "for the imagenet dataset, dataset otherwise)"),
    "eval_crop": (None, "evaluation: resize to ceil(resolution / eval_crop) and centre-crop "
                        "(the official ImageNet evaluation: 0.875); null: 0.875 for imagenet, "
                        "otherwise resize to the resolution"),
    "augment": (True, "in memory: random crop with zero padding; folders: random-resized crop "
                      "(off: the centre view)"),
    "flip": (False, "random horizontal flip (with augment)"),
    "autoaugment": (False, "folders: the ImageNet AutoAugment policy of the official code (with "
                           "augment)"),
    # supernet
    "space": ("small", "search space: a packaged name (small, attentive_nas) or a YAML path"),
    "dropout": (0.1, "dropout before the classifier, largest sub-network only"),
    "drop_connect": (0.1, "drop-connect, largest only, as published: last two stages, block i of "
                          "the supernet's n gets drop_connect * i / n"),
    "zero_init_residual": (False, "start each block as its residual path (zero scale of its "
                                  "last BN), as the published models do"),
    "dw_backend": ("nasops", "depthwise convolution: nasops (the kernels) or torch (reference)"),
    "amp": ("none", "mixed precision of the training forwards: none, bf16 or fp16 (autocast; "
                    "fp16 with a gradient scaler); losses and evaluation stay float32"),
    "channels_last": (False, "channels-last memory format for the supernet and its batches"),
    "sync_bn": (True, "under torchrun: BN statistics over all ranks"),
    # optimisation
    "epochs": (12, "training epochs"),
    "batch_size": (64, "global batch (divided among torchrun ranks)"),
    "lr": (0.1, "peak learning rate (SGD), for a batch of lr_batch images"),
    "lr_batch": (None, "linear scaling: lr and lr_min are for this global batch and scale with "
                       "batch_size / lr_batch (published: 0.1 per 256); null: used as given"),
    "lr_min": (0.0, "learning rate at the end of the cosine schedule"),
    "warmup_epochs": (1.0, "linear warm-up over this many epochs"),
    "warmup_start": (0.001, "the warm-up's first learning rate, as a fraction of lr (published: "
                            "0.001)"),
    "momentum": (0.9, "SGD momentum"),
    "nesterov": (True, "Nesterov momentum"),
    "weight_decay": (5e-5, "on conv and linear weights (not BN, not biases), once per step"),
    "label_smoothing": (0.1, "of the largest sub-network's cross-entropy"),
    "grad_clip": (5.0, "gradient clipping threshold per step (null: no clipping)"),
    "grad_clip_mode": ("norm", "norm: the whole gradient's norm; value: each element (the "
                               "published recipe: value at 1.0)"),
    # sampling
    "strategy": ("uniform", "how the sampled sub-networks are drawn (README: Strategies)"),
    "num_sampled": (2, "sub-networks per step besides the largest and the smallest"),
    "target_bins": ("prior", "FLOPs targets from the prior, or uniform over its bins"),
    "predictor": (None, "predictor file, for the -acc and -offline strategies"),
    "pool_size": (1_000_000, "offline strategies: uniform sub-networks predicted at start"),
    "n_prior": (200_000, "uniform samples the FLOPs prior and proposal are built from"),
    # distillation
    "kd": ("kl", "distillation of the smaller sub-networks: kl, or alpha (AlphaNet)"),
    "kd_weight": (None, "weight of the distillation loss against the largest's cross-entropy "
                        "(null: the loss's default, kl 1.0 as published, alpha 0.5 as measured)"),
    "alpha_min": (-1.0, "kd alpha: the negative alpha of the adaptive divergence"),
    "alpha_max": (1.0, "kd alpha: the positive alpha of the adaptive divergence"),
    "alpha_clip": (5.0, "kd alpha: clip of the importance weights"),
    # bookkeeping
    "seed": (0, "seed of everything: initialisation, data order, augmentation, sampling"),
    "log_every": (10, "steps between loss lines in metrics.jsonl"),
    "eval_every": (1, "epochs between held-out accuracies of the smallest and largest "
                      "(0: only at the end)"),
    "eval_batch_size": (256, "batch size of evaluation"),
    "calib_images": (1024, "training images for BN re-calibration before each evaluation"),
}
DEFAULTS = {key: default for key, (default, _) in KEYS.items()}


def _recipe_dir():
    return resources.files("nasops") / "configs" / "recipes"


def packaged_recipes() -> list[str]:
    return sorted(e.name[:-5] for e in _recipe_dir().iterdir() if e.name.endswith(".yaml"))


def load_recipe(name_or_path: str) -> dict:
    """A packaged recipe by name or a YAML file by path, merged over DEFAULTS and checked."""
    if os.sep in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        if not os.path.isfile(name_or_path):
            raise FileNotFoundError(f"recipe file {name_or_path!r} does not exist")
        with open(name_or_path) as f:
            text, source = f.read(), name_or_path
        name = os.path.splitext(os.path.basename(name_or_path))[0]
    else:
        if name_or_path not in packaged_recipes():
            raise ValueError(f"unknown recipe {name_or_path!r}; packaged recipes: "
                             f"{packaged_recipes()} (or give a path to a YAML file)")
        text = (_recipe_dir() / f"{name_or_path}.yaml").read_text()
        source, name = f"recipes/{name_or_path}.yaml", name_or_path
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{source} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{source} must be a mapping of recipe keys")
    return check_config({**DEFAULTS, "recipe": name, **raw}, source)


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """key=value strings (values parsed as YAML) applied to a config, then checked."""
    out = dict(config)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: {e}") from None
    return check_config(out, "command line")


def check_config(cfg: dict, source: str = "config") -> dict:
    """The config if every key is known and every value allowed; ValueError naming it otherwise."""
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{source}: unknown recipe key(s) {unknown}; allowed: {sorted(DEFAULTS)}")

    def bad(key, allowed):
        raise ValueError(f"{source}: {key} = {cfg[key]!r} is not allowed; allowed: {allowed}")

    def integer(key, lo, none=False):
        v = cfg[key]
        if v is None and none:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            bad(key, f"an integer >= {lo}" + (" or null" if none else ""))

    def number(key, lo, hi=math.inf, none=False, open_lo=False):
        v = cfg[key]
        if v is None and none:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                (lo < v if open_lo else lo <= v) and v <= hi):
            bad(key, f"a number in {'(' if open_lo else '['}{lo}, {hi}]" + (" or null" if none else ""))

    def flag(key):
        if not isinstance(cfg[key], bool):
            bad(key, "true or false")

    if cfg["dataset"] not in DATASETS:
        bad("dataset", list(DATASETS))
    for key in ("data_dir", "predictor"):
        if cfg[key] is not None and not isinstance(cfg[key], str):
            bad(key, "a path or null")
    if not isinstance(cfg["space"], str):
        bad("space", "a packaged space name or a YAML path")
    for key in ("epochs", "batch_size", "num_sampled", "pool_size", "n_prior",
                "log_every", "eval_every", "eval_batch_size", "calib_images", "workers"):
        integer(key, 0 if key in ("num_sampled", "eval_every", "workers") else 1)
    integer("image_size", 8, none=True)
    integer("limit", 2, none=True)
    for key in ("seed", "holdout_seed"):
        integer(key, 0)
    integer("lr_batch", 1, none=True)
    number("holdout", 0, 1, open_lo=True)
    for key in ("lr", "alpha_clip"):
        number(key, 0, open_lo=True)
    for key in ("lr_min", "warmup_epochs", "weight_decay"):
        number(key, 0)
    number("kd_weight", 0, none=True)
    number("grad_clip", 0, none=True, open_lo=True)
    number("warmup_start", 0, 1)
    if cfg["grad_clip_mode"] not in ("norm", "value"):
        bad("grad_clip_mode", ["norm", "value"])
    for key in ("momentum", "dropout", "drop_connect"):
        number(key, 0, 1)
    number("label_smoothing", 0, 0.999)
    number("alpha_min", -math.inf)
    number("alpha_max", -math.inf)
    if not cfg["alpha_min"] < 0 < cfg["alpha_max"]:
        raise ValueError(f"{source}: alpha_min = {cfg['alpha_min']} and alpha_max = "
                         f"{cfg['alpha_max']} must satisfy alpha_min < 0 < alpha_max")
    for key in ("augment", "flip", "nesterov", "sync_bn", "zero_init_residual", "autoaugment",
                "skip_bad_images"):
        flag(key)
    if cfg["kd"] not in KD_LOSSES:
        bad("kd", list(KD_LOSSES))
    if cfg["amp"] not in AMP_DTYPES:
        bad("amp", list(AMP_DTYPES))
    flag("channels_last")
    if cfg["dw_backend"] not in BACKENDS:
        bad("dw_backend", list(BACKENDS))
    if cfg["normalization"] not in NORMALIZATIONS + (None,):
        bad("normalization", list(NORMALIZATIONS) + [None])
    number("eval_crop", 0, 1, none=True, open_lo=True)
    if cfg["target_bins"] not in ("prior", "uniform"):
        bad("target_bins", ["prior", "uniform"])
    kind, _, _ = parse_strategy(cfg["strategy"])
    if kind in ("acc", "offline") and cfg["predictor"] is None:
        raise ValueError(f"{source}: strategy {cfg['strategy']!r} needs predictor = a predictor "
                         f"file (python -m nasops.predictor makes one)")
    if cfg["lr_min"] > cfg["lr"]:
        raise ValueError(f"{source}: lr_min = {cfg['lr_min']} exceeds lr = {cfg['lr']}")
    return cfg


# -- run state ----------------------------------------------------------------------------------
def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": json.dumps(_np_state()),
             "python": json.dumps(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _np_state():
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, keys.tolist(), pos, has_gauss, gauss]


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = json.loads(state["numpy"])
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _lr_factor(cfg: dict, steps_per_epoch: int):
    """Linear warm-up from warmup_start x lr over warmup_epochs, then cosine from lr to lr_min."""
    total = cfg["epochs"] * steps_per_epoch
    warm = min(int(round(cfg["warmup_epochs"] * steps_per_epoch)), total)
    floor = cfg["lr_min"] / cfg["lr"]

    def factor(step: int) -> float:
        if step < warm:
            return cfg["warmup_start"] + (1 - cfg["warmup_start"]) * step / warm
        progress = (step - warm) / max(1, total - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def peak_lr(cfg: dict) -> float:
    """lr, scaled linearly with the global batch when lr_batch is set."""
    return cfg["lr"] * (1.0 if cfg["lr_batch"] is None else cfg["batch_size"] / cfg["lr_batch"])


def clip_gradients(net: torch.nn.Module, cfg: dict) -> None:
    """grad_clip by the whole gradient's norm or by each element's value (grad_clip_mode)."""
    if cfg["grad_clip"] is not None and cfg["grad_clip_mode"] == "value":
        torch.nn.utils.clip_grad_value_(net.parameters(), cfg["grad_clip"])
    elif cfg["grad_clip"] is not None:
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg["grad_clip"])


def build_space(cfg: dict, splits) -> SearchSpace:
    return SearchSpace.load(cfg["space"], num_classes=len(splits.train.classes),
                            in_channels=splits.train.channels)


class _Stop:
    """Set by SIGINT / SIGTERM (or a test): the loop saves a checkpoint at the end of the step."""

    def __init__(self):
        self.requested = None
        self._previous = {}

    def install(self):
        if _in_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second one kills

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def default_run_dir(cfg: dict) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{cfg['recipe']}-{cfg['strategy']}-seed{cfg['seed']}-{stamp}")


def train(cfg: dict, run_dir: str, resume: bool = False, progress: bool = True,
          stop_after_steps: int | None = None) -> dict:
    """Trains per `cfg` in `run_dir` (resuming from its checkpoint with `resume`). Returns the
    final metrics, or {"interrupted": step} when stopped by a signal (or, for tests, after
    `stop_after_steps` optimizer steps of this call)."""
    cfg = check_config(dict(cfg))
    previous = set_dw_backend(cfg["dw_backend"])
    try:
        return _train(cfg, run_dir, resume, progress, stop_after_steps)
    finally:
        set_dw_backend(previous)


class _RunLog:
    """What a run records besides its checkpoint (rank 0 only): every entry as a line of
    metrics.jsonl, the scalars as TensorBoard events in tensorboard/ (when the tensorboard
    package is installed) and the curves as curves.png (when matplotlib is)."""

    STEP_TAGS = {"loss_largest": "loss/largest", "loss_smallest": "loss/smallest",
                 "loss_sampled": "loss/sampled", "lr": "lr"}
    EPOCH_TAGS = {"holdout_acc_smallest": "holdout_acc/smallest",
                  "holdout_acc_largest": "holdout_acc/largest"}

    def __init__(self, run_dir: str, active: bool):
        self.run_dir, self.active = run_dir, active
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.file = open(self.path, "a") if active else None
        self.events = None
        if active:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self.events = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    def record(self, entry: dict) -> None:
        if not self.active:
            return
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()
        if self.events is not None and "step" in entry:
            tags = self.EPOCH_TAGS if entry.get("event") == "epoch" else self.STEP_TAGS
            for key, tag in tags.items():
                if key in entry:
                    self.events.add_scalar(tag, entry[key], entry["step"])
            self.events.flush()

    def plot(self) -> bool:
        """curves.png from the whole metrics.jsonl (earlier invocations of a resumed run
        included); False when matplotlib is missing."""
        if not self.active:
            return False
        with open(self.path) as f:
            return plot_training_curves(os.path.join(self.run_dir, "curves.png"),
                                        [json.loads(line) for line in f if line.strip()])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.events is not None:
            self.events.close()


@dataclasses.dataclass
class Run:
    """What a training run is made of, as build_run sets it up from a recipe."""
    splits: object
    stream: BatchStream | FolderStream
    space: SearchSpace
    net: Supernet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    strategy: Strategy
    scaler: torch.amp.GradScaler  # amp: fp16's loss scaling (disabled otherwise: a no-op)


def build_run(cfg: dict, device: torch.device | str = "cpu", rank: int = 0, world: int = 1) -> Run:
    """Seeds every generator from cfg["seed"], then builds the data, the supernet (initialised
    under that seed), the optimizer, the schedule and the strategy of a run (also used by
    benchmarks/kd_diagnosis.py)."""
    random.seed(cfg["seed"])
    np.random.seed(cfg["seed"] % 2**32)
    torch.manual_seed(cfg["seed"])
    splits = splits_of(cfg)
    space = build_space(cfg, splits)
    if isinstance(splits.train, FolderSet):
        size = cfg["image_size"] or max(space.config["resolution"])
        stream = FolderStream(splits.train, cfg["batch_size"], splits.mean, splits.std, size,
                              cfg["seed"], cfg["augment"], cfg["flip"], cfg["autoaugment"],
                              rank, world)
    else:
        stream = BatchStream(splits.train, cfg["batch_size"], splits.mean, splits.std,
                             cfg["seed"], cfg["augment"], cfg["flip"], rank, world)
    net = Supernet(space, dropout=cfg["dropout"], drop_connect=cfg["drop_connect"]).to(device)
    if cfg["zero_init_residual"]:
        net.zero_init_residual_()
    if cfg["channels_last"]:
        net.to(memory_format=torch.channels_last)
    if world > 1 and cfg["sync_bn"]:
        sync_batchnorm(net, torch.distributed.group.WORLD)
    decay = [p for p in net.parameters() if p.dim() > 1]
    no_decay = [p for p in net.parameters() if p.dim() <= 1]  # BN and biases
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": cfg["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=peak_lr(cfg), momentum=cfg["momentum"], nesterov=cfg["nesterov"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg, stream.steps_per_epoch))
    predictor = AccuracyPredictor.load(cfg["predictor"], space) if cfg["predictor"] else None
    strategy = Strategy(cfg["strategy"], space, seed=cfg["seed"], predictor=predictor,
                        uniform_bins=cfg["target_bins"] == "uniform", pool_size=cfg["pool_size"],
                        n_prior=cfg["n_prior"])
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=cfg["amp"] == "fp16")
    return Run(splits, stream, space, net, optimizer, scheduler, strategy, scaler)


def _train(cfg, run_dir, resume, progress, stop_after_steps) -> dict:
    device = dist.init_from_env()
    rank, world = dist.rank(), dist.world_size()
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    ckpt = load_checkpoint(ckpt_path) if resume else None
    if ckpt is not None and _with_defaults(ckpt["config"]) != cfg:
        raise ValueError(f"{ckpt_path} was written with another config; resume continues the "
                         f"same run (see {os.path.join(run_dir, 'config.yaml')})")

    # Everything that can fail on a bad recipe, file or dataset runs before the run directory
    # is made, so a run that cannot start leaves nothing behind.
    run = build_run(cfg, device, rank, world)
    splits, stream, space, net = run.splits, run.stream, run.space, run.net
    optimizer, scheduler, strategy, scaler = run.optimizer, run.scheduler, run.strategy, run.scaler
    steps_per_epoch = stream.steps_per_epoch

    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        _write_text(os.path.join(run_dir, "config.yaml"), yaml.safe_dump(cfg, sort_keys=False))
    dist.barrier()

    epoch = step = 0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        strategy.load_state_dict(ckpt["strategy"])
        if "scaler" in ckpt:  # (written since amp exists)
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        epoch, step = ckpt["epoch"], ckpt["step"]
        if rank == 0:
            log.info("resumed %s at step %d/%d (epoch %d/%d)", run_dir,
                     epoch * steps_per_epoch + step, cfg["epochs"] * steps_per_epoch,
                     min(epoch + 1, cfg["epochs"]), cfg["epochs"])

    def checkpoint(epoch_: int, step_: int, finished: bool = False):
        if rank == 0:
            save_checkpoint(ckpt_path, {
                "format": CHECKPOINT_FORMAT, "config": cfg, "space": space.config,
                "epoch": epoch_, "step": step_, "finished": finished,
                "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "strategy": strategy.state_dict(),
                "scaler": scaler.state_dict(), "rng": _rng_state()})
        dist.barrier()

    run_log = _RunLog(run_dir, rank == 0)
    try:
        return _loop(cfg, run_dir, resume_at=(epoch, step), net=net, optimizer=optimizer,
                     scheduler=scheduler, scaler=scaler, strategy=strategy, stream=stream,
                     splits=splits, space=space, device=device, run_log=run_log,
                     checkpoint=checkpoint, progress=progress, stop_after_steps=stop_after_steps)
    finally:
        run_log.close()


def _write_text(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def _loop(cfg, run_dir, resume_at, net, optimizer, scheduler, scaler, strategy, stream, splits,
          space, device, run_log, checkpoint, progress, stop_after_steps) -> dict:
    """The epochs from `resume_at` (epoch, step) on, then the final evaluation. Messages,
    the progress bar and metrics.jsonl count steps (global) and epochs from 1."""
    rank, world = dist.rank(), dist.world_size()
    epoch, step = resume_at
    steps_per_epoch, epochs = stream.steps_per_epoch, cfg["epochs"]
    total_steps = epochs * steps_per_epoch
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    largest, smallest = space.encode(space.max_arch()), space.encode(space.min_arch())
    ends = np.stack([smallest, largest])
    stop = _Stop()
    stop.install()
    bar = tqdm(total=total_steps, initial=epoch * steps_per_epoch + step, unit="step",
               desc="train", disable=not progress or rank != 0, dynamic_ncols=True)

    def new_evaluator():
        return Evaluator(net, splits, cfg["eval_batch_size"], cfg["calib_images"], device)

    evaluator = evaluated_at = None  # the last per-epoch evaluation, reused by the final one
    steps_this_call = 0
    try:
        while epoch < epochs:
            sums, count, start = np.zeros(3), 0, time.perf_counter()
            for x, y in stream.epoch(epoch, step, device):
                global_step = epoch * steps_per_epoch + step + 1  # the step being taken
                where = f"step {global_step}/{total_steps} (epoch {epoch + 1}/{epochs})"
                losses, archs = train_step(net, cfg, strategy, largest, smallest, x, y, scaler)
                requested = stop.requested is not None or (
                    stop_after_steps is not None and steps_this_call + 1 >= stop_after_steps)
                # The step's one host-device synchronisation: the host must know before the
                # optimizer step whether the losses are finite; the ranks' agreement on the
                # sub-networks and a stop request ride in the same all-reduce.
                packet = torch.tensor([*dist.equality_terms(zlib.crc32(archs.tobytes())),
                                       float(requested)], dtype=torch.float64)
                total = dist.all_reduce_sum(torch.cat([losses, packet.to(device)])).cpu()
                finite = total[:3] / world
                if not dist.all_agree(total[3:7], world):
                    raise RuntimeError(f"ranks drew different sub-networks at {where}: their "
                                       f"strategies are out of step")
                if not torch.isfinite(finite).all():
                    raise FloatingPointError(
                        f"loss is not finite at {where} (largest, smallest, sampled: "
                        f"{finite.tolist()}); the run stopped before the optimizer step, and "
                        f"{ckpt_path} holds the last good state (lower lr or check the data)")
                dist.average_gradients(net.parameters())
                scaler.unscale_(optimizer)  # (clipping sees the true gradient)
                clip_gradients(net, cfg)
                scaler.step(optimizer)  # (fp16: skipped when a gradient overflowed)
                scaler.update()
                scheduler.step()
                step += 1
                steps_this_call += 1
                sums += finite.numpy()
                count += 1
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{finite[0]:.3f}")
                if global_step % cfg["log_every"] == 0:
                    run_log.record({"epoch": epoch + 1, "step": global_step,
                                    "lr": scheduler.get_last_lr()[0],
                                    "loss_largest": float(finite[0]),
                                    "loss_smallest": float(finite[1]),
                                    "loss_sampled": float(finite[2])})
                if total[7] > 0:
                    checkpoint(epoch, step)
                    run_log.record({"event": "interrupted", "epoch": epoch + 1,
                                    "step": global_step})
                    if rank == 0 and stop.requested is not None:
                        log.warning("interrupted after %s; checkpoint saved, resume with "
                                    "--resume %s", where, run_dir)
                    return {"interrupted": global_step}
            entry = {"event": "epoch", "epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch,
                     "steps": count, "seconds": time.perf_counter() - start}
            if count:  # (none when resumed at the end of an epoch)
                entry.update(zip(("loss_largest", "loss_smallest", "loss_sampled"),
                                 (sums / count).tolist()))
            if getattr(stream, "bad_images", 0):
                entry["bad_images"] = stream.bad_images  # (skip_bad_images: so far, this rank)
            if cfg["eval_every"] and (epoch + 1) % cfg["eval_every"] == 0:
                evaluator, evaluated_at = new_evaluator(), epoch + 1
                eval_start = time.perf_counter()
                with preserved_bn_stats(net):  # training goes on with its own statistics
                    acc = evaluator.accuracy(ends, "holdout")
                entry.update(holdout_acc_smallest=acc[0], holdout_acc_largest=acc[1],
                             eval_seconds=time.perf_counter() - eval_start)
                if rank == 0 and progress:
                    bar.write(f"epoch {epoch + 1}/{epochs}: held-out accuracy {acc[0]:.2%} "
                              f"(smallest), {acc[1]:.2%} (largest)", file=sys.stderr)
            run_log.record(entry)
            epoch, step = epoch + 1, 0
            checkpoint(epoch, step)
            run_log.plot()
    finally:
        bar.close()
        stop.restore()

    if evaluated_at != epoch:
        evaluator = new_evaluator()
    acc = {}
    for label, arch in (("smallest", smallest), ("largest", largest)):
        for split in ("holdout", "test"):
            acc[f"{label}_{split}_acc"] = float(evaluator.accuracy(arch, split)[0])
    final = {"event": "final", **acc, "smallest_mflops": space.flops(smallest),
             "largest_mflops": space.flops(largest), "steps": total_steps, "world_size": world}
    run_log.record(final)
    if rank == 0:
        _write_text(os.path.join(run_dir, "final.json"), json.dumps(final, indent=2))
    checkpoint(epoch, step, finished=True)
    return final


def forward_active(net: Supernet, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    """The active sub-network's logits (float32) on batch x resized to its resolution, in the
    recipe's memory format and mixed precision."""
    x = resize_batch(x, net.active_arch.resolution)
    if cfg["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = AMP_DTYPES[cfg["amp"]]
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        return net(x).float()


def train_step(net: Supernet, cfg: dict, strategy: Strategy, largest, smallest, x, y,
               scaler: torch.amp.GradScaler | None = None):
    """Forward and backward of the sandwich on one batch (gradients accumulate in .grad, scaled
    by `scaler` if given; the caller steps); the distillation is weighted by kd_weight. Returns
    the losses [largest, smallest, mean of sampled] (detached, float64, on x's device,
    distillation unweighted) and the encoded sub-networks trained [N, D].

    Nothing here waits for the device, except the loss-scored strategies (bestup-N-loss,
    worstup-N-loss), whose choice needs their candidates' losses on the host; the sampler's other
    host work runs while the device still computes the previous step's work."""
    world = dist.world_size()

    @torch.no_grad()
    def batch_losses(candidates):  # mini-batch loss of each candidate, over all ranks
        out = []
        with frozen_bn_stats(net):
            saved = net.dropout, net.drop_connect
            net.dropout = net.drop_connect = 0.0
            try:
                for arch in candidates:
                    net.set_active(arch)
                    logits = forward_active(net, cfg, x)
                    # the largest's loss, as the published code scores candidates
                    out.append(smoothed_cross_entropy(logits, y, cfg["label_smoothing"]))
            finally:
                net.dropout, net.drop_connect = saved
        return (dist.all_reduce_sum(torch.stack(out)) / world).cpu().numpy()

    kd_weight = KD_LOSSES[cfg["kd"]] if cfg["kd_weight"] is None else cfg["kd_weight"]
    sampled = strategy.sample(cfg["num_sampled"], batch_losses) if cfg["num_sampled"] else []
    archs = np.stack([largest, smallest, *sampled])
    net.zero_grad(set_to_none=True)
    losses, teacher = [], None
    for i, arch in enumerate(archs):
        net.set_active(arch)
        first = i == 0
        net.dropout = cfg["dropout"] if first else 0.0  # regularise only the largest
        net.drop_connect = cfg["drop_connect"] if first else 0.0
        logits = forward_active(net, cfg, x)
        if first:
            loss = smoothed_cross_entropy(logits, y, cfg["label_smoothing"])
            teacher = logits.detach()
            weighted = loss
        else:
            loss = distillation_loss(cfg["kd"], logits, teacher, cfg["alpha_min"],
                                     cfg["alpha_max"], cfg["alpha_clip"])
            weighted = kd_weight * loss
        (weighted if scaler is None else scaler.scale(weighted)).backward()
        losses.append(loss.detach())  # (stays on the device: no synchronisation per sub-network)
    sampled_mean = torch.stack(losses[2:]).mean() if len(losses) > 2 else torch.zeros_like(losses[0])
    return torch.stack([losses[0], losses[1], sampled_mean]).double(), archs


def _show(value) -> str:
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def _resumed_config(run_dir: str) -> dict:
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir!r} is not a run directory (no config.yaml)")
    with open(path) as f:
        return check_config(_with_defaults(yaml.safe_load(f)), path)


def _with_defaults(cfg: dict) -> dict:
    """A saved config with the keys added since it was written, at their defaults."""
    return {**DEFAULTS, **cfg} if isinstance(cfg, dict) else cfg


def keys_help(argv: list[str]) -> str:
    """The recipe keys with the values a run with these arguments would use, and what each
    does (the help's epilog)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default="digits")
    pre.add_argument("--resume")
    known, rest = pre.parse_known_args(argv)
    overrides = [a for a in rest if "=" in a and not a.startswith("-")]
    try:
        if known.resume:
            cfg, source = _resumed_config(known.resume), f"of the run {known.resume}"
        else:
            cfg = apply_overrides(load_recipe(known.recipe), overrides)
            source = f"of the recipe {known.recipe!r}" + (" with the overrides" if overrides else "")
    except (ValueError, TypeError, FileNotFoundError) as e:
        cfg, source = DEFAULTS, f"of no recipe ({e})"
    width = max(len(f"{k}={_show(cfg[k])}") for k in KEYS)
    lines = [f"recipe keys, set with key=value; the values shown are those {source}:"]
    lines += [f"  {f'{k}={_show(cfg[k])}':<{width}}  {text}" for k, (_, text) in KEYS.items()]
    return "\n".join(lines)


def summary(final: dict, run_dir: str, seconds: float) -> str:
    """The end of a run, for people (final.json keeps the numbers)."""
    lines = [f"{label} ({final[f'{label}_mflops']:.1f} MFLOPs): held-out "
             f"{final[f'{label}_holdout_acc']:.2%}, test {final[f'{label}_test_acc']:.2%}"
             for label in ("smallest", "largest")]
    files = [name for name in ("checkpoint.pt", "final.json", "metrics.jsonl", "curves.png",
                               "tensorboard") if os.path.exists(os.path.join(run_dir, name))]
    lines.append(f"{final['steps']} steps; this invocation took {seconds:.0f} s; "
                 f"wrote {run_dir}/: {', '.join(files)}")
    skipped = [f"curves.png ({PLOTS_MISSING})"] if "curves.png" not in files else []
    if "tensorboard" not in files:
        skipped.append("tensorboard/ (the tensorboard package is not installed)")
    if skipped:
        lines.append("skipped: " + "; ".join(skipped))
    lines.append(f"search it: python -m nasops.search --checkpoint "
                 f"{os.path.join(run_dir, 'checkpoint.pt')} --budgets MFLOPS [MFLOPS ...] "
                 f"(budgets from {final['smallest_mflops']:.1f} to {final['largest_mflops']:.1f})")
    return "\n".join(lines)


def main(argv=None, prog=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    doc = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(
        prog=prog or prog_name("train"), description="\n\n".join(doc[:3]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(keys_help(argv) if {"-h", "--help"} & set(argv) else "") + "\n\n" + STAGES)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides, e.g. strategy=bestup-3-loss kd=alpha epochs=5")
    parser.add_argument("--recipe", default="digits",
                        help=f"packaged recipe ({', '.join(packaged_recipes())}) or a YAML path "
                             f"(default: digits)")
    parser.add_argument("--run-dir", help="run directory (default: runs/RECIPE-STRATEGY-seedS-TIME)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("nasops").setLevel(logging.INFO)  # (not the INFO of every library)
    start = time.perf_counter()
    try:
        if args.resume:
            if args.overrides or args.run_dir:
                raise ValueError("--resume continues a run as it was configured; it takes no "
                                 "overrides and no --run-dir")
            cfg, run_dir = _resumed_config(args.resume), args.resume
        else:
            cfg = apply_overrides(load_recipe(args.recipe), args.overrides)
            dist.init_from_env()
            run_dir = dist.broadcast_object(args.run_dir or default_run_dir(cfg))
            if os.path.exists(os.path.join(run_dir, "checkpoint.pt")):
                raise FileExistsError(f"{run_dir} already holds a run; continue it with "
                                      f"--resume {run_dir} or choose another --run-dir")
        result = train(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, FloatingPointError,
            ImportError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    rank = dist.rank()
    dist.shutdown()
    if "interrupted" in result:
        return 130
    if rank == 0:
        print(summary(result, run_dir, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
