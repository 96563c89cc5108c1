"""Latency lookup tables: a sub-network's latency predicted as the sum of its parts' latencies,
each measured once (the once-for-all approach, Cai et al., ICLR 2020).

FLOPs are a poor proxy for latency: depthwise convolutions, squeeze-excitation and resolution cost
differently on each device. A table times each part that static sub-networks are made of, on one
device with one batch size and thread count: the stem at each resolution and width, each stage's
first block and its further blocks at each input size, width, kernel size and expansion ratio,
and the head at each input size and width, in eval mode without gradients. It keeps them in the
layout of the FLOPs cost tables (``nn.supernet.cost_tables``), so the C++ cost model sums them.

    python -m nasops.search.latency --space attentive_nas --device cpu --batch 1 --threads 1 --out table.json
    python -m nasops.search.latency --check table.json -n 100     # predicted vs measured, end to end

A table is only valid where it was measured: :meth:`LatencyTable.load` refuses one measured on
another device, thread count or batch size when told which the caller expects, and ``--check``
(which measures here) always does.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

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

FORMAT = "nasops-latency-1"
WEIGHT_SEED = 0  # the random weights of the networks timed (their values do not change the time)
NETWORK_WARMUP = 3  # untimed calls of each whole network before its timed ones
CALIBRATION_SEED = 0x1A7E  # the end-to-end networks a table is calibrated on (check draws seed 0)


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
    layout of ``cost_tables`` with each part's nanoseconds in the first column."""

    unit = "ms"

    def __init__(self, space: SearchSpace, tables: dict, device: str, threads: int, batch: int,
                 settings: dict | None = None, scale: float = 1.0, offset_ms: float = 0.0):
        self.space, self.tables = space, tables
        self.device, self.threads, self.batch = device, threads, batch
        self.settings = dict(settings or {})
        self.scale, self.offset_ms = float(scale), float(offset_ms)
        self._core = _C.Space(space.config, tables)  # (checks the tables' shapes)

    def parts(self, archs) -> np.ndarray:
        """The sum of each sub-network's parts' measured milliseconds (float64 [N])."""
        rows = self.space.rows(np.atleast_2d(np.asarray(archs)), check_values=False)
        return self._core.cost(rows)[0] / 1e6

    def __call__(self, archs) -> np.ndarray:
        """Predicted milliseconds of each encoded architecture [N, D] (float64 [N]):
        scale x the sum of its parts + offset_ms (see :meth:`measure`)."""
        return self.scale * self.parts(archs) + self.offset_ms

    @property
    def num_parts(self) -> int:
        """How many parts the table timed (entries of every table)."""
        return sum(len(t) for t in _flat(self.tables))

    def __repr__(self) -> str:
        return (f"LatencyTable({self.space.name!r}, {self.device!r}, threads={self.threads}, "
                f"batch={self.batch})")

    @classmethod
    def measure(cls, space: SearchSpace, device: str = "cpu", batch: int = 1, threads: int = 1,
                repeats: int = 20, warmup: int = 5, calibrate: int = 20,
                progress: bool = False) -> "LatencyTable":
        """Times every part of every sub-network of `space` (the median of `repeats` calls after
        `warmup`) with `threads` CPU threads at batch size `batch`. Then times `calibrate` random
        sub-networks end to end (:func:`measure_networks`; seed `CALIBRATION_SEED`, not the
        seed :func:`check` draws with) and fits end-to-end = scale x the sum of the parts +
        offset by least squares: a part timed alone runs with its weights and input already in
        the caches and without the rest of the network's calls around it, and the whole network
        runs slower than its parts added up (measured in the docs: Search); 0 keeps scale 1,
        offset 0. The weights are random (seed `WEIGHT_SEED`): their values do not change the
        time."""
        batch, threads = check_count("batch", batch), check_count("threads", threads)
        repeats, warmup = check_count("repeats", repeats), check_count("warmup", warmup, 0)
        calibrate = check_count("calibrate", calibrate, 0)
        name = device_name(device)
        total = sum(len(t) for t in _flat(cost_tables(space.config)))
        with tqdm(total=total, desc=f"latency table ({name}, {threads} threads)",
                  disable=not progress) as bar:
            timer = _PartTimer(space, torch.device(device), batch, threads, (repeats, warmup), bar)
            tables = cost_tables(space.config, timer)
        table = cls(space, tables, name, threads, batch,
                    {"repeats": repeats, "warmup": warmup, "seed": WEIGHT_SEED,
                     "calibrate": calibrate, "torch": torch.__version__})
        if calibrate:
            archs = space.sample(calibrate, seed=CALIBRATION_SEED)
            whole, _ = measure_networks(space, archs, device, batch, threads, progress=progress)
            table.fit(archs, whole)
        return table

    def fit(self, archs, whole_ms) -> None:
        """Sets scale and offset so that scale x (sum of the parts) + offset fits the measured
        end-to-end latencies `whole_ms` of `archs` (least squares; one network, or no spread in
        the parts: the median ratio and no offset)."""
        parts = self.parts(archs)
        if len(archs) >= 2 and np.ptp(parts) > 0:
            scale, offset = np.polyfit(parts, whole_ms, 1)
        else:
            scale, offset = float(np.median(whole_ms / parts)), 0.0
        if scale <= 0:  # (noise swamped the spread of the calibration networks)
            scale, offset = float(np.median(whole_ms / parts)), 0.0
        self.scale, self.offset_ms = float(scale), float(offset)

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """JSON: the format, the space, where it was measured and the tables (nanoseconds)."""
        doc = {"format": FORMAT, "space": self.space.config, "device": self.device,
               "threads": self.threads, "batch": self.batch, "settings": self.settings,
               "scale": self.scale, "offset_ms": self.offset_ms,
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
        have been measured there, so: ValueError naming both otherwise."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"latency table {path!r} does not exist")
        try:
            with open(path) as f:
                doc = json.load(f)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT!r}")
            table_space = SearchSpace(doc["space"], source=path)
            ns = lambda v: np.stack([np.asarray(v, dtype=np.int64),  # noqa: E731
                                     np.zeros(len(v), dtype=np.int64)], 1)
            t = doc["tables"]
            tables = {"stem": ns(t["stem"]), "head": ns(t["head"]),
                      "first": [ns(v) for v in t["first"]], "rest": [ns(v) for v in t["rest"]]}
            table = cls(table_space, tables, str(doc["device"]), int(doc["threads"]),
                        int(doc["batch"]), doc.get("settings"), float(doc["scale"]),
                        float(doc["offset_ms"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{path} is not a nasops latency table: {e}") from None
        if space is not None and space.config != table.space.config:
            raise ValueError(f"latency table {path} was measured for search space "
                             f"{table.space.name!r} with another configuration; this search "
                             f"is over {space.name!r}")
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
        return table


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


@torch.no_grad()
def measure_networks(space: SearchSpace, archs, device: str = "cpu", batch: int = 1,
                     threads: int = 1, repeats: int = 10, rounds: int = 3,
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """End-to-end latency (milliseconds) of each sub-network extracted as a static network: what
    a table predicts. `rounds` passes over all of them, `repeats` timed calls each. Returns the
    median over the rounds of each pass's median (so that a slow spell of a shared machine does
    not fall on one network alone), [N], and every pass's median, [rounds, N]."""
    torch.manual_seed(WEIGHT_SEED)
    net = Supernet(space).eval()
    rows = space.rows(np.asarray(archs))
    times = np.zeros((rounds, len(rows)))
    bar = tqdm(total=rounds * len(rows), desc="end-to-end latency", disable=not progress)
    for r in range(rounds):
        for i, arch in enumerate(rows):
            static = net.extract(arch).eval().to(device)
            res = int(arch[0])
            x = torch.randn(batch, space.in_channels, res, res, device=device)
            with using_threads(threads):
                times[r, i] = time_module(static, x, repeats, NETWORK_WARMUP)
            bar.update()
    bar.close()
    return np.median(times, axis=0), times


def check(table: LatencyTable, n: int = 100, seed: int = 0, repeats: int = 10, rounds: int = 3,
          progress: bool = False) -> dict:
    """Predicted vs measured end-to-end latency of `n` random sub-networks, here (the table must
    have been measured on this device: otherwise ValueError). Relative error = predicted /
    measured - 1."""
    device = "cuda" if table.device.startswith("cuda") else "cpu"
    if table.device != device_name(device):
        raise ValueError(f"the latency table was measured on {table.device!r}; this machine is "
                         f"{device_name(device)!r}: measured latencies here would not compare")
    archs = table.space.sample(check_count("n", n), seed=seed)
    measured, passes = measure_networks(table.space, archs, device, table.batch, table.threads,
                                        repeats, rounds, progress=progress)
    predicted = table(archs)
    error = predicted / measured - 1
    parts_error = table.parts(archs) / measured - 1
    # how far one pass's measurement strays from the median of the passes: the machine's noise
    pass_error = np.abs(passes / measured - 1)
    return {"n": n, "rounds": rounds, "device": table.device, "threads": table.threads,
            "batch": table.batch,
            "scale": table.scale, "offset_ms": table.offset_ms,
            "median_abs_error": float(np.median(np.abs(error))),
            "median_abs_error_parts_only": float(np.median(np.abs(parts_error))),
            "median_abs_pass_deviation": float(np.median(pass_error)),
            "mean_error_parts_only": float(parts_error.mean()),
            "p90_abs_error": float(np.quantile(np.abs(error), 0.9)),
            "mean_error": float(error.mean()), "encodings": archs.tolist(),
            "mflops": table.space.flops(archs).tolist(), "predicted_ms": predicted.tolist(),
            "measured_ms": measured.tolist()}


def main(argv=None, prog=None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or prog_name("latency"),
        description="Measure a latency lookup table for a search space (every part of every "
                    "sub-network, timed on this device), or check one against end-to-end "
                    "measurements of random sub-networks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m nasops.search.latency --space attentive_nas --device cpu --batch 1 "
               "--threads 1 --out table.json\n  python -m nasops.search.latency --check table.json -n 100"
               "\n\n" + STAGES)
    parser.add_argument("--space", help=f"search space: {', '.join(packaged_spaces())} or a "
                                        f"YAML file")
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
            print(f"{table.space.name}, {table.device}, {table.threads} threads, batch "
                  f"{table.batch}: predicted vs measured end-to-end latency of {args.n} random "
                  f"sub-networks: median |error| {100 * result['median_abs_error']:.1f}%, 90th "
                  f"percentile {100 * result['p90_abs_error']:.1f}%, mean error "
                  f"{100 * result['mean_error']:+.1f}% (the parts' sum alone: median |error| "
                  f"{100 * result['median_abs_error_parts_only']:.1f}%; one pass of the "
                  f"measurement strays from the median of {result['rounds']} by "
                  f"{100 * result['median_abs_pass_deviation']:.1f}% (median))")
            if args.check_out:
                write_json(args.check_out, result, indent=None)
                print(f"wrote {args.check_out}")
            return 0
        if not args.space or not args.out:
            raise ValueError("give --space and --out to measure a table, or --check TABLE")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available here")
        space = SearchSpace.load(args.space)
        start = time.perf_counter()
        table = LatencyTable.measure(space, args.device, args.batch, args.threads, args.repeats,
                                     progress=not args.no_progress)
        table.save(args.out)
        print(f"measured {table.num_parts} parts of {space.name} on "
              f"{table.device} ({table.threads} threads, batch {table.batch}) in "
              f"{time.perf_counter() - start:.0f} s; wrote {args.out}")
    except (ValueError, FileNotFoundError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
