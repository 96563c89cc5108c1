"""Latency lookup tables: a sub-network's latency predicted as the sum of its parts' latencies,
each measured once (the once-for-all approach, Cai et al., ICLR 2020).

FLOPs are a poor proxy for latency: depthwise convolutions, squeeze-excitation and resolution cost
differently on each device. A table times each part that static sub-networks are made of, on one
device with one batch size and thread count: the stem at each resolution and width, each stage's
first block and its further blocks at each input size, width, kernel size and expansion ratio,
and the head at each input size and width, in eval mode without gradients. It keeps them in the
layout of the FLOPs cost tables (``nn.supernet.cost_tables``), so the C++ cost model sums them.

    python -m nasops.search.latency --space attentive_nas --device cpu --batch 1 --threads 1 --out table.json
    python -m nasops.search.latency --checkpoint RUN/checkpoint.pt --out RUN/latency.json
    python -m nasops.search.latency --check table.json -n 100     # predicted vs measured, end to end

The prediction is a fitted scale x the parts' sum + an offset per resolution, calibrated on
networks timed end to end against a reference network, so that the drift of a shared machine's
speed cancels (:func:`measure_networks`). A table is only valid where it was measured:
:meth:`LatencyTable.load` refuses one measured on another device, thread count or batch size
when told which the caller expects and warns otherwise, and ``--check`` (which measures here)
always refuses.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .. import _C
from ..utils.checks import check_count
from ..utils.files import write_json
from ..utils.cli import STAGES, prog as prog_name
from ..nn import Supernet
from ..space.cost import cost_tables
from ..space import SearchSpace, packaged_spaces

FORMAT = "nasops-latency-2"
FORMAT_1 = "nasops-latency-1"  # (one offset for all resolutions; still read)
WEIGHT_SEED = 0  # the random weights of the networks timed (their values do not change the time)
NETWORK_WARMUP = 3  # untimed calls of each whole network before its timed ones
CALIBRATION_SEED = 0x1A7E  # the end-to-end networks a table is calibrated on (check draws seed 0)
CALIBRATION_NETWORKS = 60  # (the fit has one scale and one offset per resolution)
NETWORK_REPEATS, NETWORK_ROUNDS = 5, 3  # timed calls per network and round; rounds
MIN_TIMED_MS = 25  # at least this much timed work per network and round (a 1 ms network timed 5
                   # times is at the mercy of one scheduler hiccup)
REFERENCE_EVERY = 4  # the reference network is timed before every 4th network and at the end
REFERENCE_SMOOTHING = 5  # running median over the reference's times (drops single hiccups)


def device_name(device: str | torch.device) -> str:
    """What a latency is measured on: "cpu: <processor model>" or "cuda: <GPU name>"."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        raise ValueError(f"device {str(device)!r} is not supported; allowed: cpu, cuda")
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    return f"cpu: {model}"


@contextlib.contextmanager
def using_threads(n: int):
    """torch's intra-op threads set to `n` inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def time_module(fn, x: torch.Tensor, repeats: int = 20, warmup: int = 5) -> float:
    """Median wall time of fn(x) in milliseconds, after `warmup` calls (on CUDA, synchronised
    around each call)."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(warmup):
        fn(x)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


