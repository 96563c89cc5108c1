"""The training run: a recipe's data, supernet, strategy and optimizer (:func:`build_run`), the
loop over epochs with checkpoints, evaluation and logs (:func:`train`), and the command line
(:func:`main`)."""
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

import numpy as np
import torch
from tqdm import tqdm

from ..data import BatchStream, FolderSet, FolderStream
from ..evaluate import Evaluator, binomial_interval
from ..nn import Supernet, preserved_bn_stats, sync_batchnorm
from ..nn.checkpoint import FORMAT as CHECKPOINT_FORMAT, warm_start
from ..ops import set_dw_backend
from ..predictor import AccuracyPredictor
from ..space import SearchSpace
from ..utils import distributed as dist
from ..utils.cli import STAGES, add_import_option, prog as prog_name
from ..utils.cpu import keep_freed_memory, use_channels_last
from ..utils.plots import MISSING as PLOTS_MISSING
from ..utils.registry import import_modules
from .losses import LOSSES
from .recipe import (DEFAULTS, KEYS, Recipe, apply_overrides, check_config, load_recipe,
                     packaged_recipes, splits_of)
from .rundir import RunDir
from .step import check_amp, clip_gradients, resolve_amp, train_step
from .strategies import Strategy, build_strategy

log = logging.getLogger("nasops.train")

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


def train(cfg: dict, run_dir: str, resume: bool = False, progress: bool = True,
          stop_after_steps: int | None = None) -> dict:
    """Trains per `cfg` in `run_dir` (resuming from its checkpoint with `resume`). Returns the
    final metrics, or {"interrupted": step} when stopped by a signal (or, for tests, after
    `stop_after_steps` optimizer steps of this call). Like the signal handlers it installs for
    the run, it sets the process up for it: on CPU, glibc keeps freed memory for reuse
    (nasops.utils.cpu.keep_freed_memory)."""
    cfg = check_config(cfg)
    previous = set_dw_backend(cfg["dw_backend"])
    try:
        return _train(cfg, run_dir, resume, progress, stop_after_steps)
    finally:
        set_dw_backend(previous)


@dataclasses.dataclass
class Run:
    """What a training run is made of, as build_run sets it up from a recipe."""
    cfg: Recipe
    splits: object
    stream: BatchStream | FolderStream
    space: SearchSpace
    net: Supernet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    strategy: Strategy
    scaler: torch.amp.GradScaler  # amp: fp16's loss scaling (disabled otherwise: a no-op)

    def state_dict(self, epoch: int, step: int, finished: bool = False) -> dict:
        """The checkpoint of the run before step `step` of epoch `epoch` (from 0)."""
        return {"format": CHECKPOINT_FORMAT, "config": self.cfg.as_dict(),
                "space": self.space.config, "epoch": epoch, "step": step, "finished": finished,
                "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "strategy": self.strategy.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": _rng_state()}

    def load_state_dict(self, ckpt: dict) -> None:
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.strategy.load_state_dict(ckpt["strategy"])
        if "scaler" in ckpt:  # (written since amp exists)
            self.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])


def training_stream(cfg, splits, largest_resolution: int, rank: int = 0, world: int = 1,
                    batch_size: int | None = None) -> BatchStream | FolderStream:
    """The recipe's augmented training batches of splits.train (batch_size: the recipe's
    unless given); image folders are decoded at the recipe's image_size or the space's
    largest resolution."""
    batch_size = batch_size or cfg["batch_size"]
    if isinstance(splits.train, FolderSet):
        size = cfg["image_size"] or largest_resolution
        return FolderStream(splits.train, batch_size, splits.mean, splits.std, size, cfg["seed"],
                            rank=rank, world=world, augment=cfg["augment"], flip=cfg["flip"],
                            autoaugment=cfg["autoaugment"])
    return BatchStream(splits.train, batch_size, splits.mean, splits.std, cfg["seed"],
                       rank=rank, world=world, augment=cfg["augment"], flip=cfg["flip"])


