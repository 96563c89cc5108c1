"""python -m nasops.evaluate: BN-calibrated accuracy of random sub-networks of a trained
supernet, written as the evaluation file that nasops-predictor fits on."""
from __future__ import annotations

import argparse
import sys

from ..train.rundir import load_trained
from ..utils import distributed as dist
from ..utils.cli import STAGES, add_import_option, prog as prog_name
from ..utils.cpu import keep_freed_memory
from ..utils.registry import import_modules
from . import Evaluator, write_evaluations


def main(argv=None, prog=None) -> int:
    """python -m nasops.evaluate --checkpoint RUN/checkpoint.pt -n 256 --out evals.json"""
    parser = argparse.ArgumentParser(prog=prog or prog_name("evaluate"),
                                     description="BN-calibrated accuracy of random sub-networks "
                                                 "of a trained supernet, written as the evaluation "
                                                 "file that nasops-predictor fits on.",
                                     epilog=STAGES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="RUN/checkpoint.pt")
    parser.add_argument("-n", type=int, default=256, help="number of uniform sub-networks")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sub-networks drawn")
    parser.add_argument("--split", default="holdout", choices=["holdout", "test", "train"])
    parser.add_argument("--out", required=True, help="evaluation file to write (JSON)")
    parser.add_argument("--no-progress", action="store_true")
    add_import_option(parser)
    args = parser.parse_args(argv)
    try:
        import_modules(args.imports)
        if args.n < 1:
            raise ValueError(f"-n = {args.n} must be a positive number of sub-networks")
        device = dist.init_from_env()
        cfg, splits, net = load_trained(args.checkpoint, device)
        archs = net.space.sample(args.n, seed=args.seed)
        keep_freed_memory()
        acc = Evaluator(net, splits, cfg["eval_batch_size"], cfg["calib_images"], device).accuracy(
            archs, args.split, progress=not args.no_progress)
    except (ValueError, OSError, ImportError, dist.RankLost) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    if dist.rank() == 0:
        write_evaluations(args.out, net.space, archs, acc, args.split, args.checkpoint)
        print(f"wrote {len(acc)} accuracies to {args.out} (mean {acc.mean():.4f}, "
              f"min {acc.min():.4f}, max {acc.max():.4f})")
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
