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

A run directory holds ``config.yaml`` (the resolved recipe), ``metrics.jsonl``, ``checkpoint.pt``
(written atomically every epoch and on SIGINT/SIGTERM) and at the end ``final.json`` with the
BN-calibrated accuracy of the smallest and largest sub-networks on the held-out split.
"""
from __future__ import annotations

import argparse
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
from .data import DATASETS, BatchStream, splits_of
from .evaluate import Evaluator
from .losses import KD_LOSSES, distillation_loss, smoothed_cross_entropy
from .nn import Supernet, frozen_bn_stats, resize_batch, sync_batchnorm
from .ops import BACKENDS, set_dw_backend
from .predictor import AccuracyPredictor
from .sampling import Strategy, parse_strategy
from .space import SearchSpace

log = logging.getLogger("nasops.train")

# Every recipe key with its default; a recipe file or a key=value override sets any of them.
DEFAULTS = {
    "recipe": "digits",
    # data
    "dataset": "digits", "data_dir": None, "image_size": 32, "holdout": 0.1, "holdout_seed": 0,
    "limit": None, "augment": True, "flip": False,
    # supernet
    "space": "small", "dropout": 0.1, "drop_connect": 0.1, "dw_backend": "nasops", "sync_bn": True,
    # optimisation
    "epochs": 12, "batch_size": 64, "lr": 0.1, "lr_min": 0.0, "warmup_epochs": 1.0,
    "momentum": 0.9, "nesterov": True, "weight_decay": 5e-5, "label_smoothing": 0.1,
    "grad_clip": 5.0,
    # sampling
    "strategy": "uniform", "num_sampled": 2, "target_bins": "prior", "predictor": None,
    "pool_size": 1_000_000, "n_prior": 200_000,
    # distillation
    "kd": "kl", "alpha_min": -1.0, "alpha_max": 1.0, "alpha_clip": 5.0,
    # bookkeeping
    "seed": 0, "log_every": 10, "eval_batch_size": 256, "calib_images": 1024,
}


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
    for key in ("epochs", "batch_size", "num_sampled", "image_size", "pool_size", "n_prior",
                "log_every", "eval_batch_size", "calib_images"):
        integer(key, 0 if key == "num_sampled" else 1)
    integer("limit", 2, none=True)
    for key in ("seed", "holdout_seed"):
        integer(key, 0)
    number("holdout", 0, 1, open_lo=True)
    for key in ("lr", "alpha_clip"):
        number(key, 0, open_lo=True)
    for key in ("lr_min", "warmup_epochs", "weight_decay"):
        number(key, 0)
    number("grad_clip", 0, none=True, open_lo=True)
    for key in ("momentum", "dropout", "drop_connect"):
        number(key, 0, 1)
    number("label_smoothing", 0, 0.999)
    number("alpha_min", -math.inf)
    number("alpha_max", -math.inf)
    if not cfg["alpha_min"] < 0 < cfg["alpha_max"]:
        raise ValueError(f"{source}: alpha_min = {cfg['alpha_min']} and alpha_max = "
                         f"{cfg['alpha_max']} must satisfy alpha_min < 0 < alpha_max")
    for key in ("augment", "flip", "nesterov", "sync_bn"):
        flag(key)
    if cfg["kd"] not in KD_LOSSES:
        bad("kd", list(KD_LOSSES))
    if cfg["dw_backend"] not in BACKENDS:
        bad("dw_backend", list(BACKENDS))
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
    """Linear warm-up from 0 over warmup_epochs, then cosine from lr to lr_min."""
    total = cfg["epochs"] * steps_per_epoch
    warm = min(int(round(cfg["warmup_epochs"] * steps_per_epoch)), total)
    floor = cfg["lr_min"] / cfg["lr"]

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


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


def _train(cfg, run_dir, resume, progress, stop_after_steps) -> dict:
    device = dist.init_from_env()
    rank, world = dist.rank(), dist.world_size()
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    ckpt = load_checkpoint(ckpt_path) if resume else None
    if ckpt is not None and ckpt["config"] != cfg:
        raise ValueError(f"{ckpt_path} was written with another config; resume continues the "
                         f"same run (see {os.path.join(run_dir, 'config.yaml')})")
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
    dist.barrier()

    random.seed(cfg["seed"])
    np.random.seed(cfg["seed"] % 2**32)
    torch.manual_seed(cfg["seed"])

    splits = splits_of(cfg)
    stream = BatchStream(splits.train, cfg["batch_size"], splits.mean, splits.std, cfg["seed"],
                         cfg["augment"], cfg["flip"], rank, world)
    space = build_space(cfg, splits)
    net = Supernet(space, dropout=cfg["dropout"], drop_connect=cfg["drop_connect"]).to(device)
    if world > 1 and cfg["sync_bn"]:
        sync_batchnorm(net, torch.distributed.group.WORLD)

    decay = [p for p in net.parameters() if p.dim() > 1]
    no_decay = [p for p in net.parameters() if p.dim() <= 1]  # BN and biases
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": cfg["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"])
    steps_per_epoch = stream.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg, steps_per_epoch))
    predictor = AccuracyPredictor.load(cfg["predictor"], space) if cfg["predictor"] else None
    strategy = Strategy(cfg["strategy"], space, seed=cfg["seed"], predictor=predictor,
                        uniform_bins=cfg["target_bins"] == "uniform", pool_size=cfg["pool_size"],
                        n_prior=cfg["n_prior"])

    epoch = step = 0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        strategy.load_state_dict(ckpt["strategy"])
        _set_rng_state(ckpt["rng"])
        epoch, step = ckpt["epoch"], ckpt["step"]
        if rank == 0:
            log.info("resumed %s at epoch %d step %d", run_dir, epoch, step)

    def checkpoint(epoch_: int, step_: int, finished: bool = False):
        if rank == 0:
            save_checkpoint(ckpt_path, {
                "format": CHECKPOINT_FORMAT, "config": cfg, "space": space.config,
                "epoch": epoch_, "step": step_, "finished": finished,
                "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "strategy": strategy.state_dict(),
                "rng": _rng_state()})
        dist.barrier()

    metrics_file = open(os.path.join(run_dir, "metrics.jsonl"), "a") if rank == 0 else None

    def record(entry: dict):
        if metrics_file is not None:
            metrics_file.write(json.dumps(entry) + "\n")
            metrics_file.flush()

    try:
        return _loop(cfg, run_dir, resume_at=(epoch, step), net=net, optimizer=optimizer,
                     scheduler=scheduler, strategy=strategy, stream=stream, splits=splits,
                     space=space, device=device, record=record, checkpoint=checkpoint,
                     progress=progress, stop_after_steps=stop_after_steps)
    finally:
        if metrics_file is not None:
            metrics_file.close()


def _loop(cfg, run_dir, resume_at, net, optimizer, scheduler, strategy, stream, splits, space,
          device, record, checkpoint, progress, stop_after_steps) -> dict:
    """The epochs from `resume_at` (epoch, step) on, then the final evaluation."""
    rank, world = dist.rank(), dist.world_size()
    epoch, step = resume_at
    steps_per_epoch = stream.steps_per_epoch
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    largest, smallest = space.encode(space.max_arch()), space.encode(space.min_arch())
    stop = _Stop()
    stop.install()
    total_steps = cfg["epochs"] * steps_per_epoch
    bar = tqdm(total=total_steps, initial=epoch * steps_per_epoch + step, unit="step",
               desc="train", disable=not progress or rank != 0, dynamic_ncols=True)
    steps_this_call = 0
    try:
        while epoch < cfg["epochs"]:
            sums, count, start = np.zeros(3), 0, time.perf_counter()
            while step < steps_per_epoch:
                x, y = stream.batch(epoch, step)
                x, y = x.to(device), y.to(device)
                losses, archs = train_step(net, cfg, strategy, largest, smallest, x, y)
                if not dist.all_equal(zlib.crc32(archs.tobytes()), device):
                    raise RuntimeError(f"ranks drew different sub-networks at epoch {epoch} step "
                                       f"{step}: their strategies are out of step")
                finite = dist.all_reduce_sum(losses.to(device)).cpu() / world
                if not torch.isfinite(finite).all():
                    raise FloatingPointError(
                        f"loss is not finite at epoch {epoch} step {step} (largest, smallest, "
                        f"sampled: {finite.tolist()}); the run stopped before the optimizer step, "
                        f"and {ckpt_path} holds the last good state (lower lr or check the data)")
                dist.average_gradients(net.parameters())
                if cfg["grad_clip"] is not None:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg["grad_clip"])
                optimizer.step()
                scheduler.step()
                step += 1
                steps_this_call += 1
                sums += finite.numpy()
                count += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{finite[0]:.3f}")
                global_step = epoch * steps_per_epoch + step
                if global_step % cfg["log_every"] == 0:
                    record({"epoch": epoch, "step": global_step, "lr": scheduler.get_last_lr()[0],
                            "loss_largest": float(finite[0]), "loss_smallest": float(finite[1]),
                            "loss_sampled": float(finite[2])})
                requested = stop.requested is not None or (
                    stop_after_steps is not None and steps_this_call >= stop_after_steps)
                if dist.all_reduce_sum(torch.tensor([float(requested)], device=device)).item() > 0:
                    checkpoint(epoch, step)
                    record({"event": "interrupted", "epoch": epoch, "step": global_step})
                    if rank == 0 and stop.requested is not None:
                        log.warning("interrupted at epoch %d step %d; checkpoint saved, resume "
                                    "with --resume %s", epoch, step, run_dir)
                    return {"interrupted": global_step}
            if count:  # (none when resumed at the end of an epoch)
                mean = sums / count
                record({"event": "epoch", "epoch": epoch, "seconds": time.perf_counter() - start,
                        "steps": count, "loss_largest": mean[0], "loss_smallest": mean[1],
                        "loss_sampled": mean[2]})
            epoch, step = epoch + 1, 0
            checkpoint(epoch, step)
    finally:
        bar.close()
        stop.restore()

    evaluator = Evaluator(net, splits, cfg["eval_batch_size"], cfg["calib_images"], device)
    acc = {}
    for label, arch in (("smallest", smallest), ("largest", largest)):
        for split in ("holdout", "test"):
            acc[f"{label}_{split}_acc"] = float(evaluator.accuracy(arch, split)[0])
    final = {"event": "final", **acc, "smallest_mflops": space.flops(smallest),
             "largest_mflops": space.flops(largest), "steps": total_steps, "world_size": world}
    record(final)
    if rank == 0:
        path = os.path.join(run_dir, "final.json")
        with open(path + ".tmp", "w") as f:
            json.dump(final, f, indent=2)
        os.replace(path + ".tmp", path)
    checkpoint(epoch, step, finished=True)
    return final


def train_step(net: Supernet, cfg: dict, strategy: Strategy, largest, smallest, x, y):
    """Forward and backward of the sandwich on one batch (gradients accumulate in .grad; the
    caller steps). Returns the losses [largest, smallest, mean of sampled] (detached, CPU) and
    the encoded sub-networks trained [N, D]."""
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
                    logits = net(resize_batch(x, net.active_arch.resolution))
                    out.append(torch.nn.functional.cross_entropy(logits, y))
            finally:
                net.dropout, net.drop_connect = saved
        return (dist.all_reduce_sum(torch.stack(out)) / world).cpu().numpy()

    sampled = strategy.sample(cfg["num_sampled"], batch_losses) if cfg["num_sampled"] else []
    archs = np.stack([largest, smallest, *sampled])
    net.zero_grad(set_to_none=True)
    losses, teacher = [], None
    for i, arch in enumerate(archs):
        net.set_active(arch)
        first = i == 0
        net.dropout = cfg["dropout"] if first else 0.0  # regularise only the largest
        net.drop_connect = cfg["drop_connect"] if first else 0.0
        logits = net(resize_batch(x, net.active_arch.resolution))
        if first:
            loss = smoothed_cross_entropy(logits, y, cfg["label_smoothing"])
            teacher = logits.detach()
        else:
            loss = distillation_loss(cfg["kd"], logits, teacher, cfg["alpha_min"],
                                     cfg["alpha_max"], cfg["alpha_clip"])
        loss.backward()
        losses.append(loss.detach().cpu())
    sampled_mean = torch.stack(losses[2:]).mean() if len(losses) > 2 else torch.tensor(0.0)
    return torch.stack([losses[0], losses[1], sampled_mean]).double(), archs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nasops.train",
                                     description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="recipe keys and defaults: " + ", ".join(
                                         f"{k}={v}" for k, v in DEFAULTS.items()))
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides, e.g. strategy=bestup-3-loss kd=alpha epochs=5")
    parser.add_argument("--recipe", default="digits",
                        help="packaged recipe name or YAML path (default: digits)")
    parser.add_argument("--run-dir", help="run directory (default: runs/RECIPE-STRATEGY-seedS-TIME)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("nasops").setLevel(logging.INFO)  # (not the INFO of every library)
    try:
        if args.resume:
            if args.overrides or args.run_dir:
                raise ValueError("--resume continues a run as it was configured; it takes no "
                                 "overrides and no --run-dir")
            path = os.path.join(args.resume, "config.yaml")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{args.resume!r} is not a run directory (no config.yaml)")
            with open(path) as f:
                cfg = check_config(yaml.safe_load(f), path)
            run_dir = args.resume
        else:
            cfg = apply_overrides(load_recipe(args.recipe), args.overrides)
            dist.init_from_env()
            run_dir = dist.broadcast_object(args.run_dir or default_run_dir(cfg))
            if os.path.exists(os.path.join(run_dir, "checkpoint.pt")):
                raise FileExistsError(f"{run_dir} already holds a run; continue it with "
                                      f"--resume {run_dir} or choose another --run-dir")
        result = train(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
        print(f"nasops.train: error: {e}", file=sys.stderr)
        return 1
    rank = dist.rank()
    dist.shutdown()
    if "interrupted" in result:
        return 130
    if rank == 0:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
