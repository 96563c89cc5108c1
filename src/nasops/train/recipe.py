"""Training recipes: every key with its type, default and meaning, and loading them.

A :class:`Recipe` is the typed, validated configuration of a training run. It is checked once,
when it is made (:func:`check_config`, which names a bad key or value and what is allowed), and
is read as attributes (``cfg.lr``) or as a mapping (``cfg["lr"]``, ``dict(cfg)``); checkpoints and
``config.yaml`` store it as a plain dict (:meth:`Recipe.as_dict`). A new key is one field here
(and a line in the tables of allowed values below when its values are restricted).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from importlib import resources

import yaml

from ..data import DATASETS, NORMALIZATIONS, Splits, load_splits
from ..utils.checks import is_int, is_number
from ..utils.files import names_a_file, one_line, read_text, read_yaml_text
from .losses import LOSSES
from ..ops import BACKENDS
from .strategies import STRATEGIES, needs_predictor

AMP = ("auto", "none", "bf16", "fp16")  # precision of the training forwards (step.resolve_amp)


def option(default, help: str):
    """A Recipe field: its default and what it does (the --help text)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True, eq=False)
class Recipe(Mapping):
    """Every recipe key: its type, default and what it does. A recipe file or a key=value
    override sets any. Compares equal to a mapping with the same keys and values."""
    recipe: str = option("digits", "name of the recipe these values start from (set by --recipe)")
    # data
    dataset: str = option("digits",
        "digits, fashion-mnist, cifar10 (in memory), imagefolder or imagenet (read from disk by"
        " workers), or one registered with nasops.data.register_dataset (docs/guides/extending.md)")
    data_dir: str | None = option(None,
        "the dataset's directory (null: the dataset's default; digits needs none)")
    workers: int = option(2, "imagefolder/imagenet: DataLoader processes decoding images, per rank")
    skip_bad_images: bool = option(False,
        "imagefolder/imagenet: leave out (and count) unreadable files instead of stopping with "
        "an error naming the file")
    image_size: int | None = option(None,
        "imagefolder/imagenet: side of the random-resized training crops (null: the space's "
        "largest resolution)")
    holdout: float = option(0.1, "fraction of the training images held out to score sub-networks")
    holdout_seed: int = option(0, "seed of the held-out split")
    limit: int | None = option(None,
        "train on a fixed subset of at most this many images (null: all)")
    normalization: str | None = option(None,
        "per-channel mean/std: dataset (the training split's), imagenet (ImageNet's, as the "
        "released supernets expect) or null (imagenet for the imagenet dataset, dataset "
        "otherwise)")
    eval_crop: float | None = option(None,
        "evaluation: resize to ceil(resolution / eval_crop) and centre-crop (the official "
        "ImageNet evaluation: 0.875); null: 0.875 for imagenet, otherwise resize to the "
        "resolution")
    augment: bool = option(True,
        "in memory: random crop with zero padding; folders: random-resized crop (off: the "
        "centre view)")
    flip: bool = option(False, "random horizontal flip (with augment)")
    autoaugment: bool = option(False,
        "folders: the ImageNet AutoAugment policy of the official code (with augment)")
    # supernet
    space: str = option("small",
        "search space: a packaged name (small, attentive_nas) or a YAML path")
    dropout: float = option(0.1, "dropout before the classifier, largest sub-network only")
    drop_connect: float = option(0.1,
        "drop-connect, largest only, as published: last two stages, block i of the supernet's n"
        " gets drop_connect * i / n")
    zero_init_residual: bool = option(False,
        "start each block as its residual path (zero scale of its last BN), as the published "
        "models do")
    dw_backend: str = option("auto",
        "depthwise convolution: nasops (the kernels), torch (reference) or auto (the kernels on "
        "CPU, torch on CUDA, where the nasops kernels have not run on a GPU yet)")
    amp: str = option("auto",
        "mixed precision of the training forwards: none (float32), bf16 or fp16 (autocast; fp16 "
        "with a gradient scaler), or auto (bf16 on a CUDA GPU that has it, float32 on CPU); "
        "bf16 and fp16 are refused on a CPU without native support; losses and evaluation stay "
        "float32")
    channels_last: bool | str = option("auto",
        "channels-last memory format for the supernet and its batches: true, false, or auto "
        "(channels-last on CPU, where the nasops kernels are written for it; NCHW on CUDA)")
    sync_bn: bool = option(True, "under torchrun: BN statistics over all ranks")
    # optimisation
    epochs: int = option(12, "training epochs")
    batch_size: int = option(64, "global batch (divided among torchrun ranks)")
    lr: float = option(0.1, "peak learning rate (SGD), for a batch of lr_batch images")
    lr_batch: int | None = option(None,
        "linear scaling: lr and lr_min are for this global batch and scale with batch_size / "
        "lr_batch (published: 0.1 per 256); null: used as given")
    lr_min: float = option(0.0, "learning rate at the end of the cosine schedule")
    warmup_epochs: float = option(1.0, "linear warm-up over this many epochs")
    warmup_start: float = option(0.001,
        "the warm-up's first learning rate, as a fraction of lr (published: 0.001)")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float = option(5e-05,
        "on conv and linear weights (not BN, not biases), once per step")
    label_smoothing: float = option(0.1, "of the largest sub-network's cross-entropy")
    grad_clip: float | None = option(5.0,
        "gradient clipping threshold per step (null: no clipping)")
    grad_clip_mode: str = option("norm",
        "norm: the whole gradient's norm; value: each element (the published recipe: value at "
        "1.0)")
    init: str | None = option(None,
        "initial supernet weights: a nasops checkpoint or a released AttentiveNAS/AlphaNet one, "
        "of this run's space (a new run: epoch 0, fresh optimizer; the stem and classifier are "
        "re-initialised where the data's channels or classes differ)")
    init_classifier: str = option("auto",
        "with init: auto re-initialises the classifier when init was trained on other data (a "
        "nasops checkpoint's dataset or data_dir differ; the released supernets: unless this "
        "run's dataset is imagenet), so other classes do not inherit its rows; keep loads it "
        "wherever its shape fits (another number of classes re-initialises it anyway); reset "
        "always re-initialises it")
    # sampling
    strategy: str = option("uniform",
        "how the sampled sub-networks are drawn (docs/guides/training.md: Strategies), or one "
        "registered with nasops.train.strategies.register_strategy (docs/guides/extending.md)")
    num_sampled: int = option(2, "sub-networks per step besides the largest and the smallest")
    target_bins: str = option("prior", "FLOPs targets from the prior, or uniform over its bins")
    predictor: str | None = option(None, "predictor file, for the -acc and -offline strategies")
    pool_size: int = option(1_000_000,
        "offline strategies: uniform sub-networks predicted at start")
    n_prior: int = option(200_000, "uniform samples the FLOPs prior and proposal are built from")
    nao_budgets: list | None = option(None,
        "balanced-nao: MFLOPs budgets; the candidate pool is kept per budget and the run ends "
        "with the best of each (RUN/pareto.json)")
    nao_rounds: int = option(4,
        "balanced-nao: rounds of (evaluate the pool, train NAO, renew the pool), evenly spaced "
        "over the run's steps")
    nao_pool: int = option(100, "balanced-nao: candidates in the pool (shared among the budgets)")
    nao_seeds: int = option(50, "balanced-nao: the best candidates NAO moves each round")
    nao_new: int = option(50, "balanced-nao: new candidates per round, replacing the worst")
    nao_step_size: float = option(1.0,
        "balanced-nao: NAO's step size eta along the predictor's gradient (it grows by eta "
        "until a decoded candidate is new)")
    # distillation
    kd: str = option("kl",
        "distillation of the smaller sub-networks: kl, alpha (AlphaNet), or one registered with "
        "nasops.train.losses.register_loss")
    kd_weight: float | None = option(None,
        "weight of the distillation loss against the largest's cross-entropy (null: the loss's "
        "default, kl 1.0 as published, alpha 0.5 as measured)")
    kd_options: dict | None = option(None,
        "options of the kd loss, e.g. {beta: 2} (null: its defaults; --help lists each loss's)")
    # (the alpha loss's options, recipe keys since before kd_options: set them here)
    alpha_min: float = option(-1.0, "kd alpha: the negative alpha of the adaptive divergence")
    alpha_max: float = option(1.0, "kd alpha: the positive alpha of the adaptive divergence")
    alpha_clip: float = option(5.0, "kd alpha: clip of the importance weights")
    # bookkeeping
    seed: int = option(0, "seed of everything: initialisation, data order, augmentation, sampling")
    log_every: int = option(10, "steps between loss lines in metrics.jsonl")
    checkpoint_every: int = option(0,
        "steps between checkpoints within an epoch, which bound what a kill or a power loss "
        "loses (0: at the end of each epoch only)")
    eval_every: int = option(1,
        "epochs between held-out accuracies of the smallest and largest (0: only at the end)")
    eval_batch_size: int = option(256, "batch size of evaluation")
    calib_images: int = option(1024, "training images for BN re-calibration before each evaluation")

    def __getitem__(self, name: str):
        if name not in _NAMES:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self):
        return iter(_NAMES)

    def __len__(self) -> int:
        return len(_NAMES)

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in _NAMES}


