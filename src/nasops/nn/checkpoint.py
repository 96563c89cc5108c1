"""Run checkpoints: written atomically by training, read back by resume, evaluation and search."""
from __future__ import annotations

import os

import torch

from .. import __version__
from ..utils.files import atomic_path

# The layout of the supernet's weights changes the format's number (docs/guides/supernet.md:
# State-dict layout).
FORMAT = "nasops-checkpoint-2"
# Older layouts: why this nasops cannot read them, and what to do.
OLD_FORMATS = {
    "nasops-checkpoint-1": "it holds state-dict layout 1, whose head_conv has a bias; layout 2 "
                           "follows the published network, which has none, and a trained bias "
                           "cannot be removed without changing the outputs. Evaluate or search "
                           "it with nasops 0.1 (pip install 'nasops==0.1.*', or check out its "
                           "commit), or retrain it with this nasops",
}


def save_checkpoint(path: str, payload: dict) -> None:
    """torch.save, atomically (nasops.utils.files): an interrupted run never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by nasops.train (plain tensors and containers only: loaded with
    weights_only=True); FileNotFoundError / ValueError naming the file otherwise."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path} is not a readable nasops checkpoint: {type(e).__name__}: {e}") from None
    found = ckpt.get("format") if isinstance(ckpt, dict) else None
    if found in OLD_FORMATS:
        raise ValueError(f"{path} is a checkpoint of format {found!r}, which this nasops "
                         f"{__version__} (format {FORMAT!r}) does not load: {OLD_FORMATS[found]}")
    if found != FORMAT:
        raise ValueError(f"{path} is not a nasops checkpoint (expected format {FORMAT!r})")
    return ckpt


def load_supernet(path: str, device: torch.device | str = "cpu"):
    """(recipe, supernet) of a training run's checkpoint: the supernet with its trained weights
    on `device`, in eval mode."""
    from ..space import SearchSpace
    from .supernet import Supernet
    ckpt = load_checkpoint(path)
    net = Supernet(SearchSpace(ckpt["space"], source=path))
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: the weights do not fit the supernet of its own space: {e}") from None
    return ckpt["config"], net.to(device).eval()