class LatencyTable:
    """Predicted latency (milliseconds) of sub-networks of `space`: a cost for
    :func:`nasops.search.evolve` (``cost=table``) and ``python -m nasops.search --constraint
    latency``. Build one with :meth:`measure`, or :meth:`load` a saved one. `tables` are in the
    layout of ``cost_tables`` with each part's nanoseconds in the first column. The prediction is
    ``scale`` x the sum of the parts + the offset of the sub-network's resolution
    (``offsets_ms``), fitted on networks timed end to end (:meth:`fit`)."""

    unit = "ms"

    def __init__(self, space: SearchSpace, tables: dict, device: str, threads: int, batch: int,
                 settings: dict | None = None, scale: float = 1.0,
                 offsets_ms: dict | None = None):
        self.space, self.tables = space, tables
        self.device, self.threads, self.batch = device, threads, batch
        self.settings = dict(settings or {})
        self.scale = float(scale)
        self.offsets_ms = {int(r): float((offsets_ms or {}).get(r, 0.0))
                           for r in space.config["resolution"]}
        # the reference network timed alongside every end-to-end measurement, and its time
        # while the table was made: end-to-end times are expressed at that speed (see
        # measure_networks); set by measure and load
        self.reference: dict | None = None
        self._core = _C.Space(space.config, tables)  # (checks the tables' shapes)

    @property
    def reference_ms(self) -> float | None:
        return None if self.reference is None else float(self.reference["ms"])

    def parts(self, archs) -> np.ndarray:
        """The sum of each sub-network's parts' measured milliseconds (float64 [N])."""
        rows = self.space.rows(np.atleast_2d(np.asarray(archs)), check_values=False)
        return self._core.cost(rows)[0] / 1e6

    def __call__(self, archs) -> np.ndarray:
        """Predicted milliseconds of each encoded architecture [N, D] (float64 [N]):
        scale x the sum of its parts + its resolution's offset (see :meth:`fit`)."""
        archs = np.atleast_2d(np.asarray(archs))
        offsets = np.array([self.offsets_ms.get(int(r), 0.0) for r in archs[:, 0]])
        return self.scale * self.parts(archs) + offsets

    @property
    def num_parts(self) -> int:
        """How many parts the table timed (entries of every table)."""
        return sum(len(t) for t in _flat(self.tables))

    def __repr__(self) -> str:
        return (f"LatencyTable({self.space.name!r}, {self.device!r}, threads={self.threads}, "
                f"batch={self.batch})")

    @classmethod
    def measure(cls, space: SearchSpace, device: str = "cpu", batch: int = 1, threads: int = 1,
                repeats: int = 20, warmup: int = 5, calibrate: int = CALIBRATION_NETWORKS,
                progress: bool = False) -> "LatencyTable":
        """Times every part of every sub-network of `space` (the median of `repeats` calls after
        `warmup`) with `threads` CPU threads at batch size `batch`. Then times `calibrate` random
        sub-networks end to end (:func:`measure_networks`; seed `CALIBRATION_SEED`, not the
        seed :func:`check` draws with) and fits the prediction to them (:meth:`fit`): a part
        timed alone runs with its weights and input already in the caches and without the rest
        of the network's calls around it, so a whole network runs slower than its parts added
        up, and by how much depends on the resolution (measured in the docs: Search). 0 keeps
        scale 1 and no offsets. The weights are random (seed `WEIGHT_SEED`): their values do not
        change the time."""
        batch, threads = check_count("batch", batch), check_count("threads", threads)
        repeats, warmup = check_count("repeats", repeats), check_count("warmup", warmup, 0)
        calibrate = check_count("calibrate", calibrate, 0)
        name = device_name(device)
        total = sum(len(t) for t in _flat(cost_tables(space.config)))
        with tqdm(total=total, desc=f"latency table ({name}, {threads} threads)",
                  disable=not progress) as bar:
            timer = _PartTimer(space, torch.device(device), batch, threads, (repeats, warmup), bar)
            tables = cost_tables(space.config, timer)
        settings = {"protocol": protocol(repeats, warmup, calibrate),
                    "environment": environment(device)}
        table = cls(space, tables, name, threads, batch, settings)
        if calibrate:
            archs = space.sample(calibrate, seed=CALIBRATION_SEED)
            timed = measure_networks(space, archs, device, batch, threads, progress=progress)
            table.reference = {"encoding": reference_arch(space).tolist(),
                               "ms": timed.reference_ms}
            table.fit(archs, timed.ms)
        return table

    def fit(self, archs, whole_ms) -> None:
        """Fits the prediction to the end-to-end milliseconds `whole_ms` of `archs` by least
        squares: one scale for the sum of the parts and one offset per resolution (a resolution
        no calibration network has gets the offset of a single line through all of them; with
        fewer than two networks or no spread in the parts: the median ratio, no offsets)."""
        archs = np.atleast_2d(np.asarray(archs))
        parts, whole_ms = self.parts(archs), np.asarray(whole_ms, dtype=np.float64)
        res = archs[:, 0]
        present = sorted(set(int(r) for r in res))
        scale, offsets = float(np.median(whole_ms / parts)), {}
        if len(archs) >= len(present) + 1 and np.ptp(parts) > 0:
            line_scale, line_offset = np.polyfit(parts, whole_ms, 1)
            X = np.column_stack([parts] + [(res == r).astype(float) for r in present])
            coef = np.linalg.lstsq(X, whole_ms, rcond=None)[0]
            if coef[0] > 0:  # (else noise swamped the spread of the calibration networks)
                scale = float(coef[0])
                offsets = {r: float(line_offset) for r in self.space.config["resolution"]}
                offsets.update({r: float(c) for r, c in zip(present, coef[1:])})
            elif line_scale > 0:
                scale = float(line_scale)
                offsets = {r: float(line_offset) for r in self.space.config["resolution"]}
        self.scale = scale
        self.offsets_ms = {int(r): offsets.get(int(r), 0.0)
                           for r in self.space.config["resolution"]}

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """JSON: the format, the space, where and how it was measured (device, threads, batch,
        protocol, torch version), the fitted model and the tables (nanoseconds)."""
        doc = {"format": FORMAT, "space": self.space.config, "device": self.device,
               "threads": self.threads, "batch": self.batch, "settings": self.settings,
               "scale": self.scale,
               "offsets_ms": {str(r): v for r, v in self.offsets_ms.items()},
               "reference": self.reference,
               "tables": {"stem": self.tables["stem"][:, 0].tolist(),
                          "head": self.tables["head"][:, 0].tolist(),
                          "first": [t[:, 0].tolist() for t in self.tables["first"]],
                          "rest": [t[:, 0].tolist() for t in self.tables["rest"]]}}
        write_json(path, doc, indent=None)

    @classmethod
    def load(cls, path: str, space: SearchSpace | None = None, device: str | None = None,
             threads: int | None = None, batch: int | None = None) -> "LatencyTable":
        """A saved table. With `space`, it must be the space the table was measured for; with
        `device` ("cpu", "cuda" or a :func:`device_name`), `threads` or `batch`, the table must
        have been measured there, so: ValueError naming both otherwise. Without `device`, a
        table measured on another device or with another torch version than here loads with a
        warning (a table made on the target device may be searched elsewhere)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"latency table {path!r} does not exist")
        try:
            with open(path) as f:
                doc = json.load(f)
            if not isinstance(doc, dict) or doc.get("format") not in (FORMAT, FORMAT_1):
                raise ValueError(f"format is not {FORMAT!r}")
            table_space = SearchSpace(doc["space"], source=path)
            ns = lambda v: np.stack([np.asarray(v, dtype=np.int64),  # noqa: E731
                                     np.zeros(len(v), dtype=np.int64)], 1)
            t = doc["tables"]
            tables = {"stem": ns(t["stem"]), "head": ns(t["head"]),
                      "first": [ns(v) for v in t["first"]], "rest": [ns(v) for v in t["rest"]]}
            if doc["format"] == FORMAT_1:  # (one offset for every resolution, no reference)
                offsets = {r: float(doc["offset_ms"]) for r in table_space.config["resolution"]}
            else:
                offsets = {int(r): float(v) for r, v in doc["offsets_ms"].items()}
            table = cls(table_space, tables, str(doc["device"]), int(doc["threads"]),
                        int(doc["batch"]), doc.get("settings"), float(doc["scale"]), offsets)
            table.reference = doc.get("reference")
            if table.reference is not None:
                float(table.reference["ms"])
                table_space.rows(np.asarray([table.reference["encoding"]]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{path} is not a nasops latency table: {e}") from None
        if space is not None and space.config != table.space.config:
            differ = ", ".join(f"{k} {table.space.config.get(k)!r} there, {space.config.get(k)!r} "
                               f"here" for k in sorted(set(space.config) | set(table.space.config))
                               if space.config.get(k) != table.space.config.get(k))
            raise ValueError(f"latency table {path} was measured for search space "
                             f"{table.space.name!r} with another configuration ({differ}); this "
                             f"search is over {space.name!r} (measure a table for a run's own "
                             f"space with --checkpoint RUN/checkpoint.pt)")
        if space is not None:
            table.space = space
        expected = {"device": None if device is None else (
                        device if ":" in str(device) else device_name(device)),
                    "threads": threads, "batch": batch}
        for key, want in expected.items():
            have = getattr(table, key)
            if want is not None and want != have:
                raise ValueError(f"latency table {path} was measured with {key} {have!r}, but "
                                 f"{key} {want!r} is expected here: latencies do not carry over; "
                                 f"measure a table with python -m nasops.search.latency")
        if device is None:
            table.warn_if_elsewhere(path)
        return table

    @property
    def kind(self) -> str:
        """The torch device type the table was measured on: "cpu" or "cuda"."""
        return "cuda" if self.device.startswith("cuda") else "cpu"

    def elsewhere_device(self) -> str | None:
        """This machine's device of the table's kind, if it is not the one the table was
        measured on ("no GPU" for a CUDA table here without one); None if it is."""
        here = device_name(self.kind) if self.kind == "cpu" or torch.cuda.is_available() \
            else "no GPU"
        return None if here == self.device else here

    def elsewhere(self) -> list[str]:
        """How this machine differs from where the table was measured (device, torch version):
        empty if it does not."""
        here = self.elsewhere_device()
        made = self.settings.get("environment", {}).get("torch", self.settings.get("torch"))
        differences = []
        if here is not None:
            differences.append(f"measured on {self.device!r}, this machine is {here!r}")
        if made is not None and made != torch.__version__:
            differences.append(f"measured with torch {made}, this is torch {torch.__version__}")
        return differences

    def warn_if_elsewhere(self, path: str) -> None:
        differences = self.elsewhere()
        if differences:
            warnings.warn(f"latency table {path}: {'; '.join(differences)}: its predictions "
                          f"hold where it was measured, not necessarily here", stacklevel=3)


def _flat(tables: dict) -> list:
    return [tables["stem"], tables["head"], *tables["first"], *tables["rest"]]


class _PartTimer:
    """The cost function of :func:`~nasops.space.cost.cost_tables` that times each part (stem,
    block, head) as a static module on a random input: (nanoseconds, 0)."""

    def __init__(self, space: SearchSpace, device: torch.device, batch: int, threads: int,
                 timing: tuple[int, int], bar):
        torch.manual_seed(WEIGHT_SEED)
        self.net = Supernet(space).eval().to(device)
        self.space, self.cfg, self.device = space, space.config, device
        self.batch, self.threads, self.timing, self.bar = batch, threads, timing, bar

    def static(self, resolution, stem_width, last_width, head_width):
        """A static sub-network with these widths (for its stem or its head)."""
        arch = self.space.max_arch()
        arch.resolution, arch.width[0] = resolution, stem_width
        arch.width[-2], arch.width[-1] = last_width, head_width
        return self.net.extract(arch).eval().to(self.device)

    def block(self, s):
        """The block module these sizes describe, and its input's (channels, size); None for a
        combination no sub-network runs."""
        cfg = self.cfg
        stage, blocks = cfg["stages"][s["stage"]], self.net.stages[s["stage"]]
        prev = (cfg["stages"][s["stage"] - 1] if s["stage"] else cfg["stem"])["width"]
        # a further block (stride 1, same width) is timed on the stage's second module (sized
        # for the stage's widths), the first block on the first; without a second module
        # (maximum depth 1) a further block never runs
        further = s["stride"] == 1 and s["c_in"] == s["c_out"]
        if further and len(blocks) > 1:
            block = blocks[1]
        elif s["stride"] == stage["stride"] and s["c_in"] in prev:
            block = blocks[0]
        else:
            return None, None
        return block.export(s["c_in"], s["c_out"], s["kernel"], s["expand"]).eval(), \
            (s["c_in"], s["n"])

    def __call__(self, cfg, kind, **s):
        if kind == "stem":
            module = self.static(s["resolution"], s["width"], cfg["stages"][-1]["width"][0],
                                 cfg["head"]["width"][0]).stem
            shape = (cfg["in_channels"], s["resolution"])
        elif kind == "block":
            module, shape = self.block(s)
        else:
            module = self.static(cfg["resolution"][0], cfg["stem"]["width"][0], s["c"],
                                 s["head_width"]).classify
            shape = (s["c"], s["n"])
        self.bar.update()
        if module is None:
            return 0, 0
        x = torch.randn(self.batch, shape[0], shape[1], shape[1], device=self.device)
        with using_threads(self.threads):
            ms = time_module(module, x, *self.timing)
        return int(round(ms * 1e6)), 0


def reference_arch(space: SearchSpace) -> np.ndarray:
    """The network timed alongside every end-to-end measurement: the smallest sub-network (the
    cheapest to time; a shared machine speeds up and slows down for all networks alike)."""
    return space.encode(space.min_arch())


def protocol(repeats: int, warmup: int, calibrate: int) -> dict:
    """How a table's times were taken, recorded in it."""
    return {"parts": {"warmup": warmup, "repeats": repeats, "statistic": "median",
                      "module": "each part as a static module, eval mode, no gradients"},
            "networks": {"warmup": NETWORK_WARMUP, "repeats": NETWORK_REPEATS,
                         "min_timed_ms": MIN_TIMED_MS, "rounds": NETWORK_ROUNDS,
                         "order": "interleaved: each round times every network once",
                         "statistic": "median over rounds of each round's median", "drift": f"each time divided by the reference "
                         f"network's, timed before every {REFERENCE_EVERY}th network, "
                         f"smoothed (running median of {REFERENCE_SMOOTHING}) and "
                         f"interpolated, times the reference's time when the table was made"},
            "calibration": {"networks": calibrate, "seed": CALIBRATION_SEED,
                            "model": "scale x sum of the parts + an offset per resolution, "
                                     "least squares"},
            "threads": "torch.set_num_threads while timing", "weights_seed": WEIGHT_SEED}