def build_run(cfg, device: torch.device | str = "cpu", rank: int = 0, world: int = 1) -> Run:
    """Seeds every generator from cfg["seed"], then builds the data, the supernet (initialised
    under that seed), the optimizer, the schedule and the strategy of a run (also used by
    benchmarks/kd_diagnosis.py)."""
    cfg = check_config(cfg)
    check_amp(cfg["amp"], device)
    random.seed(cfg["seed"])
    np.random.seed(cfg["seed"] % 2**32)
    torch.manual_seed(cfg["seed"])
    splits = splits_of(cfg)
    space = build_space(cfg, splits)
    stream = training_stream(cfg, splits, max(space.config["resolution"]), rank, world)
    net = Supernet(space, dropout=cfg["dropout"], drop_connect=cfg["drop_connect"]).to(device)
    if cfg["zero_init_residual"]:
        net.zero_init_residual_()
    if use_channels_last(cfg["channels_last"], device):
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
    strategy = build_strategy(cfg["strategy"], space, seed=cfg["seed"], predictor=predictor,
                              uniform_bins=cfg["target_bins"] == "uniform",
                              pool_size=cfg["pool_size"], n_prior=cfg["n_prior"], recipe=cfg)
    scaler = torch.amp.GradScaler(torch.device(device).type,
                                  enabled=resolve_amp(cfg["amp"], device) == "fp16")
    return Run(cfg, splits, stream, space, net, optimizer, scheduler, strategy, scaler)


def _train(cfg: Recipe, run_dir: str, resume, progress, stop_after_steps) -> dict:
    device = dist.init_from_env()
    if device.type == "cpu":
        keep_freed_memory()
    rank = dist.rank()
    folder = RunDir(run_dir, writer=rank == 0)
    ckpt = None
    if resume and os.path.exists(folder.checkpoint_path):
        ckpt = folder.load_checkpoint()
    elif resume and not os.path.exists(folder.config_path):
        raise FileNotFoundError(f"nasops checkpoint {folder.checkpoint_path!r} does not exist, nor "
                                f"does {folder.config_path!r}: {run_dir} holds no run to resume")
    elif resume and rank == 0:  # (killed before its first checkpoint: nothing to lose)
        log.info("%s holds no checkpoint yet: the run starts from the beginning", run_dir)
    if ckpt is not None and check_config(ckpt["config"]) != cfg:
        raise ValueError(f"{folder.checkpoint_path} was written with another config; resume "
                         f"continues the same run (see {folder.config_path})")
    final = folder.read_final() if ckpt is not None and ckpt["finished"] else None
    if final is not None:
        if rank == 0:  # (a kill after the end: evaluating again would log the final twice)
            log.info("%s is finished; its results are in final.json", run_dir)
        return final

    # Everything that can fail on a bad recipe, file or dataset runs before the run directory
    # is made, so a run that cannot start leaves nothing behind.
    run = build_run(cfg, device, rank, dist.world_size())
    fresh = None
    if cfg["init"] and ckpt is None:
        fresh = warm_start(run.net, cfg["init"], cfg["init_classifier"],
                           {"dataset": cfg["dataset"], "data_dir": cfg["data_dir"]})
    folder.create(cfg, 0 if ckpt is None else ckpt.get("metrics_bytes"))
    if fresh is not None:
        folder.record({"event": "init", "from": cfg["init"], "reinitialised": fresh})
        if rank == 0:
            log.info("initial weights from %s%s", cfg["init"],
                     f"; re-initialised for this data: {', '.join(fresh)}" if fresh else "")
    epoch, step, epoch_losses = 0, 0, None
    if ckpt is None:  # (from here on, a killed run always leaves one to resume from)
        folder.save_checkpoint(run.state_dict(epoch, step))
    dist.barrier()
    if ckpt is not None:
        run.load_state_dict(ckpt)
        epoch, step, epoch_losses = ckpt["epoch"], ckpt["step"], ckpt.get("epoch_losses")
        if rank == 0:
            steps_per_epoch = run.stream.steps_per_epoch
            log.info("resumed %s at step %d/%d (epoch %d/%d)", run_dir,
                     epoch * steps_per_epoch + step, cfg["epochs"] * steps_per_epoch,
                     min(epoch + 1, cfg["epochs"]), cfg["epochs"])
    try:
        return _loop(run, folder, (epoch, step, epoch_losses), device, progress, stop_after_steps)
    finally:
        folder.close()


def _loop(run: Run, folder: RunDir, resume_at: tuple, device, progress, stop_after_steps) -> dict:
    """The epochs from `resume_at` (epoch, step, and the losses of that epoch's steps so far, or
    None) on, then the final evaluation. Messages, the progress bar and metrics.jsonl count
    steps (global) and epochs from 1."""
    return _Loop(run, folder, device, progress, stop_after_steps)(*resume_at)