_NAMES = tuple(f.name for f in dataclasses.fields(Recipe))
KEYS = {f.name: (f.default, f.metadata["help"]) for f in dataclasses.fields(Recipe)}
DEFAULTS = {name: default for name, (default, _) in KEYS.items()}


def _recipe_dir():
    return resources.files("nasops") / "configs" / "recipes"


def packaged_recipes() -> list[str]:
    return sorted(e.name[:-5] for e in _recipe_dir().iterdir() if e.name.endswith(".yaml"))


def load_recipe(name_or_path: str) -> Recipe:
    """A packaged recipe by name or a YAML file by path, merged over DEFAULTS and checked."""
    if names_a_file(name_or_path):
        text, source = read_text(name_or_path, "recipe file"), name_or_path
        name = os.path.splitext(os.path.basename(name_or_path))[0].lstrip(".") or "recipe"
    else:
        if name_or_path not in packaged_recipes():
            raise ValueError(f"unknown recipe {name_or_path!r}; packaged recipes: "
                             f"{packaged_recipes()} (or give a path to a YAML file)")
        text = (_recipe_dir() / f"{name_or_path}.yaml").read_text()
        source, name = f"recipes/{name_or_path}.yaml", name_or_path
    raw = read_yaml_text(text, source, "recipe")
    if not isinstance(raw, dict):
        raise ValueError(f"{source} must be a mapping of recipe keys")
    return check_config({"recipe": name, **raw}, source)


