"""A training run's directory: ``config.yaml`` (the resolved recipe), ``metrics.jsonl`` (every
entry a line; the scalars also as TensorBoard events in ``tensorboard/`` when tensorboard is
installed, the curves as ``curves.png`` when matplotlib is), ``checkpoint.pt`` and ``final.json``.
Rank 0 writes (``writer``); files are replaced atomically, metrics.jsonl is appended and flushed
line by line."""
from __future__ import annotations

import json
import os
import time

import torch
import yaml

from ..nn.checkpoint import load_checkpoint, load_supernet, save_checkpoint
from ..utils.files import (append_line, open_log, read_lines, read_text, read_yaml_text,
                           remove_stale_tmp, write_json, write_text)
from ..utils.plots import plot_training_curves
from .recipe import Recipe, check_config, splits_of


class RunDir:
    STEP_TAGS = {"loss_largest": "loss/largest", "loss_smallest": "loss/smallest",
                 "loss_sampled": "loss/sampled", "lr": "lr"}
    EPOCH_TAGS = {"holdout_acc_smallest": "holdout_acc/smallest",
                  "holdout_acc_largest": "holdout_acc/largest"}

    def __init__(self, path: str, writer: bool = True):
        self.path, self.writer = path, writer
        self.config_path = os.path.join(path, "config.yaml")
        self.checkpoint_path = os.path.join(path, "checkpoint.pt")
        self.metrics_path = os.path.join(path, "metrics.jsonl")
        self._metrics = self._events = None

    @staticmethod
    def default_path(cfg: Recipe) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return os.path.join("runs", f"{cfg['recipe']}-{cfg['strategy']}-seed{cfg['seed']}-{stamp}")

    def read_config(self) -> Recipe:
        """The recipe of the run in this directory (to resume it)."""
        if not os.path.isfile(self.config_path):
            raise FileNotFoundError(f"{self.path!r} is not a run directory (no config.yaml)")
        text = read_text(self.config_path, "run's config.yaml")
        return check_config(read_yaml_text(text, self.config_path, "run's config"),
                            self.config_path)

    def holds(self, cfg: Recipe) -> bool:
        """Whether the directory holds a run (its config.yaml) to continue with `cfg`;
        ValueError naming the keys when that run's recipe is another."""
        if not os.path.isfile(self.config_path):
            return False
        saved = self.read_config()
        if saved != cfg:
            differ = sorted(k for k in cfg if saved.get(k) != cfg[k])
            raise ValueError(f"{self.path} holds a run of another recipe ({differ} differ; see "
                             f"{self.config_path}): --auto-resume continues only the same run")
        return True

    def check_new(self) -> None:
        if os.path.exists(self.checkpoint_path):
            raise FileExistsError(f"{self.path} already holds a run; continue it with --resume "
                                  f"{self.path} or choose another --run-dir")

    def create(self, cfg: Recipe, metrics_bytes: int | None = 0) -> None:
        """Makes the directory, writes config.yaml, removes what a killed writer left there and
        opens the metrics: its first `metrics_bytes` bytes are kept (a resumed run's, as its
        checkpoint recorded them: what was logged after that checkpoint is logged again; None:
        all, for checkpoints older than that record)."""
        if not self.writer:
            return
        os.makedirs(self.path, exist_ok=True)
        remove_stale_tmp(self.path)
        write_text(self.config_path, yaml.safe_dump(cfg.as_dict(), sort_keys=False))
        self._metrics = open_log(self.metrics_path, metrics_bytes)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            pass
        else:
            self._events = SummaryWriter(os.path.join(self.path, "tensorboard"))

    def load_checkpoint(self) -> dict:
        return load_checkpoint(self.checkpoint_path)

    def save_checkpoint(self, payload: dict) -> None:
        """The checkpoint, with the length of the metrics logged up to it (see create)."""
        if self.writer:
            if self._metrics is not None:
                payload = {**payload, "metrics_bytes": os.fstat(self._metrics.fileno()).st_size}
            save_checkpoint(self.checkpoint_path, payload)

    def record(self, entry: dict) -> None:
        """A line of metrics.jsonl (and its scalars as TensorBoard events)."""
        if self._metrics is None:
            return
        append_line(self._metrics, json.dumps(entry))
        if self._events is not None and "step" in entry:
            tags = self.EPOCH_TAGS if entry.get("event") == "epoch" else self.STEP_TAGS
            for key, tag in tags.items():
                if key in entry:
                    self._events.add_scalar(tag, entry[key], entry["step"])
            self._events.flush()

    # steps drawn at most in curves.png: a long run's plot (and the memory it takes, redrawn
    # every epoch) stays the same size (benchmarks/memory_flat.py)
    PLOTTED_STEPS = 2000

    def plot(self) -> bool:
        """curves.png from the whole metrics.jsonl (earlier invocations of a resumed run
        included; at most PLOTTED_STEPS evenly spaced step entries, every epoch entry); False
        when matplotlib is missing."""
        if self._metrics is None:
            return False
        lines = read_lines(self.metrics_path)
        stride = 1 + len(lines) // self.PLOTTED_STEPS
        entries = (json.loads(line) for line in lines if line.strip())
        return plot_training_curves(os.path.join(self.path, "curves.png"),
                                    [e for e in entries
                                     if "lr" not in e or e.get("step", 0) % stride == 0])

    def read_final(self) -> dict | None:
        """final.json of a finished run; None when it is missing or damaged."""
        try:
            with open(os.path.join(self.path, "final.json")) as f:
                final = json.load(f)
        except (OSError, ValueError):
            return None
        return final if isinstance(final, dict) and "steps" in final else None

    def write_final(self, final: dict) -> None:
        if self.writer:
            write_json(os.path.join(self.path, "final.json"), final)

    def write_picks(self, space: str, strategy: str, picks: list[dict]) -> None:
        """pareto.json of a strategy that searches while it trains (balanced-nao), in the form
        python -m nasops.search writes."""
        if self.writer:
            write_json(os.path.join(self.path, "pareto.json"),
                       {"space": space, "objective": "held-out accuracy (BN-calibrated)",
                        "constraint": {"kind": "flops", "unit": "MFLOPs"}, "search": strategy,
                        "source": os.path.join(self.path, "checkpoint.pt"), "results": picks})

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
        if self._events is not None:
            self._events.close()
        self._metrics = self._events = None


def load_trained(path: str, device: torch.device | str = "cpu"):
    """(recipe, splits, supernet) of a training run's checkpoint: the supernet with its trained
    weights on `device`, in eval mode, and the data splits its recipe names."""
    cfg, net = load_supernet(path, device)
    return cfg, splits_of(cfg), net
