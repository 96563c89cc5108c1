"""python -m nasops.search --checkpoint RUN/checkpoint.pt --budgets 5 10 20

Evolutionary search of a trained supernet under each FLOPs budget (MFLOPs). The objective is the
BN-calibrated held-out accuracy of the supernet, or with --predictor FILE the predictor's
accuracy. Writes to --out (default RUN/search): pareto.json (per budget: the architecture, FLOPs,
params, objective, and with a checkpoint the measured held-out and test accuracy), pareto.png (the
front over a cloud of random sub-networks) and, with a checkpoint, each chosen sub-network
exported as a static network (net_<budget>MF/: TorchScript, ONNX, state_dict, meta.json).
"""
import argparse
import json
import logging
import os
import sys

import numpy as np

from . import SupernetAccuracy, pareto
from .. import distributed as dist
from ..checkpoint import load_trained
from ..evaluate import Evaluator
from ..export import export_subnet
from ..predictor import AccuracyPredictor
from ..space import SearchSpace

log = logging.getLogger("nasops.search")


def plot_front(path: str, cloud_flops, cloud_scores, results, ylabel: str) -> bool:
    """pareto.png; False (and a warning) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no %s", path)
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.scatter(cloud_flops, cloud_scores, s=6, c="0.6", label=f"{len(cloud_flops)} random sub-networks")
    ax.plot([r.flops for r in results], [r.score for r in results], "o-", c="C3",
            label="searched front")
    for r in results:
        ax.axvline(r.budget, c="C3", lw=0.5, ls=":")
    ax.set_xlabel("MFLOPs")
    ax.set_ylabel(ylabel)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nasops.search",
                                     description=__doc__.splitlines()[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="RUN/checkpoint.pt of python -m nasops.train")
    parser.add_argument("--predictor", help="predictor file: search by predicted accuracy")
    parser.add_argument("--space", help="search space, when searching with --predictor and no "
                                        "--checkpoint")
    parser.add_argument("--budgets", type=float, nargs="+", required=True, help="MFLOPs")
    parser.add_argument("--out", help="output directory (default: RUN/search, or ./search)")
    parser.add_argument("--population", type=int, default=512)
    parser.add_argument("--mutations", type=int, default=128)
    parser.add_argument("--crossovers", type=int, default=128)
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--mutate-prob", type=float, default=0.1)
    parser.add_argument("--cloud", type=int,
                        help="random sub-networks in the plot (default: 256 with --predictor, "
                             "64 when each costs a supernet evaluation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calib-images", type=int,
                        help="training images for BN re-calibration (default: the run's recipe)")
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("nasops").setLevel(logging.INFO)  # (not the INFO of every library)
    try:
        device = dist.init_from_env()
        evaluator = None
        if args.checkpoint:
            cfg, splits, net = load_trained(args.checkpoint, device)
            space = net.space
            evaluator = Evaluator(net, splits, cfg["eval_batch_size"],
                                  args.calib_images or cfg["calib_images"], device)
        elif args.predictor and args.space:
            space = SearchSpace.load(args.space)
        else:
            raise ValueError("give --checkpoint (search by supernet accuracy, or with --predictor "
                             "by predicted accuracy), or --predictor with --space")
        if args.predictor:
            objective, ylabel = AccuracyPredictor.load(args.predictor, space), "predicted accuracy"
        else:
            objective = SupernetAccuracy(evaluator, "holdout")  # (evolve shows the progress)
            ylabel = "held-out accuracy (BN-calibrated)"
        if args.cloud is None:
            args.cloud = 256 if args.predictor else 64
        out = args.out or (os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "search")
                           if args.checkpoint else "search")
        results = pareto(space, objective, args.budgets, seed=args.seed,
                         population=args.population, mutations=args.mutations,
                         crossovers=args.crossovers, generations=args.generations,
                         mutate_prob=args.mutate_prob, progress=not args.no_progress)
        cloud = space.sample(args.cloud, seed=args.seed + 1) if args.cloud > 0 else np.zeros((0, space.dim), np.int64)
        if isinstance(objective, SupernetAccuracy):
            objective.progress = not args.no_progress
        cloud_scores = np.asarray(objective(cloud), dtype=float) if len(cloud) else np.zeros(0)
        entries = []
        for r in results:
            entry = r.to_dict()
            if evaluator is not None:
                entry["holdout_acc"] = float(evaluator.accuracy(r.encoding, "holdout")[0])
                entry["test_acc"] = float(evaluator.accuracy(r.encoding, "test")[0])
                if not args.no_export and dist.rank() == 0:
                    evaluator.calibrate(r.encoding)
                    meta = {"mean": splits.mean.tolist(), "std": splits.std.tolist(),
                            "classes": splits.train.classes, "holdout_acc": entry["holdout_acc"],
                            "test_acc": entry["test_acc"], "checkpoint": args.checkpoint}
                    entry["export"] = export_subnet(net, r.encoding,
                                                    os.path.join(out, f"net_{r.budget:g}MF"), meta)
            entries.append(entry)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"nasops.search: error: {e}", file=sys.stderr)
        return 1
    if dist.rank() == 0:
        os.makedirs(out, exist_ok=True)
        doc = {"space": space.name, "objective": ylabel,
               "source": args.checkpoint or args.predictor, "results": entries,
               "cloud": {"encodings": cloud.tolist(), "mflops": space.flops(cloud).tolist() if len(cloud) else [],
                         "scores": cloud_scores.tolist()}}
        with open(os.path.join(out, "pareto.json"), "w") as f:
            json.dump(doc, f, indent=2)
        plot_front(os.path.join(out, "pareto.png"),
                   space.flops(cloud) if len(cloud) else [], cloud_scores, results, ylabel)
        for e in entries:
            extra = f", held-out {e['holdout_acc']:.4f}, test {e['test_acc']:.4f}" if "test_acc" in e else ""
            print(f"<= {e['budget']:g} MFLOPs: {e['flops']:.3f} MFLOPs, {e['params']:.3f} M params, "
                  f"objective {e['score']:.4f}{extra}")
        print(f"wrote {out}/pareto.json, pareto.png" + ("" if args.no_export or evaluator is None
                                                        else " and the exported networks"))
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
