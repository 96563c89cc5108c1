"""Study: do the sampling strategies do what the papers claim? One resumable command.

    python benchmarks/study.py                  # Fashion-MNIST, small space, about 100 min on 2 cores
    python benchmarks/study.py --ci --space PATH --out DIR --runs-dir DIR   # minutes, for tests
    python benchmarks/study.py --only bestup-3-loss bestup-3-loss-alpha      # some runs' rows

Trains one supernet per strategy with the same recipe, budget and seed (uniform, bestup-3-loss,
worstup-3-loss, bestup-50-acc, worstup-50-acc, balanced, all with kd: kl; bestup-3-loss with
kd: alpha; uniform and bestup-3-loss again with a second seed, for the seed-to-seed spread).
For each supernet: the BN-calibrated held-out accuracy of the same random sub-networks, and an
evolutionary search at 4 FLOPs budgets (scored by a predictor fitted on that supernet's own
measurements), whose picks are then measured on the test split. The predictor study of
AttentiveNAS (Sec. 3.3): a forest fitted on half of the sub-networks as measured at an early
checkpoint of the uniform run, its Kendall tau on the other half at that checkpoint, at the end
of the run, and on the second seed's supernet.

Every stage writes its result atomically into the run directories and is skipped when its file
exists, so an interrupted study continues where it stopped. Results and plots go to --out:
summary.json, fig5_accuracy_by_flops.png (Figure 5 style), fig6_best_vs_uniform.png (Figure 6
style), kendall_tau.png, and summary.md (the tables the README quotes).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

from nasops import train as train_mod
from nasops.checkpoint import load_checkpoint, load_trained
from nasops.data import splits_of
from nasops.evaluate import Evaluator
from nasops.predictor import AccuracyPredictor, kendall_tau
from nasops.search import pareto

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (strategy, kd, seed)
RUNS = {
    "uniform": ("uniform", "kl", 0),
    "bestup-3-loss": ("bestup-3-loss", "kl", 0),
    "worstup-3-loss": ("worstup-3-loss", "kl", 0),
    "bestup-50-acc": ("bestup-50-acc", "kl", 0),
    "worstup-50-acc": ("worstup-50-acc", "kl", 0),
    "balanced": ("balanced", "kl", 0),
    "bestup-3-loss-alpha": ("bestup-3-loss", "alpha", 0),
    "uniform-seed1": ("uniform", "kl", 1),
    "bestup-3-loss-seed1": ("bestup-3-loss", "kl", 1),
}

# Sized for about 100 minutes on 2 CPU cores (measured: 102): 5,000 training and 500 held-out
# images (a fixed subset of Fashion-MNIST's training set), 3 epochs; BN re-calibration on 256
# images per sub-network. (500 held-out images leave about 2 points of noise per measurement:
# see the README's study section before sizing a study that must separate strategies.)
FULL = {"recipe": "study", "dataset": "fashion-mnist", "space": "small", "limit": 5500,
        "holdout": 1 / 11, "epochs": 3, "batch_size": 64, "lr": 0.1, "warmup_epochs": 0.5,
        "flip": True, "calib_images": 256, "eval_batch_size": 256, "n_prior": 100_000,
        "log_every": 20}
FULL_STUDY = {"archs": 256, "budgets": [4, 8, 13, 20], "early_epochs": 1,
              "search": {"population": 128, "mutations": 32, "crossovers": 32, "generations": 10}}
CI = {"recipe": "study-ci", "dataset": "digits", "limit": 800, "holdout": 0.2, "epochs": 2,
      "batch_size": 32, "lr": 0.1, "warmup_epochs": 0.2, "calib_images": 64,
      "eval_batch_size": 128, "n_prior": 5000, "log_every": 5}
CI_STUDY = {"archs": 24, "budgets": [0.2, 0.3, 0.45, 0.7], "early_epochs": 1,
            "search": {"population": 16, "mutations": 4, "crossovers": 4, "generations": 2}}


def atomic_write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def atomic_json(path, doc):
    atomic_write(path, json.dumps(doc, indent=2))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def log(msg):
    print(f"[study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Interrupted(Exception):
    pass


class Study:
    def __init__(self, base: dict, study: dict, runs_dir: str, out: str):
        self.base, self.study, self.runs_dir, self.out = base, study, runs_dir, out
        os.makedirs(runs_dir, exist_ok=True)
        os.makedirs(out, exist_ok=True)
        self._archs = None
        self._splits = None

    def config(self, name: str) -> dict:
        strategy, kd, seed = RUNS[name]
        cfg = dict(train_mod.DEFAULTS, **self.base, strategy=strategy, kd=kd, seed=seed)
        if strategy.endswith("-acc"):
            cfg["predictor"] = os.path.join(self.runs_dir, "early_predictor.npz")
        return train_mod.check_config(cfg)

    def run_dir(self, name):
        return os.path.join(self.runs_dir, name)

    # -- stages -------------------------------------------------------------------------------
    def train(self, name: str, stop_after_epochs: int | None = None) -> None:
        """Trains run `name` to the end (or for its first `stop_after_epochs` epochs), resuming
        whatever is on disk."""
        cfg, run = self.config(name), self.run_dir(name)
        if os.path.exists(os.path.join(run, "final.json")):
            return
        ckpt = os.path.join(run, "checkpoint.pt")
        resume = os.path.exists(ckpt)
        per_epoch = len(self.splits().train) // cfg["batch_size"]
        done = 0
        if resume:
            state = load_checkpoint(ckpt)
            done = state["epoch"] * per_epoch + state["step"]  # global steps trained
        stop = None
        if stop_after_epochs is not None:
            stop = stop_after_epochs * per_epoch - done
            if stop <= 0:
                return
        log(f"training {name}" + (f" (first {stop_after_epochs} epochs)" if stop else ""))
        start = time.time()
        result = train_mod.train(cfg, run, resume=resume, progress=False, stop_after_steps=stop)
        self._note_time(name, time.time() - start)
        planned = stop_after_epochs is not None and \
            result.get("interrupted") == stop_after_epochs * per_epoch  # (a global step)
        if "interrupted" in result and not planned:
            raise Interrupted(f"training {name} was interrupted; run the same command to resume")

    def _note_time(self, name, seconds):
        path = os.path.join(self.run_dir(name), "study_times.json")
        times = read_json(path) if os.path.exists(path) else {}
        times["train_s"] = times.get("train_s", 0.0) + seconds
        atomic_json(path, times)

    def archs(self) -> np.ndarray:
        """The random sub-networks every supernet is measured on (same for all)."""
        if self._archs is None:
            space = train_mod.build_space(self.config("uniform"), self.splits())
            self._archs = space.sample(self.study["archs"], seed=2026)
        return self._archs

    def splits(self):
        if self._splits is None:  # every run has the same data: read it once
            self._splits = splits_of(self.config("uniform"))
        return self._splits

    def measure(self, checkpoint: str, out_path: str) -> np.ndarray:
        """Held-out accuracy of the study's sub-networks on a checkpoint (cached in out_path)."""
        if os.path.exists(out_path):
            return np.asarray(read_json(out_path)["accuracy"])
        cfg, splits, net = load_trained(checkpoint)
        log(f"measuring {len(self.archs())} sub-networks of {checkpoint}")
        acc = Evaluator(net, splits, cfg["eval_batch_size"], cfg["calib_images"]).accuracy(self.archs())
        atomic_json(out_path, {"encodings": self.archs().tolist(),
                               "mflops": net.space.flops(self.archs()).tolist(),
                               "accuracy": acc.tolist()})
        return acc

    def early_predictor(self) -> None:
        """Uniform run's first epochs -> early checkpoint -> measured sub-networks -> forest
        fitted on the first half (used by the -acc strategies and the Kendall tau study)."""
        path = os.path.join(self.runs_dir, "early_predictor.npz")
        if os.path.exists(path):
            return
        run = self.run_dir("uniform")
        early = os.path.join(self.runs_dir, "uniform_early.pt")
        if not os.path.exists(early):
            self.train("uniform", stop_after_epochs=self.study["early_epochs"])
            shutil.copyfile(os.path.join(run, "checkpoint.pt"), early + ".tmp")
            os.replace(early + ".tmp", early)
        acc = self.measure(early, os.path.join(self.runs_dir, "uniform_early_evals.json"))
        half = len(acc) // 2
        space = train_mod.build_space(self.config("uniform"), self.splits())
        AccuracyPredictor(space).fit(self.archs()[:half], acc[:half]).save(path)

    def search(self, name: str) -> dict:
        """Pareto front at the study's budgets by a predictor fitted on this supernet's own
        measurements; its picks measured on the supernet (held-out and test)."""
        path = os.path.join(self.run_dir(name), "study_search.json")
        if os.path.exists(path):
            return read_json(path)
        ckpt = os.path.join(self.run_dir(name), "checkpoint.pt")
        acc = self.measure(ckpt, os.path.join(self.run_dir(name), "study_evals.json"))
        cfg, splits, net = load_trained(ckpt)
        predictor = AccuracyPredictor(net.space).fit(self.archs(), acc)
        log(f"searching {name} at {self.study['budgets']} MFLOPs")
        results = pareto(net.space, predictor, self.study["budgets"], seed=0, **self.study["search"])
        ev = Evaluator(net, splits, cfg["eval_batch_size"], cfg["calib_images"])
        doc = {"front": [dict(r.to_dict(), history=None,
                              holdout_acc=float(ev.accuracy(r.encoding, "holdout")[0]),
                              test_acc=float(ev.accuracy(r.encoding, "test")[0]))
                         for r in results]}
        atomic_json(path, doc)
        return doc

    # -- the whole study ------------------------------------------------------------------------
    def run(self) -> dict:
        self.early_predictor()
        for name in RUNS:
            self.train(name)
            self.search(name)
        summary = self.summarize()
        atomic_json(os.path.join(self.out, "summary.json"), summary)
        atomic_write(os.path.join(self.out, "summary.md"), report(summary))
        self.plot(summary)
        log(f"done: {self.out}")
        return summary

    def some(self, names: list[str]) -> str:
        """Trains and measures only the named runs (no search, no summary, nothing in --out);
        returns their rows: training minutes, the largest's and smallest's held-out accuracy
        and the mean over the study's sub-networks."""
        rows = ["| run | train min | largest | smallest | mean |", "|---|---|---|---|---|"]
        for name in names:
            self.train(name)
            run = self.run_dir(name)
            acc = self.measure(os.path.join(run, "checkpoint.pt"),
                               os.path.join(run, "study_evals.json"))
            final = read_json(os.path.join(run, "final.json"))
            minutes = read_json(os.path.join(run, "study_times.json"))["train_s"] / 60
            rows.append(f"| {name} | {minutes:.1f} | {100 * final['largest_holdout_acc']:.1f} | "
                        f"{100 * final['smallest_holdout_acc']:.1f} | {100 * acc.mean():.1f} |")
        return "\n".join(rows)

    def summarize(self) -> dict:
        evals = {n: read_json(os.path.join(self.run_dir(n), "study_evals.json")) for n in RUNS}
        mflops = np.asarray(evals["uniform"]["mflops"])
        edges = np.quantile(mflops, np.linspace(0, 1, 5))
        bins = np.clip(np.searchsorted(edges, mflops, side="right") - 1, 0, 3)
        runs = {}
        for name in RUNS:
            acc = np.asarray(evals[name]["accuracy"])
            final = read_json(os.path.join(self.run_dir(name), "final.json"))
            times = read_json(os.path.join(self.run_dir(name), "study_times.json"))
            per_bin = []
            for b in range(4):
                a = acc[bins == b]
                per_bin.append({"min": float(a.min()), "q1": float(np.quantile(a, 0.25)),
                                "median": float(np.median(a)), "q3": float(np.quantile(a, 0.75)),
                                "max": float(a.max()), "n": int(a.size)})
            runs[name] = {"strategy": RUNS[name][0], "kd": RUNS[name][1], "seed": RUNS[name][2],
                          "final": final, "train_s": times["train_s"],
                          "mean_acc": float(acc.mean()), "per_bin": per_bin,
                          "front": read_json(os.path.join(self.run_dir(name), "study_search.json"))["front"]}
        early = np.asarray(read_json(os.path.join(self.runs_dir, "uniform_early_evals.json"))["accuracy"])
        space = train_mod.build_space(self.config("uniform"), self.splits())
        predictor = AccuracyPredictor.load(os.path.join(self.runs_dir, "early_predictor.npz"), space)
        half = len(early) // 2
        held = self.archs()[half:]
        predicted = predictor.predict(held)
        tau = {"early_checkpoint": kendall_tau(predicted, early[half:]),
               "final_checkpoint": kendall_tau(predicted, np.asarray(evals["uniform"]["accuracy"])[half:]),
               "second_seed": kendall_tau(predicted, np.asarray(evals["uniform-seed1"]["accuracy"])[half:]),
               "predicted": predicted.tolist(),
               "measured": {"early_checkpoint": early[half:].tolist(),
                            "final_checkpoint": evals["uniform"]["accuracy"][half:],
                            "second_seed": evals["uniform-seed1"]["accuracy"][half:]}}
        return {"config": self.base, "study": self.study, "flops_bin_edges": edges.tolist(),
                "runs": runs, "kendall_tau": tau}

    def plot(self, summary: dict) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        names = [n for n in RUNS if RUNS[n][2] == 0]
        edges = summary["flops_bin_edges"]
        fig, ax = plt.subplots(figsize=(10, 4.5), dpi=120)
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            for b, s in enumerate(summary["runs"][name]["per_bin"]):
                x = b + (i - len(names) / 2 + 0.5) * width
                ax.plot([x, x], [s["min"], s["max"]], c=f"C{i}", lw=1)
                ax.add_patch(plt.Rectangle((x - width * 0.4, s["q1"]), width * 0.8, s["q3"] - s["q1"],
                                           fc=f"C{i}", alpha=0.6, label=name if b == 0 else None))
                ax.plot([x - width * 0.4, x + width * 0.4], [s["median"]] * 2, c="k", lw=1)
        ax.set_xticks(range(4))
        ax.set_xticklabels([f"{edges[b]:.3g}-{edges[b + 1]:.3g}" for b in range(4)])
        ax.set_xlabel("MFLOPs bin (quartiles of the measured sub-networks)")
        ax.set_ylabel("held-out accuracy (min, quartiles, max)")
        ax.legend(fontsize=7, ncol=4, loc="lower right")
        fig.tight_layout()
        fig.savefig(os.path.join(self.out, "fig5_accuracy_by_flops.png"))
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
        base = [s["max"] for s in summary["runs"]["uniform"]["per_bin"]]
        for i, name in enumerate(n for n in RUNS if n != "uniform"):
            best = [s["max"] for s in summary["runs"][name]["per_bin"]]
            style = "--" if RUNS[name][2] == 1 else "-"
            ax.plot(range(4), 100 * (np.array(best) - base), style, marker="o", c=f"C{i}", label=name)
        ax.axhline(0, c="k", lw=0.8)
        ax.set_xticks(range(4))
        ax.set_xticklabels([f"{edges[b]:.3g}-{edges[b + 1]:.3g}" for b in range(4)])
        ax.set_xlabel("MFLOPs bin")
        ax.set_ylabel("best accuracy - uniform's (points)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(self.out, "fig6_best_vs_uniform.png"))
        plt.close(fig)

        tau = summary["kendall_tau"]
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), dpi=120)
        for ax, key in zip(axes, ("early_checkpoint", "final_checkpoint", "second_seed")):
            ax.scatter(tau["predicted"], tau["measured"][key], s=8)
            ax.set_title(f"{key.replace('_', ' ')}: tau = {tau[key]:.2f}", fontsize=9)
            ax.set_xlabel("predicted (early uniform)")
            ax.set_ylabel("measured")
        fig.tight_layout()
        fig.savefig(os.path.join(self.out, "kendall_tau.png"))
        plt.close(fig)