def apply_overrides(config: Mapping, overrides: list[str]) -> Recipe:
    """key=value strings (values parsed as YAML) applied to a config, then checked."""
    out = dict(config)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r} is not valid YAML: {one_line(e)}") from None
    return check_config(out, "command line")


# What each key allows, by kind (the registries', the loss options' and the cross-key rules
# are in check_config).
_INTEGERS = {"epochs": 1, "batch_size": 1, "num_sampled": 0, "pool_size": 1, "n_prior": 1,
             "log_every": 1, "checkpoint_every": 0, "eval_every": 0, "eval_batch_size": 1, "calib_images": 1,
             "workers": 0, "seed": 0, "holdout_seed": 0, "nao_rounds": 1, "nao_pool": 2,
             "nao_seeds": 1, "nao_new": 1}
_INTEGERS_OR_NULL = {"image_size": 8, "limit": 2, "lr_batch": 1}
# key: (low, high, low excluded, null allowed)
_NUMBERS = {"holdout": (0, 1, True, False), "lr": (0, math.inf, True, False),
            "nao_step_size": (0, math.inf, True, False),
            "lr_min": (0, math.inf, False, False), "warmup_epochs": (0, math.inf, False, False),
            "weight_decay": (0, math.inf, False, False), "kd_weight": (0, math.inf, False, True),
            "grad_clip": (0, math.inf, True, True), "warmup_start": (0, 1, False, False),
            "momentum": (0, 1, False, False), "dropout": (0, 1, False, False),
            "drop_connect": (0, 1, False, False), "label_smoothing": (0, 0.999, False, False),
            "eval_crop": (0, 1, True, True)}
_FLAGS = ("augment", "flip", "nesterov", "sync_bn", "zero_init_residual", "autoaugment",
          "skip_bad_images")
_CHOICES = {"grad_clip_mode": ["norm", "value"], "amp": list(AMP), "dw_backend": list(BACKENDS),
            "normalization": list(NORMALIZATIONS) + [None], "target_bins": ["prior", "uniform"],
            "channels_last": [True, False, "auto"], "init_classifier": ["auto", "keep", "reset"]}


# (no path separator and no leading dot: a name cannot point a run's directory elsewhere)
_NAME = re.compile(r"[^/\\\0.][^/\\\0]*")