def environment(device: str | torch.device) -> dict:
    """What else a latency depends on, recorded in a table."""
    from .. import __version__
    env = {"torch": torch.__version__, "nasops": __version__, "python": platform.python_version()}
    if torch.device(device).type == "cpu":
        env["isa"] = _C.cpu_isa()
    return env


@dataclass
class Timings:
    """End-to-end times of N networks (milliseconds): `ms` corrected for the machine's drift and
    expressed at the reference network's speed `reference_ms` (see :func:`measure_networks`),
    `passes` the same per round [rounds, N], `raw_ms` the uncorrected median over rounds, and
    `reference_now_ms` the reference's median during this measurement."""
    ms: np.ndarray
    passes: np.ndarray
    raw_ms: np.ndarray
    reference_ms: float
    reference_now_ms: float
    references: np.ndarray | None = None  # [rounds, K]: the reference's times in each round
    raw: np.ndarray | None = None         # [rounds, N]: uncorrected times per round


@torch.no_grad()
def measure_networks(space: SearchSpace, archs, device: str = "cpu", batch: int = 1,
                     threads: int = 1, rounds: int = NETWORK_ROUNDS,
                     reference_ms: float | None = None, progress: bool = False) -> Timings:
    """End-to-end latency of each sub-network extracted as a static network: what a table
    predicts. `rounds` passes over all of them, NETWORK_REPEATS timed calls each after
    NETWORK_WARMUP (more if those take under MIN_TIMED_MS), the median over the rounds of each
    pass's median (so that a slow spell falls on no network alone).

    A shared machine's speed drifts by several percent over seconds to minutes (measured in the
    docs: Search), so the reference network (:func:`reference_arch`) is timed before every
    REFERENCE_EVERY-th network and after the last: each network's time is divided by the
    reference's (a running median over its timings, interpolated between the two around the
    network) and multiplied by `reference_ms` (default: the reference's median over this
    measurement). Given the table's reference time, times measured at different moments
    compare."""
    torch.manual_seed(WEIGHT_SEED)
    net = Supernet(space).eval()
    rows = space.rows(np.asarray(archs))
    raw = np.zeros((rounds, len(rows)))
    ratio = np.zeros((rounds, len(rows)))
    ref_times = []
    reference = net.extract(reference_arch(space)).eval().to(device)
    ref_res = int(space.min_arch().resolution)
    ref_x = torch.randn(batch, space.in_channels, ref_res, ref_res, device=device)
    bar = tqdm(total=rounds * len(rows), desc="end-to-end latency", disable=not progress)
    with using_threads(threads):
        time_module(reference, ref_x, 1, 2 * NETWORK_WARMUP)  # (threads and caches awake)
        for r in range(rounds):
            at, ref = [], []
            for i, arch in enumerate(rows):
                if i % REFERENCE_EVERY == 0:
                    at.append(i)
                    ref.append(_time_network(reference, ref_x))
                static = net.extract(arch).eval().to(device)
                res = int(arch[0])
                x = torch.randn(batch, space.in_channels, res, res, device=device)
                raw[r, i] = _time_network(static, x)
                bar.update()
            at.append(len(rows))
            ref.append(_time_network(reference, ref_x))
            speed = _running_median(np.array(ref), REFERENCE_SMOOTHING)
            ratio[r] = raw[r] / np.interp(np.arange(len(rows)) + 0.5, at, speed)
            ref_times += ref
    bar.close()
    now = float(np.median(ref_times))
    level = now if reference_ms is None else float(reference_ms)
    passes = ratio * level
    return Timings(np.median(passes, axis=0), passes, np.median(raw, axis=0), level, now,
                   np.array(ref_times).reshape(rounds, -1), raw)


