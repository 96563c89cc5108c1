"""Why in-place distillation can stall the largest sub-network: the gradient that the largest's
cross-entropy (CE) and the distillation of the smaller sub-networks (KD) each send into the
shared weights, step by step, for the first steps of a training run.

    python benchmarks/kd_diagnosis.py [--steps 140] [--variants ...] [key=value ...]

Each variant trains the recipe (default: digits) from the same seed with the real training step
(nasops.train.train_step); every step is run twice on the same batch and sub-networks, once with
the distillation weighted 0 (the CE part) and once as configured (the whole), so the KD part is
their difference. Reported over the last 40 steps: the largest's mean loss, the mean norms of
both parts and their mean cosine. Variants (VARIANTS): "kl"; "alpha-0.1", the before: nasops
0.1's loss (the exact divergence picks alpha, KL clipped, one choice per batch) at weight 1;
"alpha-1", AlphaNet's published loss at the published weight 1; "alpha", the published loss at
nasops's default weight for it (0.5). key=value pairs override the recipe.
JSON in benchmarks/results/kd_diagnosis.json.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from nasops.train import losses, loop as train_mod
from nasops.utils.files import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loss_of_nasops_0_1(student, teacher, alpha_min=-1.0, alpha_max=1.0, clip=5.0):
    """nasops 0.1's adaptive loss (the 'before'): each alpha's value is the exact divergence
    (batch mean), its gradient uses weights clipped at `clip` (alpha = 1 too), and the larger
    batch mean wins."""
    log_p = F.log_softmax(teacher.detach(), dim=1)
    log_q = F.log_softmax(student, dim=1)
    q = log_q.exp()

    def one(alpha):
        ratio = torch.exp(alpha * (log_p - log_q))
        if alpha == 1.0:
            value = (log_p.exp() * (log_p - log_q)).sum(1).mean()
        else:
            value = ((q * (ratio - 1.0)).sum(1) / (alpha * (alpha - 1.0))).mean()
        coeff = (-(ratio.clamp(max=clip) * q) / alpha).detach()
        surrogate = (coeff * log_q).sum(1).mean()
        return value.detach() + surrogate - surrogate.detach()
    return torch.maximum(one(alpha_min), one(alpha_max))


# name: (kd, kd_weight (None: the recipe's), nasops 0.1's loss instead of the published one)
VARIANTS = {"kl": ("kl", None, False), "alpha-0.1": ("alpha", 1.0, True),
            "alpha-1": ("alpha", 1.0, False), "alpha": ("alpha", None, False)}


class _Fixed:
    """A strategy that returns sub-networks drawn beforehand (both passes of a step use them)."""

    def __init__(self, archs):
        self.archs = archs

    def sample(self, n, _batch_losses):
        return list(self.archs)


def flat_grad(net) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in net.parameters()])


def diagnose(cfg: dict, steps: int, window: int) -> dict:
    run = train_mod.build_run(cfg)
    net, stream, strategy = run.net, run.stream, run.strategy
    largest, smallest = run.space.encode(run.space.max_arch()), run.space.encode(run.space.min_arch())
    ce_only = dict(cfg, kd_weight=0.0)
    rows = []
    net.train()
    for step in range(steps):
        epoch, inner = divmod(step, stream.steps_per_epoch)
        x, y = stream.batch(epoch, inner)
        fixed = _Fixed(strategy.sample(cfg["num_sampled"], None) if cfg["num_sampled"] else [])
        seed = int(torch.randint(0, 2**31, (1,)))
        with torch.random.fork_rng():  # the same dropout / drop-connect draws in both passes
            torch.manual_seed(seed)
            train_mod.train_step(net, ce_only, fixed, largest, smallest, x, y)
        ce = flat_grad(net)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            step_losses, _ = train_mod.train_step(net, cfg, fixed, largest, smallest, x, y)
        kd = flat_grad(net) - ce
        rows.append({"loss_largest": float(step_losses[0]), "ce_norm": float(ce.norm()),
                     "kd_norm": float(kd.norm()),
                     "cosine": float(F.cosine_similarity(ce, kd, dim=0))})
        train_mod.clip_gradients(net, cfg["grad_clip"], cfg["grad_clip_mode"])
        run.optimizer.step()
        run.scheduler.step()
    last = rows[-window:]
    mean = lambda key: float(np.mean([r[key] for r in last]))  # noqa: E731
    return {"steps": steps, "window": [steps - len(last), steps - 1],
            "loss_largest": mean("loss_largest"), "ce_norm": mean("ce_norm"),
            "kd_norm": mean("kd_norm"), "kd_over_ce": mean("kd_norm") / mean("ce_norm"),
            "cosine": mean("cosine"), "per_step": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="digits")
    parser.add_argument("--steps", type=int, default=140)
    parser.add_argument("--window", type=int, default=40)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "kd_diagnosis.json"))
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    base = train_mod.apply_overrides(train_mod.load_recipe(args.recipe), args.overrides)
    results = {}
    original = losses.adaptive_alpha_divergence
    for variant in args.variants:
        kd, weight, old_loss = VARIANTS[variant]
        cfg = train_mod.check_config(dict(base, kd=kd, **({} if weight is None else
                                                            {"kd_weight": weight})))
        losses.adaptive_alpha_divergence = loss_of_nasops_0_1 if old_loss else original
        start = time.perf_counter()
        try:
            results[variant] = diagnose(cfg, args.steps, args.window)
        finally:
            losses.adaptive_alpha_divergence = original
        r = results[variant]
        print(f"{variant:10s} steps {r['window'][0]}-{r['window'][1]}: largest's loss "
              f"{r['loss_largest']:.3f}, |CE grad| {r['ce_norm']:.3f}, |KD grad| {r['kd_norm']:.3f} "
              f"({r['kd_over_ce']:.2f}x), cosine {r['cosine']:+.3f}  "
              f"[{time.perf_counter() - start:.0f} s]", flush=True)
    doc = {"recipe": args.recipe, "overrides": args.overrides, "torch": torch.__version__,
           "results": results}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_json(args.out, doc, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