def _check_value(cfg: Mapping, key: str) -> str | None:
    """What `key` allows, if cfg's value is not allowed (None if it is)."""
    v = cfg[key]
    if key in _INTEGERS:
        return None if is_int(v) and v >= _INTEGERS[key] else f"an integer >= {_INTEGERS[key]}"
    if key in _INTEGERS_OR_NULL:
        lo = _INTEGERS_OR_NULL[key]
        return None if v is None or (is_int(v) and v >= lo) else f"an integer >= {lo} or null"
    if key in _NUMBERS:
        lo, hi, open_lo, none = _NUMBERS[key]
        if (v is None and none) or (is_number(v) and (lo < v if open_lo else lo <= v) and v <= hi):
            return None
        return f"a number in {'(' if open_lo else '['}{lo}, {hi}]" + (" or null" if none else "")
    if key in _FLAGS:
        return None if isinstance(v, bool) else "true or false"
    if key in _CHOICES:  # (True == 1: compare types too)
        return None if any(v == c and type(v) is type(c) for c in _CHOICES[key]) else _CHOICES[key]
    return None


def check_config(cfg: Mapping, source: str = "config") -> Recipe:
    """The Recipe of `cfg` (keys it lacks at their defaults) if every key is known and every
    value allowed; ValueError naming the key, the value and what is allowed otherwise."""
    if isinstance(cfg, Recipe):
        return cfg  # (checked when it was made)
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{source}: unknown recipe key(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **cfg}
    for key, registry in (("dataset", DATASETS), ("kd", LOSSES), ("strategy", STRATEGIES)):
        try:
            registry.lookup(cfg[key])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None
    for key in _NAMES:
        allowed = _check_value(cfg, key)
        if key in ("data_dir", "predictor", "init") and not isinstance(cfg[key], (str, type(None))):
            allowed = "a path or null"
        if key == "space" and not isinstance(cfg[key], str):
            allowed = "a packaged space name or a YAML path"
        if key == "recipe" and not (isinstance(cfg[key], str) and _NAME.fullmatch(cfg[key])):
            allowed = ("a name without '/' or '\\' that does not start with '.' (it names the "
                       "run's default directory)")
        if key == "nao_budgets" and cfg[key] is not None and not (
                isinstance(cfg[key], list) and cfg[key] and all(is_number(b) and 0 < b < math.inf
                                                                for b in cfg[key])):
            allowed = "null or a non-empty list of MFLOPs budgets > 0"
        if allowed is not None:
            raise ValueError(f"{source}: {key} = {cfg[key]!r} is not allowed; allowed: {allowed}")
    # the loss's options, checked by the loss; the alpha loss's recipe keys whatever kd is
    LOSSES.get("alpha").resolve({k: cfg[k] for k in ("alpha_min", "alpha_max", "alpha_clip")},
                                source)
    loss_options(cfg, source)
    if needs_predictor(cfg["strategy"]) and cfg["predictor"] is None:
        raise ValueError(f"{source}: strategy {cfg['strategy']!r} needs predictor = a predictor "
                         f"file (python -m nasops.predictor makes one)")
    if cfg["lr_min"] > cfg["lr"]:
        raise ValueError(f"{source}: lr_min = {cfg['lr_min']} exceeds lr = {cfg['lr']}")
    return Recipe(**cfg)


def splits_of(cfg: Mapping) -> Splits:
    """The splits a training recipe names (its dataset, data_dir, holdout, holdout_seed, limit,
    normalization, eval_crop, workers and skip_bad_images keys)."""
    return load_splits(cfg["dataset"], cfg["data_dir"], cfg["holdout"], cfg["holdout_seed"],
                       cfg["limit"], cfg.get("normalization"), cfg.get("eval_crop"),
                       workers=cfg.get("workers", 0),
                       skip_bad_images=cfg.get("skip_bad_images", False))


def loss_options(cfg: Mapping, source: str = "config") -> dict:
    """The options of the recipe's distillation loss (kd): those that are recipe keys (the alpha
    loss's alpha_min, alpha_max, alpha_clip) from those keys, the others from kd_options, the
    rest at the loss's defaults; ValueError for an option the loss does not take, a value it
    does not allow, or a recipe key repeated in kd_options."""
    loss, given = LOSSES.get(cfg["kd"]), cfg["kd_options"]
    where = f"{source}: kd_options of kd={cfg['kd']!r}"
    if given is None or isinstance(given, Mapping):
        given = dict(given or {})
        repeated = sorted(set(given) & set(_NAMES))
        if repeated:
            raise ValueError(f"{where}: {repeated} are recipe keys: set them as key=value, not in "
                             f"kd_options")
        given.update({k: cfg[k] for k in loss.options if k in _NAMES})
    return loss.resolve(given, where)