def _time_network(fn, x) -> float:
    """time_module after NETWORK_WARMUP calls, with at least NETWORK_REPEATS timed calls and at
    least MIN_TIMED_MS of them (the first call after the warm-up tells how many that takes)."""
    first = time_module(fn, x, 1, NETWORK_WARMUP)
    repeats = max(NETWORK_REPEATS, math.ceil(MIN_TIMED_MS / max(first, 1e-3)))
    return time_module(fn, x, min(repeats, 200), 0)


def _running_median(values: np.ndarray, window: int) -> np.ndarray:
    """A running median that keeps a steady drift: the ends are padded by reflecting the series
    through its end points, so a linear trend comes out unchanged while a single outlier inside
    it is dropped."""
    half = window // 2
    if len(values) <= half:
        return values.copy()
    padded = np.concatenate([2 * values[0] - values[half:0:-1], values,
                             2 * values[-1] - values[-2:-half - 2:-1]])
    return np.array([np.median(padded[i:i + window]) for i in range(len(values))])


def measurer(table: LatencyTable, skip_hint: str | None = None):
    """A function from encodings [N, D] to their end-to-end milliseconds measured here as the
    table was (device, threads, batch; at the table's reference speed). ValueError if the table
    was measured on another device (`skip_hint`: the option that does without measuring)."""
    device, here = table.kind, table.elsewhere_device()
    if here is not None:
        hint = f" (or pass {skip_hint})" if skip_hint else ""
        raise ValueError(f"the latency table was measured on {table.device!r}; this machine is "
                         f"{here!r}: latencies measured here would not compare; measure a table "
                         f"here with python -m nasops.search.latency{hint}")

    def measure(archs, **kw):
        return measure_networks(table.space, archs, device, table.batch, table.threads,
                                reference_ms=table.reference_ms, **kw).ms
    return measure


