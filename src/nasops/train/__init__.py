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
from .loop import Run, build_run, main, train
from .recipe import (DEFAULTS, KEYS, Recipe, apply_overrides, check_config, load_recipe,
                     packaged_recipes)
from .step import forward_active, train_step

__all__ = ["DEFAULTS", "KEYS", "Recipe", "Run", "apply_overrides", "build_run", "check_config",
           "forward_active", "load_recipe", "main", "packaged_recipes", "train", "train_step"]
