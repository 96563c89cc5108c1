"""Run checkpoints: written atomically by training, read back by resume, evaluation and search."""
from __future__ import annotations

import hashlib
import os

import torch

from .. import __version__
from ..utils.files import load_tensors, serialised, write_files

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
    """torch.save of `payload` with its checksum (see :func:`payload_sha256`), atomically
    (nasops.utils.files): an interrupted run never leaves half a checkpoint, and a full disk
    raises an OSError naming `path`."""
    payload = {k: v for k, v in payload.items() if k != "sha256"}
    payload["sha256"] = payload_sha256(payload)
    write_files({path: serialised(torch.save, payload)})


def payload_sha256(payload: dict) -> str:
    """SHA-256 of a checkpoint's contents, whatever their serialisation: every key and value in
    order, tensors by dtype, shape and bytes. Written with a checkpoint and checked when it is
    loaded, it catches the damage torch.load would not (a flipped bit in a tensor's data
    loads as a different number)."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in payload.items() if k != "sha256"})
    return digest.hexdigest()


def _feed(digest, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(value, dict):  # (dict or OrderedDict: the same contents)
        digest.update(b"D%d" % len(value))
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    else:  # (str, int, float, bool, None)
        digest.update(f"{type(value).__name__}:{value!r};".encode())


def load_checkpoint(path: str) -> dict:
    """A checkpoint written by nasops.train (plain tensors and containers only: loaded with
    weights_only=True) whose contents match the checksum written with them; FileNotFoundError /
    ValueError naming the file otherwise."""
    ckpt = load_tensors(path, "nasops checkpoint")
    found = ckpt.get("format") if isinstance(ckpt, dict) else None
    if found in OLD_FORMATS:
        raise ValueError(f"{path} is a checkpoint of format {found!r}, which this nasops "
                         f"{__version__} (format {FORMAT!r}) does not load: {OLD_FORMATS[found]}")
    if found != FORMAT:
        raise ValueError(f"{path} is not a nasops checkpoint (expected format {FORMAT!r})")
    if "sha256" in ckpt and payload_sha256(ckpt) != ckpt["sha256"]:  # (older ones have none)
        raise ValueError(f"{path} is damaged: its contents do not match the SHA-256 written with "
                         f"them (a changed bit on disk or in a copy); use another copy or the "
                         f"run's previous checkpoint")
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


# Tensors that depend on the data, not on the search space: the stem's input channels and the
# classifier's classes. A warm start re-initialises them when the new data differs.
_DATA_SHAPED = ("stem.weight", "classifier.weight", "classifier.bias")


_CLASSIFIER = ("classifier.weight", "classifier.bias")
# what a released AttentiveNAS/AlphaNet supernet was trained on, as a recipe names it
_OFFICIAL_DATA = {"dataset": "imagenet"}


def _init_weights(path: str, net) -> tuple:
    """The supernet state dict of a nasops checkpoint or a released official one at `path`, with
    the space it was trained on (a checkpoint's own; the official ones: attentive_nas) and its
    data: {"dataset", "data_dir"} of its recipe (the official ones: {"dataset": "imagenet"})."""
    from ..space import SearchSpace
    from .official import load_official
    from .supernet import Supernet
    loaded = load_tensors(path, "checkpoint (init)")
    if isinstance(loaded, dict) and "format" in loaded:
        ckpt = load_checkpoint(path)
        data = (_OFFICIAL_DATA if "converted_from" in ckpt  # (nasops-convert's: a released one)
                else {k: ckpt["config"].get(k) for k in ("dataset", "data_dir")})
        return SearchSpace(ckpt["space"], source=path), ckpt["model"], data
    space = SearchSpace.load("attentive_nas")  # what the released supernets are
    if not _same_space(space, net.space):
        raise ValueError(f"init = {path!r} is not a nasops checkpoint, so it is read as a released "
                         f"AttentiveNAS/AlphaNet supernet, whose space is attentive_nas; this run's "
                         f"space is {net.space.name!r}")
    return space, load_official(Supernet(space), loaded).state_dict(), _OFFICIAL_DATA


def _same_space(a, b) -> bool:
    """The same search space, whatever the number of classes and input channels (the data's)."""
    return _network_keys(a.config) == _network_keys(b.config)


def _network_keys(config) -> dict:
    """A space's keys that shape the supernet's weights (not its name, its data's classes and
    channels, or the sampler's FLOPs step)."""
    return {k: v for k, v in config.items()
            if k not in ("name", "num_classes", "in_channels", "flops_step")}


def warm_start(net, path: str, classifier: str = "keep", data: dict | None = None) -> list[str]:
    """Loads the weights and BN statistics of a trained supernet (a nasops checkpoint, or a
    released official AttentiveNAS/AlphaNet one) into `net`, a Supernet of the same search space.
    The stem and classifier tensors whose shapes differ because the data differs (input
    channels, classes) keep `net`'s fresh initialisation; so does the classifier with
    `classifier` "reset", or "auto" when `data` (the run's {"dataset", "data_dir"}) is not what
    the init was trained on (a recipe's init_classifier). Returns the names kept fresh.
    ValueError naming the file and the keys for another space or any other mismatch;
    FileNotFoundError for a missing file."""
    if classifier not in ("auto", "keep", "reset"):
        raise ValueError(f"classifier = {classifier!r} is not allowed; allowed: ['auto', 'keep', "
                         f"'reset']")
    init_space, state, init_data = _init_weights(path, net)
    if not _same_space(init_space, net.space):
        mine, theirs = _network_keys(net.space.config), _network_keys(init_space.config)
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ValueError(f"init = {path!r} was trained on another search space "
                         f"({init_space.name!r}; its {differ} differ from this run's "
                         f"{net.space.name!r})")
    own = net.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"init = {path!r}: its supernet does not fit this run's (missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]})")
    kept = [k for k in own if state[k].shape != own[k].shape]
    bad = [k for k in kept if k not in _DATA_SHAPED]
    if bad:
        raise ValueError(f"init = {path!r}: tensors of another shape {bad[:5]} (only the stem's "
                         f"input channels and the classifier's classes may differ)")
    if classifier == "reset" or (classifier == "auto" and not _same_data(init_data, data or {})):
        kept += [k for k in _CLASSIFIER if k not in kept]
    net.load_state_dict({k: (own[k] if k in kept else state[k]) for k in own})
    return kept


def _same_data(init: dict, run: dict) -> bool:
    """Whether a run on `run` data keeps the classes of an init trained on `init` (the released
    supernets' ImageNet: any data_dir of the imagenet dataset)."""
    if init is _OFFICIAL_DATA:
        return run.get("dataset") == "imagenet"

    def where(d):  # (one folder, however its path is spelled)
        return None if d.get("data_dir") is None else os.path.realpath(d["data_dir"])
    return init.get("dataset") == run.get("dataset") and where(init) == where(run)
