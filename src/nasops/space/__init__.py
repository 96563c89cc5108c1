"""Search spaces, architectures and their flat integer encoding.

A search space is data (YAML, packaged under ``nasops/configs/`` or the user's own file): input
resolutions, a stem, MBConv stages and a head, each with its candidate values. An :class:`Arch`
is one sub-network in the dict form of the AttentiveNAS releases. The flat encoding, used by the
C++ core and the accuracy predictor, is the architecture's values in this order::

    resolution, width[0..S+1] (stem, S stages, head), depth[0..S-1], kernel_size[0..S-1],
    expand_ratio[0..S-1]

FLOPs are multiply-accumulates of conv and linear layers for one image, in millions (MFLOPs);
params are conv and linear weights (no biases, no BN), in millions. docs/DESIGN.md has the network.
"""
from __future__ import annotations

import copy
import dataclasses
import numbers
import os
from collections.abc import Mapping, Sequence
from importlib import resources

import numpy as np
import yaml

from .. import _C
from ..utils.checks import is_int, seed64
from ..utils.files import names_a_file, read_text, read_yaml_text
from .cost import cost_tables

ARCH_FIELDS = ("resolution", "width", "depth", "kernel_size", "expand_ratio")
ACTIVATIONS = ("swish", "relu", "hswish")
_TOP_KEYS = {"name": None, "in_channels": 3, "num_classes": 1000, "flops_step": 25,
             "resolution": None, "stem": None, "stages": None, "head": None}
_STEM_KEYS = {"width": None, "kernel_size": 3, "stride": 2, "act": "swish"}
_STAGE_KEYS = {"name": "", "width": None, "depth": None, "kernel_size": None,
               "expand_ratio": None, "stride": 1, "se": False, "act": "swish"}
_HEAD_KEYS = {"width": None, "expand_ratio": 6, "act": "swish"}


def _as_int(field: str, value) -> int:
    """An integer, or an integral float such as 4.0; anything else is refused by name."""
    if is_int(value):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if float(value).is_integer():
            return int(value)
        raise ValueError(f"{field} = {value!r} is not an integer")
    raise TypeError(f"{field} must be an integer, got {type(value).__name__} {value!r}")


def _as_int_list(field: str, value) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{field} must be a list of integers, got {type(value).__name__} {value!r}")
    return [_as_int(f"{field}[{i}]", v) for i, v in enumerate(value)]


@dataclasses.dataclass
class Arch:
    """One sub-network: ``resolution``, ``width`` (stem, one per stage, head), and ``depth``,
    ``kernel_size``, ``expand_ratio`` (one per stage). Check it against a space with
    :meth:`SearchSpace.validate`."""

    resolution: int
    width: list[int]
    depth: list[int]
    kernel_size: list[int]
    expand_ratio: list[int]

    def __post_init__(self):
        self.resolution = _as_int("resolution", self.resolution)
        for field in ARCH_FIELDS[1:]:
            setattr(self, field, _as_int_list(field, getattr(self, field)))

    @classmethod
    def from_dict(cls, d: Mapping) -> "Arch":
        """From the AttentiveNAS release form ``{"resolution": 224, "width": [...], ...}``."""
        if not isinstance(d, Mapping):
            raise TypeError(f"an architecture dict is expected, got {type(d).__name__}")
        missing = [k for k in ARCH_FIELDS if k not in d]
        unknown = [k for k in d if k not in ARCH_FIELDS]
        if missing or unknown:
            raise ValueError(f"architecture dict has missing keys {missing} / unknown keys "
                             f"{unknown}; expected exactly {list(ARCH_FIELDS)}")
        return cls(**{k: d[k] for k in ARCH_FIELDS})

    def to_dict(self) -> dict:
        return {k: copy.copy(getattr(self, k)) for k in ARCH_FIELDS}


