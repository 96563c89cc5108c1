"""Ranking study: does balanced training rank sub-networks better? (Balanced one-shot NAO, Sec. 3)

    python benchmarks/ranking.py            # study v2's space, data and supernets: hours on 2 cores
    python benchmarks/ranking.py --ci --space PATH --out DIR --runs-dir DIR   # minutes, for tests

Picks sub-networks of the study's space spread over its FLOPs range (evenly in log FLOPs, fixed
seed) and trains each alone from scratch with the supernet arms' recipe: the same data,
augmentation, epochs, schedule and regularisation as the largest sub-network gets (cross-entropy
with label smoothing, dropout, drop-connect), from a fresh initialisation of its own shapes (a
supernet whose space holds only that sub-network: the same modules the extracted network has).
The same sub-networks are then measured with inherited, BN-re-calibrated weights on the
uniform, balanced and bestup-3-loss supernets of benchmarks/study.py (trained here if the study
has not trained them yet, in the same runs directory), at their early checkpoint and at the end.

Reported per supernet and checkpoint: pairwise accuracy (Luo et al. 2018, the paper's measure:
the share of pairs whose stand-alone order the inherited accuracies keep; a tie in inherited
accuracy counts one half) and Kendall tau between stand-alone and inherited accuracy, with
bootstrap 95% intervals over the sub-networks; and the Kendall tau of each with model size
(params), the paper's explanation being that inherited accuracy is biased by size. Each arm
is also compared with uniform at the same checkpoint: the difference in pairwise accuracy and in
tau, with a paired bootstrap interval (the same sub-networks resampled for both).

Every sub-network's training and every measurement is written atomically and skipped when its
file exists, so an interrupted run continues where it stopped. Results go to --out:
summary.json, summary.md and one scatter plot per supernet (scatter_<supernet>.png).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np
import torch
import yaml

import study as study_mod
from nasops.train import loop as train_mod
from nasops.train.rundir import load_trained
from nasops.evaluate import Evaluator
from nasops.utils.files import write_json, write_text
from nasops.train.losses import smoothed_cross_entropy
from nasops.ops import set_dw_backend
from nasops.predictor import kendall_tau
from nasops.space import SearchSpace
from nasops.train.step import clip_gradients, forward_active

SUPERNETS = ("uniform", "balanced", "bestup-3-loss")
CHECKPOINTS = {"early": "early.pt", "final": "checkpoint.pt"}
FULL_RANKING = {"archs": 24, "seed": 2026, "bootstrap": 2000}
CI_RANKING = {"archs": 5, "seed": 2026, "bootstrap": 200}


def pairwise_accuracy(truth, predicted) -> float:
    """The share of pairs ordered by `predicted` as by `truth` (pairs tied in `truth` left out;
    a tie in `predicted` counts one half). NaN when every pair is tied in `truth`."""
    truth, predicted = np.asarray(truth, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    i, j = np.triu_indices(truth.size, k=1)
    t, p = np.sign(truth[i] - truth[j]), np.sign(predicted[i] - predicted[j])
    keep = t != 0
    if not keep.any():
        return float("nan")
    return float(np.mean(np.where(p[keep] == 0, 0.5, t[keep] == p[keep])))


def bootstrap_interval(fn, *columns, resamples: int, seed: int = 0) -> list[float]:
    """Percentile 95% interval of fn(*columns) over resamples of the rows: the same indices
    drawn for every column, so that a paired statistic (a difference of two correlations with
    one truth) keeps its pairing."""
    rng = np.random.default_rng(seed)
    columns = [np.asarray(c) for c in columns]
    size = columns[0].size
    values = []
    for _ in range(resamples):
        k = rng.integers(0, size, size)
        v = fn(*(c[k] for c in columns))
        if not np.isnan(v):
            values.append(v)
    if not values:
        return [float("nan"), float("nan")]
    return [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))]


def difference(fn):
    """fn(truth, x) - fn(truth, baseline), as one statistic of (truth, x, baseline)."""
    return lambda truth, x, baseline: fn(truth, x) - fn(truth, baseline)


def spread_over_flops(space: SearchSpace, n: int, seed: int, pool: int = 20_000) -> np.ndarray:
    """n distinct sub-networks whose FLOPs are evenly spaced in log FLOPs over the 1st-99th
    percentile of uniform samples: for each target, the nearest unused sample."""
    x = space.sample(pool, seed=seed)
    _, first = np.unique(x, axis=0, return_index=True)
    x = x[np.sort(first)]  # (without repeats, in the order drawn)
    flops = space.flops(x)
    targets = np.geomspace(np.quantile(flops, 0.01), np.quantile(flops, 0.99), n)
    chosen: list[int] = []
    for target in targets:
        order = np.argsort(np.abs(np.log(flops) - np.log(target)))
        chosen.append(next(int(k) for k in order if k not in chosen))
    return x[chosen]


def one_arch_space(space: SearchSpace, encoding) -> dict:
    """The space config whose only sub-network is `encoding` (its supernet, freshly initialised,
    has exactly that network's shapes)."""
    arch = space.decode(np.asarray(encoding))
    cfg = copy.deepcopy(space.config)
    cfg["name"] = f"{space.name}-one"
    cfg["resolution"] = [arch.resolution]
    cfg["stem"]["width"] = [arch.width[0]]
    for s, stage in enumerate(cfg["stages"]):
        stage.update(width=[arch.width[s + 1]], depth=[arch.depth[s]],
                     kernel_size=[arch.kernel_size[s]], expand_ratio=[arch.expand_ratio[s]])
    cfg["head"]["width"] = [arch.width[-1]]
    return cfg


def train_alone(cfg: dict, space_path: str) -> tuple[float, float]:
    """Trains the one sub-network of the space at space_path from scratch with recipe cfg, as
    the training loop trains the largest sub-network (its gradient clipped alone, not summed
    with a sandwich's); returns (held-out accuracy after BN re-calibration, seconds)."""
    start = time.time()
    cfg = train_mod.check_config(dict(cfg, space=space_path, strategy="uniform", n_prior=100))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    previous = set_dw_backend(cfg["dw_backend"])
    try:
        run = train_mod.build_run(cfg, device)  # seeds, data, fresh network, optimizer, schedule
        net, opt, scheduler, scaler = run.net, run.optimizer, run.scheduler, run.scaler
        arch = run.space.encode(run.space.max_arch())
        net.set_active(arch)
        net.dropout, net.drop_connect = cfg["dropout"], cfg["drop_connect"]
        net.train()
        for epoch in range(cfg["epochs"]):
            for x, y in run.stream.epoch(epoch, 0, device):
                net.zero_grad(set_to_none=True)
                loss = smoothed_cross_entropy(forward_active(net, x, channels_last=cfg["channels_last"], amp=cfg["amp"]), y, cfg["label_smoothing"])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"stand-alone training of {space_path}: loss "
                                             f"{loss.item()} in epoch {epoch + 1}")
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                clip_gradients(net, cfg["grad_clip"], cfg["grad_clip_mode"])
                scaler.step(opt)
                scaler.update()
                scheduler.step()
        net.eval()
        acc = Evaluator(net, run.splits, cfg["eval_batch_size"], cfg["calib_images"],
                        device).accuracy(arch[None])
    finally:
        set_dw_backend(previous)
    return float(acc[0]), time.time() - start


