"""python -m nasops.train.convert --from-official CKPT --out RUN/checkpoint.pt [--data-dir IMAGENET]

Converts a released AttentiveNAS / AlphaNet supernet (a checkpoint of the official dynamic model)
into a nasops checkpoint, which python -m nasops.evaluate and python -m nasops.search accept. The
checkpoint records how the released models are evaluated: ImageNet's normalisation, and each
sub-network's input resized to ceil(resolution / 0.875) and centre-cropped. --data-dir names the
ImageNet folder (train/ and val/, one sub-folder per class) that evaluation and search read.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys

from ..nn.checkpoint import FORMAT, save_checkpoint
from ..utils.cli import STAGES, prog as prog_name
from ..data import IMAGENET_EVAL_CROP
from ..nn import Supernet
from ..space import SearchSpace



def official_config(space: SearchSpace, data_dir: str | None) -> dict:
    """The recipe a converted supernet is evaluated with: nasops's defaults, the imagenet
    dataset with ImageNet's normalisation and evaluation view."""
    from .recipe import DEFAULTS, check_config
    cfg = dict(DEFAULTS, recipe="official", dataset="imagenet", data_dir=data_dir,
               space=space.name, normalization="imagenet", eval_crop=IMAGENET_EVAL_CROP)
    return check_config(cfg, "the converted supernet's config").as_dict()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_official(source: str, out: str, space: str = "attentive_nas",
                     data_dir: str | None = None) -> dict:
    """Writes the nasops checkpoint of the official supernet `source` to `out` (atomically);
    returns what it wrote besides the weights."""
    net = Supernet.from_official(source, space)
    if data_dir is not None and not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir!r} is not a directory")
    info = {"official_checkpoint": os.path.abspath(source), "sha256": _sha256(source),
            "space": net.space.name}
    payload = {"format": FORMAT, "config": official_config(net.space, data_dir),
               "space": net.space.config, "model": net.state_dict(), "converted_from": info}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_checkpoint(out, payload)
    return info


def main(argv=None, prog=None) -> int:
    doc = __doc__.split("\n\n", 1)[1]
    parser = argparse.ArgumentParser(prog=prog or prog_name("convert"), description=doc,
                                     epilog=STAGES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-official", required=True, metavar="CKPT",
                        help="checkpoint of an official AttentiveNAS / AlphaNet supernet")
    parser.add_argument("--out", required=True, help="the nasops checkpoint to write")
    parser.add_argument("--space", default="attentive_nas",
                        help="the search space the supernet was trained on (default: attentive_nas)")
    parser.add_argument("--data-dir", help="ImageNet: train/ and val/ folders of class folders")
    args = parser.parse_args(argv)
    try:
        convert_official(args.from_official, args.out, args.space, args.data_dir)
    except (ValueError, OSError, TypeError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: the {args.space} supernet of {args.from_official}, with ImageNet's "
          f"normalisation and evaluation crop ({IMAGENET_EVAL_CROP})")
    if args.data_dir is None:
        print("no --data-dir: search it with a predictor (python -m nasops.search --predictor "
              "FILE --space ...), or convert again with --data-dir to evaluate and search it "
              "on ImageNet")
    else:
        print(f"next: python -m nasops.search --checkpoint {args.out} --budgets 400 600 800")
    return 0


if __name__ == "__main__":
    sys.exit(main())
