"""`python -m nasops SPACE`: describe a search space and draw sub-networks from it.

    python -m nasops attentive_nas                       # summary, FLOPs prior
    python -m nasops attentive_nas --target 400 -n 3     # 3 sub-networks at ~400 MFLOPs (JSON)
    python -m nasops small --proportional params -n 2    # drawn in proportion to model size
"""
import argparse
import json
import math
import sys

from . import FlopsSampler, SearchSpace


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nasops", description=__doc__.splitlines()[0])
    parser.add_argument("space", nargs="?", default="attentive_nas",
                        help="packaged space name or path to a YAML file (default: attentive_nas)")
    parser.add_argument("--target", type=float, help="FLOPs target in MFLOPs")
    parser.add_argument("--proportional", choices=["params", "flops"],
                        help="draw in proportion to model size instead")
    parser.add_argument("-n", type=int, default=1, help="number of sub-networks to draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-prior", type=int, default=200_000)
    args = parser.parse_args(argv)
    try:
        space = SearchSpace.load(args.space)
        sampler = FlopsSampler(space, n_prior=args.n_prior, seed=args.seed)
        if args.target is None and args.proportional is None:
            describe(space, sampler)
            return 0
        if args.proportional:
            archs = sampler.sample_proportional(args.n, by=args.proportional)
        else:
            archs = sampler.sample(args.target, n=args.n)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    flops, params = space.flops(archs), space.params(archs)
    for arch, f, p in zip(space.decode_all(archs), flops, params):
        print(json.dumps({**arch.to_dict(), "mflops": round(f, 3), "mparams": round(p, 4)}))
    return 0


def describe(space, sampler):
    smallest, largest = space.min_arch(), space.max_arch()
    count = math.prod(len(c) for c in space.choices)
    print(f"{space.name}: {space.num_stages} stages, {space.dim} dimensions, "
          f"{count:.3g} sub-networks, {space.num_classes} classes")
    for arch, label in ((smallest, "smallest"), (largest, "largest")):
        print(f"  {label}: {space.flops(arch):.1f} MFLOPs, {space.params(arch):.2f} M params  "
              f"{json.dumps(arch.to_dict())}")
    print(f"  FLOPs prior ({sampler.step:g} MFLOPs bins, {len(sampler.targets)} targets):")
    peak = sampler.prior.max()
    for t, p in zip(sampler.targets, sampler.prior):
        print(f"  {t:8g}  {p:6.2%}  {'#' * max(1, round(40 * p / peak))}")


if __name__ == "__main__":
    sys.exit(main())
