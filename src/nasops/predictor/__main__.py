"""python -m nasops.predictor EVALS.json --out predictor.npz

Fits the accuracy predictor on a seeded fraction of an evaluation file (written by
`python -m nasops.evaluate`), reports Kendall's tau on the rest (the AttentiveNAS protocol: half
and half), and saves the fitted forest."""
import argparse
import json
import sys

import numpy as np

from . import AccuracyPredictor
from ..utils.cli import STAGES, prog as prog_name
from ..evaluate import read_evaluations


def main(argv=None, prog=None) -> int:
    parser = argparse.ArgumentParser(prog=prog or prog_name("predictor"),
                                     description=__doc__.split("\n\n", 1)[1], epilog=STAGES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("evaluations", help="evaluation file (python -m nasops.evaluate)")
    parser.add_argument("--out", required=True, help="predictor file to write (.npz)")
    parser.add_argument("--train-fraction", type=float, default=0.5)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--max-depth", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if not 0 < args.train_fraction < 1:
            raise ValueError(f"--train-fraction = {args.train_fraction} must be in (0, 1)")
        space, archs, acc = read_evaluations(args.evaluations)
        order = np.random.default_rng(args.seed).permutation(len(archs))
        n_fit = int(round(len(archs) * args.train_fraction))
        if n_fit < 2 or len(archs) - n_fit < 2:
            raise ValueError(f"{len(archs)} evaluations are too few to fit on "
                             f"{args.train_fraction:g} of them and test on the rest")
        fit, test = order[:n_fit], order[n_fit:]
        predictor = AccuracyPredictor(space, args.trees, args.max_depth, args.seed).fit(archs[fit], acc[fit])
        tau = predictor.kendall_tau(archs[test], acc[test])
        predictor.save(args.out)
    except (ValueError, OSError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"kendall_tau": tau, "fitted_on": len(fit), "tested_on": len(test),
                      "out": args.out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