def report(summary: dict) -> str:
    """Markdown tables of a summary, in percent, with the seed-to-seed spread of the two strategies
    run twice next to the differences from uniform."""
    runs, edges = summary["runs"], summary["flops_bin_edges"]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    bins = [f"{edges[b]:.3g}-{edges[b + 1]:.3g}" for b in range(4)]
    lines = ["Held-out accuracy (%) of the same sub-networks on each supernet; per MFLOPs bin: "
             "median / best.", "",
             "| run | train min | largest | smallest | mean | vs uniform | "
             + " | ".join(f"{b} MF" for b in bins) + " |",
             "|---|---|---|---|---|---|" + "---|" * 4]
    for name, r in runs.items():
        cells = [name, f"{r['train_s'] / 60:.1f}", pct(r["final"]["largest_holdout_acc"]),
                 pct(r["final"]["smallest_holdout_acc"]), pct(r["mean_acc"]),
                 f"{100 * (r['mean_acc'] - runs['uniform']['mean_acc']):+.1f}"]
        cells += [f"{pct(b['median'])} / {pct(b['max'])}" for b in r["per_bin"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Seed-to-seed spread (|seed 0 - seed 1|, points): "
              + "; ".join(f"{n}: mean {100 * abs(runs[n]['mean_acc'] - runs[n + '-seed1']['mean_acc']):.1f}, "
                          "best per bin "
                          + ", ".join(f"{100 * abs(a['max'] - b['max']):.1f}"
                                      for a, b in zip(runs[n]["per_bin"], runs[n + "-seed1"]["per_bin"]))
                          for n in ("uniform", "bestup-3-loss") if n + "-seed1" in runs), "",
              "Search (predictor fitted on the supernet's own measurements): test accuracy (%) of "
              "the pick at each budget.", "",
              "| run | " + " | ".join(f"<= {f['budget']:g} MF" for f in runs["uniform"]["front"]) + " |",
              "|---|" + "---|" * len(runs["uniform"]["front"])]
    for name, r in runs.items():
        lines.append(f"| {name} | " + " | ".join(f"{pct(f['test_acc'])} ({f['flops']:.2f} MF)"
                                                 for f in r["front"]) + " |")
    lines += ["", "Seed-to-seed spread of the picks' test accuracy (points): "
              + "; ".join(f"{n}: " + ", ".join(f"{100 * abs(a['test_acc'] - b['test_acc']):.1f}"
                                              for a, b in zip(runs[n]["front"], runs[n + "-seed1"]["front"]))
                          for n in ("uniform", "bestup-3-loss") if n + "-seed1" in runs)]
    tau = summary["kendall_tau"]
    lines += ["", "Kendall tau of the early uniform predictor on the held-out half: "
              + ", ".join(f"{k.replace('_', ' ')} {tau[k]:.3f}"
                          for k in ("early_checkpoint", "final_checkpoint", "second_seed")), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ci", action="store_true", help="the minutes-long version (digits)")
    parser.add_argument("--space", help="search space (default: small)")
    parser.add_argument("--data-dir", help="Fashion-MNIST directory (default: the Debian one)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "study"))
    parser.add_argument("--runs-dir", default=os.path.join(ROOT, "benchmarks", "study_runs"))
    parser.add_argument("--only", nargs="+", choices=list(RUNS), metavar="RUN",
                        help="train and measure only these runs and print their rows (no search, "
                             f"no summary); runs: {', '.join(RUNS)}")
    args = parser.parse_args(argv)
    base, study = (dict(CI), dict(CI_STUDY)) if args.ci else (dict(FULL), dict(FULL_STUDY))
    if args.space:
        base["space"] = args.space
    if args.data_dir:
        base["data_dir"] = args.data_dir
    try:
        if args.only:
            print(Study(base, study, args.runs_dir, args.out).some(args.only))
        else:
            Study(base, study, args.runs_dir, args.out).run()
    except Interrupted as e:
        print(f"study: {e}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as e:
        print(f"study: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