class Ranking:
    def __init__(self, study: study_mod.Study, settings: dict):
        self.study, self.settings = study, settings
        self.dir = os.path.join(study.runs_dir, "ranking")
        os.makedirs(self.dir, exist_ok=True)
        self._archs = None

    def space(self) -> SearchSpace:
        return self.study.space()

    def archs(self) -> np.ndarray:
        if self._archs is None:
            self._archs = spread_over_flops(self.space(), self.settings["archs"], self.settings["seed"])
        return self._archs

    def standalone(self, k: int) -> dict:
        path = os.path.join(self.dir, f"standalone_{k:02d}.json")
        if os.path.exists(path):
            return study_mod.read_json(path)
        space, encoding = self.space(), self.archs()[k]
        space_path = os.path.join(self.dir, f"space_{k:02d}.yaml")
        write_text(space_path, yaml.safe_dump(one_arch_space(space, encoding)))
        study_mod.log(f"training sub-network {k + 1}/{self.settings['archs']} alone "
                      f"({space.flops(encoding):.2f} MFLOPs)")
        acc, seconds = train_alone(self.study.config("uniform"), space_path)
        doc = {"encoding": encoding.tolist(), "mflops": float(space.flops(encoding)),
               "params": float(space.params(encoding)), "holdout_acc": acc, "seconds": seconds}
        write_json(path, doc)
        return doc

    def inherited(self, name: str, checkpoint: str) -> np.ndarray:
        path = os.path.join(self.dir, f"inherited_{name}_{checkpoint}.json")
        if os.path.exists(path):
            return np.asarray(study_mod.read_json(path)["holdout_acc"])
        self.study.train(name)
        cfg, splits, net = load_trained(os.path.join(self.study.run_dir(name), CHECKPOINTS[checkpoint]))
        start = time.time()
        acc = Evaluator(net, splits, cfg["eval_batch_size"], cfg["calib_images"]).accuracy(self.archs())
        write_json(path, {"holdout_acc": acc.tolist(), "seconds": time.time() - start})
        return acc

    def run(self) -> dict:
        self.study.require_pilot()
        for name in SUPERNETS:  # the supernets first: the study's arms, shared with it
            for checkpoint in CHECKPOINTS:
                self.inherited(name, checkpoint)
        alone = [self.standalone(k) for k in range(self.settings["archs"])]
        summary = self.summarize(alone)
        write_json(os.path.join(self.study.out, "summary.json"), summary)
        write_text(os.path.join(self.study.out, "summary.md"), report(summary))
        self.plot(summary)
        study_mod.log(f"wrote {self.study.out}")
        return summary

    def summarize(self, alone: list[dict]) -> dict:
        truth = np.array([a["holdout_acc"] for a in alone])
        params = np.array([a["params"] for a in alone])
        n = self.settings["bootstrap"]
        interval = lambda fn, *columns: bootstrap_interval(fn, *columns, resamples=n)  # noqa: E731
        rows, versus = [], []
        for name in SUPERNETS:
            for checkpoint in CHECKPOINTS:
                inherited = self.inherited(name, checkpoint)
                rows.append({
                    "supernet": name, "checkpoint": checkpoint, "inherited": inherited.tolist(),
                    "pairwise_accuracy": pairwise_accuracy(truth, inherited),
                    "pairwise_accuracy_ci": interval(pairwise_accuracy, truth, inherited),
                    "kendall_tau": kendall_tau(truth, inherited),
                    "kendall_tau_ci": interval(kendall_tau, truth, inherited),
                    "tau_params_inherited": kendall_tau(params, inherited),
                    "tau_params_inherited_ci": interval(kendall_tau, params, inherited)})
                if name == SUPERNETS[0]:
                    continue
                # paired over the same sub-networks: the question is whether an arm ranks
                # better than uniform, which separate intervals cannot answer
                uniform = self.inherited(SUPERNETS[0], checkpoint)
                entry = {"supernet": name, "checkpoint": checkpoint}
                for key, fn in (("pairwise_accuracy", pairwise_accuracy), ("kendall_tau", kendall_tau)):
                    entry[key] = difference(fn)(truth, inherited, uniform)
                    entry[key + "_ci"] = interval(difference(fn), truth, inherited, uniform)
                versus.append(entry)
        return {"config": self.study.base, "settings": self.settings, "standalone": alone,
                "tau_params_standalone": kendall_tau(params, truth),
                "tau_params_standalone_ci": interval(kendall_tau, params, truth),
                "standalone_minutes": sum(a["seconds"] for a in alone) / 60, "rows": rows,
                "versus_uniform": versus}

    def plot(self, summary: dict) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        truth = 100 * np.array([a["holdout_acc"] for a in summary["standalone"]])
        params = np.array([a["params"] for a in summary["standalone"]])
        sizes = 15 + 150 * params / params.max()
        for name in SUPERNETS:
            rows = [r for r in summary["rows"] if r["supernet"] == name]
            fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.8), dpi=120,
                                     squeeze=False)
            for ax, r in zip(axes[0], rows):
                ax.scatter(truth, 100 * np.asarray(r["inherited"]), s=sizes, alpha=0.6)
                ax.set_title(f"{name}, {r['checkpoint']} checkpoint: pairwise acc. "
                             f"{r['pairwise_accuracy']:.2f}, tau {r['kendall_tau']:.2f}", fontsize=8)
                ax.set_xlabel("stand-alone held-out accuracy, %")
                ax.set_ylabel("inherited held-out accuracy, %")
            fig.text(0.99, 0.01, "marker area: params", ha="right", fontsize=7)
            fig.tight_layout()
            study_mod.save_figure(fig, os.path.join(self.study.out, f"scatter_{name}.png"))
            plt.close(fig)