def error_summary(predicted, measured) -> dict:
    """How far `predicted` is from `measured`, relative (predicted / measured - 1): the share
    within +-10%, the median and 90th percentile of |error|, the mean error."""
    error = np.asarray(predicted, dtype=np.float64) / np.asarray(measured, dtype=np.float64) - 1
    return {"within_10pct": float((np.abs(error) <= 0.1).mean()),
            "median_abs": float(np.median(np.abs(error))),
            "p90_abs": float(np.quantile(np.abs(error), 0.9)), "mean": float(error.mean())}


def check(table: LatencyTable, n: int = 100, seed: int = 0,
          rounds: int = NETWORK_ROUNDS, retest: bool = True, progress: bool = False) -> dict:
    """Predicted vs measured end-to-end latency of `n` random sub-networks, here (the table must
    have been measured on this device: otherwise ValueError). With `retest`, the same networks
    are measured a second time the same way: how far two measurements of one network differ is
    the floor under any prediction's error. Relative error = predicted / measured - 1."""
    measurer(table)  # (refuses another device)
    device = table.kind
    archs = table.space.sample(check_count("n", n), seed=seed)
    measure = lambda: measure_networks(table.space, archs, device, table.batch,  # noqa: E731
                                       table.threads, rounds, table.reference_ms,
                                       progress=progress)
    first = measure()
    predicted = table(archs)
    result = {"n": n, "rounds": rounds, "repeats": NETWORK_REPEATS, "device": table.device,
              "threads": table.threads, "batch": table.batch, "scale": table.scale,
              "offsets_ms": {str(r): v for r, v in table.offsets_ms.items()},
              "error": error_summary(predicted, first.ms),
              "error_raw": error_summary(predicted, first.raw_ms),
              "error_parts_only": error_summary(table.parts(archs), first.ms),
              "reference_ms": first.reference_ms, "reference_now_ms": first.reference_now_ms,
              "encodings": archs.tolist(), "mflops": table.space.flops(archs).tolist(),
              "predicted_ms": predicted.tolist(), "measured_ms": first.ms.tolist(),
              "measured_raw_ms": first.raw_ms.tolist()}
    if retest:
        second = measure()
        result["retest"] = error_summary(second.ms, first.ms)
        result["retest_raw"] = error_summary(second.raw_ms, first.raw_ms)
        result["retest_ms"] = second.ms.tolist()
    return result