class _Loop:
    """One training call's loop over the epochs (:func:`_loop`)."""

    def __init__(self, run: Run, folder: RunDir, device, progress: bool, stop_after_steps):
        self.run, self.folder, self.device = run, folder, device
        self.progress, self.stop_after_steps = progress, stop_after_steps
        self.rank, self.world = dist.rank(), dist.world_size()
        space, cfg = run.space, run.cfg
        self.largest, self.smallest = space.encode(space.max_arch()), space.encode(space.min_arch())
        self.steps_per_epoch = run.stream.steps_per_epoch
        self.epochs = cfg["epochs"]
        self.total_steps = self.epochs * self.steps_per_epoch
        self.stop = _Stop()
        self.evaluator = self.evaluated_at = None  # the last per-epoch evaluation (final reuses it)
        self.steps_this_call = 0
        self.bar = None

    def __call__(self, epoch: int, step: int, epoch_losses: dict | None = None) -> dict:
        self.stop.install()
        self.bar = tqdm(total=self.total_steps, initial=epoch * self.steps_per_epoch + step,
                        unit="step", desc="train", dynamic_ncols=True,
                        disable=not self.progress or self.rank != 0)
        try:
            while epoch < self.epochs:
                entry = self.epoch(epoch, step, epoch_losses)
                if "interrupted" in entry:
                    return entry
                self.folder.record(entry)
                epoch, step, epoch_losses = epoch + 1, 0, None
                self.checkpoint(epoch, step)
                self.folder.plot()
        finally:
            self.bar.close()
            self.stop.restore()
        return self.final(epoch, step)

    def checkpoint(self, epoch: int, step: int, finished: bool = False,
                   epoch_losses: dict | None = None) -> None:
        """(epoch_losses: mid-epoch, the sums of the epoch's losses so far, for its entry.)"""
        if self.folder.writer:
            payload = self.run.state_dict(epoch, step, finished)
            if epoch_losses is not None:
                payload["epoch_losses"] = epoch_losses
            self.folder.save_checkpoint(payload)
        dist.barrier()

    def new_evaluator(self) -> Evaluator:
        cfg = self.run.cfg
        return Evaluator(self.run.net, self.run.splits, cfg["eval_batch_size"], cfg["calib_images"],
                         self.device, channels_last=cfg["channels_last"])  # (the run's format)

    def evaluate(self, archs, split: str = "holdout") -> np.ndarray:
        """BN-calibrated accuracies of sub-networks of the supernet as it is now; training goes
        on with its own BN statistics."""
        with preserved_bn_stats(self.run.net):
            return self.new_evaluator().accuracy(archs, split)

    def epoch(self, epoch: int, step: int, losses: dict | None = None) -> dict:
        """The steps of `epoch` from `step` on: its metrics entry, or {"interrupted": step}."""
        sums, count = (np.zeros(3), 0) if losses is None else (np.array(losses["sums"]),
                                                                losses["count"])
        start = time.perf_counter()
        for x, y in self.run.stream.epoch(epoch, step, self.device):
            global_step = epoch * self.steps_per_epoch + step + 1  # the step being taken
            finite, stop_now = self.step(x, y, epoch, global_step)
            step += 1
            sums += finite.numpy()
            count += 1
            so_far = {"sums": sums.tolist(), "count": count}
            if stop_now:  # (the record first: what the checkpoint's metrics keep on resume)
                self.folder.record({"event": "interrupted", "epoch": epoch + 1, "step": global_step})
                self.checkpoint(epoch, step, epoch_losses=so_far)
                if self.rank == 0 and self.stop.requested is not None:
                    log.warning("interrupted after %s; checkpoint saved, resume with --resume %s",
                                self.where(epoch, global_step), self.folder.path)
                return {"interrupted": global_step}
            every = self.run.cfg["checkpoint_every"]
            if every and global_step % every == 0 and step < self.steps_per_epoch:
                self.checkpoint(epoch, step, epoch_losses=so_far)  # (the epoch's end has its own)
        return self.epoch_entry(epoch, sums, count, start)

    def where(self, epoch: int, global_step: int) -> str:
        return f"step {global_step}/{self.total_steps} (epoch {epoch + 1}/{self.epochs})"

    def step(self, x, y, epoch: int, global_step: int) -> tuple[torch.Tensor, bool]:
        """One sandwich step and its optimizer step: (the mean losses over the ranks, whether
        the run stops after it)."""
        run, cfg = self.run, self.run.cfg
        losses, archs = train_step(run.net, cfg, run.strategy, self.largest, self.smallest, x, y,
                                   run.scaler)
        self.steps_this_call += 1
        requested = self.stop.requested is not None or (
            self.stop_after_steps is not None and self.steps_this_call >= self.stop_after_steps)
        # The step's one host-device synchronisation: the host must know before the optimizer
        # step whether the losses are finite; the ranks' agreement on the sub-networks and a stop
        # request ride in the same all-reduce.
        packet = torch.tensor([*dist.equality_terms(zlib.crc32(archs.tobytes())), float(requested)],
                              dtype=torch.float64)
        total = dist.all_reduce_sum(torch.cat([losses, packet.to(self.device)])).cpu()
        finite = total[:3] / self.world
        if not dist.all_agree(total[3:7], self.world):
            raise RuntimeError(f"ranks drew different sub-networks at "
                               f"{self.where(epoch, global_step)}: their strategies are out of step")
        if not torch.isfinite(finite).all():
            raise FloatingPointError(
                f"loss is not finite at {self.where(epoch, global_step)} (largest, smallest, "
                f"sampled: {finite.tolist()}); the run stopped before the optimizer step, and "
                f"{self.folder.checkpoint_path} holds the last good state (lower lr or check the "
                f"data)")
        dist.average_gradients(run.net.parameters())
        run.scaler.unscale_(run.optimizer)  # (clipping sees the true gradient)
        clip_gradients(run.net, cfg["grad_clip"], cfg["grad_clip_mode"])
        run.scaler.step(run.optimizer)  # (fp16: skipped when a gradient overflowed)
        run.scaler.update()
        run.scheduler.step()
        event = run.strategy.after_step(global_step, self.total_steps, self.evaluate)
        if event is not None:
            self.folder.record(event)
        self.bar.update(1)
        self.bar.set_postfix(epoch=f"{epoch + 1}/{self.epochs}", loss=f"{finite[0]:.3f}")
        if global_step % cfg["log_every"] == 0:
            self.folder.record({"epoch": epoch + 1, "step": global_step,
                                "lr": run.scheduler.get_last_lr()[0],
                                "loss_largest": float(finite[0]), "loss_smallest": float(finite[1]),
                                "loss_sampled": float(finite[2])})
        return finite, bool(total[7] > 0)

    def epoch_entry(self, epoch: int, sums, count: int, start: float) -> dict:
        """The epoch's metrics: mean losses, time, and the held-out accuracy of the smallest and
        largest when it is an evaluation epoch."""
        entry = {"event": "epoch", "epoch": epoch + 1, "step": (epoch + 1) * self.steps_per_epoch,
                 "steps": count, "seconds": time.perf_counter() - start}
        if count:  # (none when resumed at the end of an epoch)
            entry.update(zip(("loss_largest", "loss_smallest", "loss_sampled"),
                             (sums / count).tolist()))
        if getattr(self.run.stream, "bad_images", 0):
            entry["bad_images"] = self.run.stream.bad_images  # (skip_bad_images: this rank's)
        every = self.run.cfg["eval_every"]
        if every and (epoch + 1) % every == 0:
            self.evaluator, self.evaluated_at = self.new_evaluator(), epoch + 1
            eval_start = time.perf_counter()
            with preserved_bn_stats(self.run.net):  # training goes on with its own statistics
                acc = self.evaluator.accuracy(np.stack([self.smallest, self.largest]), "holdout")
            entry.update(holdout_acc_smallest=acc[0], holdout_acc_largest=acc[1],
                         eval_seconds=time.perf_counter() - eval_start)
            if self.rank == 0 and self.progress:
                self.bar.write(f"epoch {epoch + 1}/{self.epochs}: held-out accuracy {acc[0]:.2%} "
                               f"(smallest), {acc[1]:.2%} (largest)", file=sys.stderr)
        return entry

    def final(self, epoch: int, step: int) -> dict:
        """The final evaluation (held-out and test accuracy of the smallest and largest),
        recorded, written to final.json and in the finished checkpoint."""
        evaluator = self.evaluator if self.evaluated_at == epoch else self.new_evaluator()
        acc = {}
        for label, arch in (("smallest", self.smallest), ("largest", self.largest)):
            for split in ("holdout", "test"):
                acc[f"{label}_{split}_acc"] = float(evaluator.accuracy(arch, split)[0])
        space = self.run.space
        final = {"event": "final", **acc, "smallest_mflops": space.flops(self.smallest),
                 "largest_mflops": space.flops(self.largest), "steps": self.total_steps,
                 "world_size": self.world}
        picks = self.run.strategy.picks(lambda archs: evaluator.accuracy(archs, "holdout"))
        if picks is not None:
            final["picks"] = self.with_test_accuracy(picks, evaluator)
            self.folder.write_picks(self.run.space.name, self.run.strategy.name, final["picks"])
        self.folder.record(final)
        self.folder.write_final(final)
        self.checkpoint(epoch, step, finished=True)
        return final

    def with_test_accuracy(self, picks: list[dict], evaluator: Evaluator) -> list[dict]:
        """The strategy's picks with their held-out and test accuracies and 95% intervals."""
        splits = self.run.splits
        for entry in picks:
            for split in ("holdout", "test"):
                acc = float(evaluator.accuracy(np.array(entry["encoding"]), split)[0])
                n = len(getattr(splits, split))
                low, high = binomial_interval(acc, n)
                entry.update({f"{split}_acc": acc, f"{split}_images": n,
                              f"{split}_ci95": [float(low), float(high)]})
        return picks