def report(summary: dict) -> str:
    """The summary as markdown."""
    alone = summary["standalone"]
    interval = lambda v, ci: f"{v:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"  # noqa: E731
    acc = [100 * a["holdout_acc"] for a in alone]
    lines = [f"{len(alone)} sub-networks ({min(a['mflops'] for a in alone):.2f}-"
             f"{max(a['mflops'] for a in alone):.2f} MFLOPs) trained alone: held-out accuracy "
             f"{min(acc):.1f}-{max(acc):.1f}%, {summary['standalone_minutes']:.0f} minutes of "
             f"training in all. Kendall tau of stand-alone accuracy with params: "
             f"{interval(summary['tau_params_standalone'], summary['tau_params_standalone_ci'])}.",
             "", "Stand-alone against inherited (BN re-calibrated) held-out accuracy; 95% bootstrap "
             "intervals over the sub-networks.", "",
             "| supernet | checkpoint | pairwise accuracy | Kendall tau | tau(params, inherited) |",
             "|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['supernet']} | {r['checkpoint']} | "
                     f"{interval(r['pairwise_accuracy'], r['pairwise_accuracy_ci'])} | "
                     f"{interval(r['kendall_tau'], r['kendall_tau_ci'])} | "
                     f"{interval(r['tau_params_inherited'], r['tau_params_inherited_ci'])} |")
    lines += ["", f"Minus {SUPERNETS[0]} at the same checkpoint, paired over the same sub-networks "
              "(95% bootstrap intervals):", "",
              "| supernet | checkpoint | pairwise accuracy | Kendall tau |", "|---|---|---|---|"]
    for r in summary["versus_uniform"]:
        lines.append(f"| {r['supernet']} | {r['checkpoint']} | "
                     f"{interval(r['pairwise_accuracy'], r['pairwise_accuracy_ci'])} | "
                     f"{interval(r['kendall_tau'], r['kendall_tau_ci'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study_mod.add_common_arguments(parser, "ranking")
    args = parser.parse_args(argv)
    base, study = study_mod.configs(args)
    settings = dict(CI_RANKING) if args.ci else dict(FULL_RANKING)

    def work():
        with study_mod.exclusive(args.runs_dir):
            os.makedirs(args.out, exist_ok=True)
            Ranking(study_mod.Study(base, study, args.runs_dir, args.out), settings).run()
    return study_mod.run_command("ranking", work)


if __name__ == "__main__":
    sys.exit(main())