def _pct(summary: dict) -> str:
    return (f"{100 * summary['within_10pct']:.0f}% within +-10%, median |error| "
            f"{100 * summary['median_abs']:.1f}%, 90th percentile {100 * summary['p90_abs']:.1f}%")


def check_report(table: LatencyTable, result: dict) -> str:
    """The lines `--check` prints."""
    lines = [f"{table.space.name}, {table.device}, {table.threads} thread"
             f"{'s' * (table.threads > 1)}, batch {table.batch}: predicted vs measured end-to-end "
             f"latency of {result['n']} random sub-networks:",
             f"  {_pct(result['error'])}, mean {100 * result['error']['mean']:+.1f}%",
             f"  the parts' sum alone: {_pct(result['error_parts_only'])}",
             f"  without the drift correction: {_pct(result['error_raw'])} (the reference ran at "
             f"{result['reference_now_ms']:.2f} ms now, {result['reference_ms']:.2f} ms when the "
             f"table was made)"]
    if "retest" in result:
        lines.append(f"  measurement noise (the same networks measured again): "
                     f"{_pct(result['retest'])}; without the drift correction: "
                     f"{_pct(result['retest_raw'])}")
    return "\n".join(lines)


def main(argv=None, prog=None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or prog_name("latency"),
        description="Measure a latency lookup table for a search space (every part of every "
                    "sub-network, timed on this device), or check one against end-to-end "
                    "measurements of random sub-networks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m nasops.search.latency --space attentive_nas --device cpu --batch 1 "
               "--threads 1 --out table.json\n  python -m nasops.search.latency --checkpoint "
               "RUN/checkpoint.pt --out RUN/latency.json\n  python -m nasops.search.latency "
               "--check table.json -n 100"
               "\n\n" + STAGES)
    parser.add_argument("--space", help=f"search space: {', '.join(packaged_spaces())} or a "
                                        f"YAML file")
    parser.add_argument("--checkpoint", help="RUN/checkpoint.pt of nasops-train: measure for "
                                             "the run's space (its input channels and classes "
                                             "included) instead of --space")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads while timing")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per part (median)")
    parser.add_argument("--out", help="table to write (JSON)")
    parser.add_argument("--check", metavar="TABLE", help="compare TABLE's predictions with "
                                                         "end-to-end measurements here")
    parser.add_argument("-n", type=int, default=100, help="sub-networks for --check")
    parser.add_argument("--check-out", help="with --check: write the comparison here (JSON)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.check:
            table = LatencyTable.load(args.check)
            result = check(table, args.n, progress=not args.no_progress)
            print(check_report(table, result))
            if args.check_out:
                write_json(args.check_out, result, indent=None)
                print(f"wrote {args.check_out}")
            return 0
        if bool(args.space) == bool(args.checkpoint) or not args.out:
            raise ValueError("give --space or --checkpoint (one of them) and --out to measure a "
                             "table, or --check TABLE")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available here")
        if args.checkpoint:
            from ..nn.checkpoint import load_checkpoint
            space = SearchSpace(load_checkpoint(args.checkpoint)["space"], source=args.checkpoint)
        else:
            space = SearchSpace.load(args.space)
        start = time.perf_counter()
        table = LatencyTable.measure(space, args.device, args.batch, args.threads, args.repeats,
                                     progress=not args.no_progress)
        table.save(args.out)
        print(f"measured {table.num_parts} parts of {space.name} on "
              f"{table.device} ({table.threads} thread{'s' * (table.threads > 1)}, batch "
              f"{table.batch}) and calibrated on {CALIBRATION_NETWORKS} whole networks in "
              f"{time.perf_counter() - start:.0f} s; wrote {args.out}")
    except (ValueError, OSError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