def _show(value) -> str:
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


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
            cfg, source = RunDir(known.resume).read_config(), f"of the run {known.resume}"
        else:
            cfg = apply_overrides(load_recipe(known.recipe), overrides)
            source = f"of the recipe {known.recipe!r}" + (" with the overrides" if overrides else "")
    except (ValueError, TypeError, FileNotFoundError) as e:
        cfg, source = DEFAULTS, f"of no recipe ({e})"
    width = max(len(f"{k}={_show(cfg[k])}") for k in KEYS)
    lines = [f"recipe keys, set with key=value; the values shown are those {source}:"]
    lines += [f"  {f'{k}={_show(cfg[k])}':<{width}}  {text}" for k, (_, text) in KEYS.items()]
    lines += ["", "distillation losses (kd=) and the options each takes (kd_options={name: value}):"]
    for name in LOSSES.names():
        options = LOSSES.get(name).options
        lines.append(f"  {name}" + ("" if options else ": no options"))
        lines += [f"    {key}={_show(o.default)}  ({o.allowed}) {o.help}" for key, o in options.items()]
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
    parser.add_argument("--auto-resume", action="store_true",
                        help="with --run-dir: continue the run there if it holds one (of this "
                             "same recipe), else start it; the command to give torchrun "
                             "--max-restarts, whose restarts then go on from the last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_import_option(parser)
    args = parser.parse_intermixed_args(argv)  # (overrides before and after the options)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("nasops").setLevel(logging.INFO)  # (not the INFO of every library)
    start = time.perf_counter()
    try:
        import_modules(args.imports)
        if args.resume:
            if args.overrides or args.run_dir:
                raise ValueError("--resume continues a run as it was configured; it takes no "
                                 "overrides and no --run-dir")
            cfg, run_dir = RunDir(args.resume).read_config(), args.resume
        else:
            cfg = apply_overrides(load_recipe(args.recipe), args.overrides)
            if args.auto_resume and not args.run_dir:
                raise ValueError("--auto-resume needs --run-dir (the default directory is new "
                                 "each time)")
            dist.init_from_env()
            run_dir = dist.broadcast_object(args.run_dir or RunDir.default_path(cfg))
            args.resume = args.auto_resume and RunDir(run_dir).holds(cfg)
            if not args.resume:
                RunDir(run_dir).check_new()
        result = train(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    except (ValueError, TypeError, OSError, FloatingPointError, ImportError, dist.RankLost) as e:
        # (OSError: a missing file, an existing run, a full disk: each names its file)
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    rank = dist.rank()
    dist.shutdown()
    if "interrupted" in result:
        return 130
    if rank == 0:
        print(summary(result, run_dir, time.perf_counter() - start))
    return 0