def _check_keys(where: str, d, allowed: dict) -> dict:
    """d with defaults filled in; refuses non-dicts, missing required and unknown keys."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(d).__name__} {d!r}")
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed keys: {sorted(allowed)}")
    out = {}
    for key, default in allowed.items():
        if key in d:
            out[key] = d[key]
        elif default is None:
            raise ValueError(f"{where}: required key '{key}' is missing")
        else:
            out[key] = default
    return out


def _check_choices(where: str, value, odd: bool = False) -> list[int]:
    """A non-empty list of distinct positive integers (odd ones for kernels), sorted."""
    if is_int(value):
        value = [value]
    try:
        values = _as_int_list(where, value)
    except TypeError as e:
        raise ValueError(str(e)) from None
    if not values:
        raise ValueError(f"{where} is empty; give at least one candidate value")
    if any(v < 1 for v in values):
        raise ValueError(f"{where} = {values}: candidates must be positive integers")
    if odd and any(v % 2 == 0 for v in values):
        raise ValueError(f"{where} = {values}: kernel sizes must be odd")
    if len(set(values)) != len(values):
        raise ValueError(f"{where} = {values} repeats a value")
    return sorted(values)


def _check_one_of(where: str, value, allowed) -> object:
    if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
        raise ValueError(f"{where} = {value!r} is not allowed; allowed: {list(allowed)}")
    return value


def _check_positive_int(where: str, value) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"{where} = {value!r} must be a positive integer")
    return int(value)


def _check_config(raw, source: str) -> dict:
    """The validated, normalised form of a search-space YAML document."""
    cfg = _check_keys(source, raw, _TOP_KEYS)
    if not isinstance(cfg["name"], str) or not cfg["name"]:
        raise ValueError(f"{source}: name = {cfg['name']!r} must be a non-empty string")
    cfg["in_channels"] = _check_positive_int(f"{source}: in_channels", cfg["in_channels"])
    cfg["num_classes"] = _check_positive_int(f"{source}: num_classes", cfg["num_classes"])
    step = cfg["flops_step"]
    if not isinstance(step, numbers.Real) or isinstance(step, bool) or not step > 0:
        raise ValueError(f"{source}: flops_step = {step!r} must be a positive number (MFLOPs)")
    cfg["flops_step"] = float(step)
    cfg["resolution"] = _check_choices(f"{source}: resolution", cfg["resolution"])

    stem = _check_keys(f"{source}: stem", cfg["stem"], _STEM_KEYS)
    stem["width"] = _check_choices(f"{source}: stem.width", stem["width"])
    stem["kernel_size"] = _check_choices(f"{source}: stem.kernel_size", stem["kernel_size"], odd=True)
    if len(stem["kernel_size"]) != 1:
        raise ValueError(f"{source}: stem.kernel_size = {stem['kernel_size']} must be one value")
    stem["kernel_size"] = stem["kernel_size"][0]
    stem["stride"] = _check_one_of(f"{source}: stem.stride", stem["stride"], (1, 2))
    stem["act"] = _check_one_of(f"{source}: stem.act", stem["act"], ACTIVATIONS)
    cfg["stem"] = stem

    if not isinstance(cfg["stages"], list) or not cfg["stages"]:
        raise ValueError(f"{source}: stages must be a non-empty list of stages")
    stages = []
    for i, raw_stage in enumerate(cfg["stages"]):
        where = f"{source}: stages[{i}]"
        stage = _check_keys(where, raw_stage, _STAGE_KEYS)
        stage["name"] = str(stage["name"] or f"mb{i + 1}")
        for key in ("width", "depth", "expand_ratio"):
            stage[key] = _check_choices(f"{where}.{key}", stage[key])
        stage["kernel_size"] = _check_choices(f"{where}.kernel_size", stage["kernel_size"], odd=True)
        stage["stride"] = _check_one_of(f"{where}.stride", stage["stride"], (1, 2))
        stage["se"] = _check_one_of(f"{where}.se", stage["se"], (False, True))
        stage["act"] = _check_one_of(f"{where}.act", stage["act"], ACTIVATIONS)
        stages.append(stage)
    cfg["stages"] = stages

    head = _check_keys(f"{source}: head", cfg["head"], _HEAD_KEYS)
    head["width"] = _check_choices(f"{source}: head.width", head["width"])
    head["expand_ratio"] = _check_positive_int(f"{source}: head.expand_ratio", head["expand_ratio"])
    head["act"] = _check_one_of(f"{source}: head.act", head["act"], ACTIVATIONS)
    cfg["head"] = head
    return cfg


def packaged_spaces() -> list[str]:
    """Names of the search spaces shipped in nasops/configs/."""
    root = resources.files("nasops") / "configs"
    names = []
    for entry in root.iterdir():
        if entry.name.endswith(".yaml"):
            doc = yaml.safe_load(entry.read_text())
            if isinstance(doc, dict) and "stages" in doc:
                names.append(entry.name[: -len(".yaml")])
    return sorted(names)


class SearchSpace:
    """A validated search space with its flat encoding and C++ cost model.

    ``SearchSpace.load("attentive_nas")`` loads a packaged space; a path loads a YAML file.
    """

    def __init__(self, config: Mapping, source: str = "<dict>"):
        self.config = _check_config(config, source)
        self._core = _C.Space(self.config, cost_tables(self.config))
        self.dim_names = [name for name, _ in self._core.dims()]
        self.choices = [np.asarray(c, dtype=np.int64) for _, c in self._core.dims()]
        self.dim = len(self.dim_names)
        self.sizes = np.array([len(c) for c in self.choices])  # choices per dimension
        self._table = np.zeros((self.dim, self.sizes.max()), dtype=np.int64)  # choices, padded
        for d, c in enumerate(self.choices):
            self._table[d, :len(c)] = c
        # where each Arch field lies in the flat encoding, read off the core's dimension names
        # ("resolution", "width[0]", ...): the core's Space is the one home of the layout
        fields = [name.split("[")[0] for name in self.dim_names]
        self._slices = {f: slice(fields.index(f), len(fields) - fields[::-1].index(f))
                        for f in ARCH_FIELDS}

    @classmethod
    def load(cls, name_or_path: str | os.PathLike, *, num_classes: int | None = None,
             in_channels: int | None = None) -> "SearchSpace":
        """A packaged space by name, or a YAML file by path; num_classes / in_channels override
        the file's values (they change the stem's and classifier's cost)."""
        text_path = os.fspath(name_or_path)
        if names_a_file(text_path):
            source, text = text_path, read_text(text_path, "search space file")
        else:
            available = packaged_spaces()
            if text_path not in available:
                raise ValueError(f"unknown search space {text_path!r}; packaged spaces: "
                                 f"{available} (or give a path to a YAML file)")
            source = f"{text_path}.yaml"
            text = (resources.files("nasops") / "configs" / source).read_text()
        raw = read_yaml_text(text, source, "search space")
        if isinstance(raw, dict):
            if num_classes is not None:
                raw["num_classes"] = num_classes
            if in_channels is not None:
                raw["in_channels"] = in_channels
        return cls(raw, source)

    # -- description ----------------------------------------------------------------------
    @property
    def core(self):
        """The compiled space (``nasops._C.Space``) this one wraps: what the sampler, the latency
        tables and extensions of the C++ core are built on."""
        return self._core

    @property
    def name(self) -> str:
        return self.config["name"]

    @property
    def num_stages(self) -> int:
        return len(self.config["stages"])

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    @property
    def in_channels(self) -> int:
        return self.config["in_channels"]

    @property
    def flops_step(self) -> float:
        return self.config["flops_step"]

    def __repr__(self) -> str:
        return (f"SearchSpace({self.name!r}, stages={self.num_stages}, dims={self.dim}, "
                f"num_classes={self.num_classes})")

    # -- architectures --------------------------------------------------------------------
    def _field_choices(self, field: str) -> list[tuple[str, np.ndarray]]:
        """(description, choices) of each entry of one Arch field."""
        names = [s["name"] for s in self.config["stages"]]
        if field == "width":
            names = ["stem"] + names + ["head"]
        start = self._slices[field].start
        return [(f"{field}[{i}] ({n})", self.choices[start + i]) for i, n in enumerate(names)]

    def validate(self, arch: Arch | Mapping) -> Arch:
        """The architecture as an Arch if every value is allowed; ValueError naming the field,
        the bad value and the allowed ones otherwise."""
        if isinstance(arch, Mapping):
            arch = Arch.from_dict(arch)
        if not isinstance(arch, Arch):
            raise TypeError(f"expected an Arch or a dict, got {type(arch).__name__}")
        allowed = self.choices[0].tolist()
        if arch.resolution not in allowed:
            raise ValueError(f"resolution = {arch.resolution} is not allowed; allowed: {allowed}")
        for field in ARCH_FIELDS[1:]:
            values = getattr(arch, field)
            entries = self._field_choices(field)
            if len(values) != len(entries):
                raise ValueError(f"{field} has {len(values)} entries; space {self.name!r} expects "
                                 f"{len(entries)} ({', '.join(e[0].split(' ')[1][1:-1] for e in entries)})")
            for value, (what, choices) in zip(values, entries):
                if value not in choices:
                    raise ValueError(f"{what} = {value} is not allowed; allowed: {choices.tolist()}")
        return arch

    def encode(self, arch: Arch | Mapping) -> np.ndarray:
        """Flat int64 vector of length ``dim`` (order in the module docstring)."""
        arch = self.validate(arch)
        vec = np.empty(self.dim, dtype=np.int64)
        for field, where in self._slices.items():
            vec[where] = getattr(arch, field)
        return vec

    def decode(self, vec) -> Arch:
        vec = self.rows(vec)
        if vec.shape[0] != 1:
            raise ValueError(f"decode takes one encoded architecture, got {vec.shape[0]}")
        v = vec[0].tolist()
        return Arch(resolution=v[0], **{f: v[where] for f, where in self._slices.items()
                                        if f != "resolution"})

    def decode_all(self, archs) -> list[Arch]:
        return [self.decode(row) for row in self.rows(archs)]

    def dim_groups(self) -> np.ndarray:
        """Per dimension of the encoding, the part of the network it belongs to: 0 the input
        resolution, 1 the stem, 2 .. S+1 the stages (width, depth, kernel size, expansion
        ratio), S+2 the head. int64 [D]."""
        groups = np.empty(self.dim, dtype=np.int64)
        for d, name in enumerate(self.dim_names):
            field, _, rest = name.partition("[")
            i = int(rest[:-1]) if rest else 0
            groups[d] = 0 if field == "resolution" else (i + 1 if field == "width" else i + 2)
        return groups

    def to_index(self, archs) -> np.ndarray:
        """Each value's position among its dimension's (sorted) choices: [N, D] int64 from
        encoded architectures [N, D] (or [D] -> [D])."""
        rows = self.rows(archs)
        index = np.stack([np.searchsorted(c, rows[:, d]) for d, c in enumerate(self.choices)], 1)
        return index[0] if np.ndim(archs) == 1 else index

    def from_index(self, index) -> np.ndarray:
        """Encoded architectures from choice positions (the inverse of :meth:`to_index`)."""
        index = np.asarray(index)
        rows = np.atleast_2d(index)
        if rows.ndim != 2 or rows.shape[1] != self.dim or rows.dtype.kind not in "iu":
            raise ValueError(f"choice positions must be an integer array [N, {self.dim}], got "
                             f"{index.dtype} {list(index.shape)}")
        if ((rows < 0) | (rows >= self.sizes)).any():
            raise ValueError(f"choice positions out of range; dimension sizes: "
                             f"{self.sizes.tolist()}")
        out = self._table[np.arange(self.dim), rows]
        return out[0] if index.ndim == 1 else out

    def min_arch(self) -> Arch:
        return self.decode(np.asarray(self._core.min_arch(), dtype=np.int64))

    def max_arch(self) -> Arch:
        return self.decode(np.asarray(self._core.max_arch(), dtype=np.int64))

    def rows(self, x, check_values: bool = True) -> np.ndarray:
        """Encoded architectures as a contiguous [N, D] int64 array (a single [D] vector becomes
        one row). TypeError for a non-integer array, ValueError for a wrong shape and, with
        check_values, for a value that is not one of its dimension's choices."""
        a = np.asarray(x)
        if a.dtype.kind not in "iu":
            raise TypeError(f"encoded architectures must be an integer array, got dtype {a.dtype}")
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or a.shape[1] != self.dim:
            raise ValueError(f"encoded architectures must have shape [{self.dim}] or "
                             f"[N, {self.dim}] for space {self.name!r}, got {list(np.shape(x))}")
        a = np.ascontiguousarray(a, dtype=np.int64)
        if check_values:
            self._core.check(a)
        return a

    def _batch(self, x) -> tuple[np.ndarray, bool]:
        """(rows, single) for an Arch, a dict, a list of them, or an encoded array."""
        if isinstance(x, (Arch, Mapping)):
            return self.encode(x)[None, :], True
        if isinstance(x, (list, tuple)) and x and isinstance(x[0], (Arch, Mapping)):
            return np.stack([self.encode(a) for a in x]), False
        rows = self.rows(x, check_values=False)  # the cost functions check
        return rows, np.ndim(x) == 1

    # -- cost -----------------------------------------------------------------------------
    def flops(self, x):
        """MFLOPs (multiply-accumulates / 1e6) of an architecture (float) or of each row of an
        [N, D] array (float64 array)."""
        rows, single = self._batch(x)
        macs = self._core.cost(rows)[0] / 1e6
        return float(macs[0]) if single else macs

    def params(self, x):
        """Millions of conv and linear weights, like :meth:`flops`."""
        rows, single = self._batch(x)
        weights = self._core.cost(rows)[1] / 1e6
        return float(weights[0]) if single else weights

    # -- sampling -------------------------------------------------------------------------
    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """n encoded architectures drawn uniformly (each dimension independently)."""
        if not is_int(n) or n < 0:
            raise ValueError(f"n = {n!r} must be a non-negative integer")
        return self._core.sample_uniform(int(n), seed64(seed))
