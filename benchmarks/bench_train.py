"""The sandwich training step against this machine's limit (a roofline), and where its time goes.

One step is what `python -m nasops.train` runs per batch (nasops.train.step.train_step, then the SGD
step): forward and backward of the largest, smallest and two sampled sub-networks (fixed, seeded:
every configuration times the same work), label-smoothed cross-entropy and KL distillation. The
process is set up as the training command sets it up (nasops.utils.cpu.keep_freed_memory; run with
NASOPS_MALLOC=system to see the step without it).

For each row: the median step time over interleaved repeats after warm-up, the step's arithmetic
(forward MACs of the four sub-networks x 2 FLOPs x 3 for forward + backward x the batch) divided
by it, and that rate as a fraction of a float32 matrix product (2048 x 2048, median) measured in
the same run on the same threads. Variants: default (the recipe defaults: float32,
channels_last auto, i.e. channels-last on CPU), nchw (channels_last: false) and bf16 (amp: bf16,
run only where the CPU has native bf16 unless --force-bf16); each with the nasops depthwise
kernels and with PyTorch's (dw_backend: torch). Then one more step of the default variant under
torch.profiler: self time by kind of operator (GEMMs, depthwise, batch norm + activation,
elementwise, resizes, ...) and the rest (Python and dispatch). Prints tables, writes JSON.

    python benchmarks/bench_train.py [--spaces attentive_nas small] [--batch 16] [--repeats 5]
                                     [--variants default nchw bf16] [--no-profile]
"""
import argparse
import os
import statistics
import time
from collections import defaultdict

# Six configurations interleaved use more oneDNN convolution primitives than its cache holds by
# default (1,024), and would evict each other's every step (the small space's step measured
# 2x slower that way); one training run uses one configuration. Set before torch loads oneDNN.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")

import torch  # noqa: E402

import nasops  # noqa: E402
from nasops import ops
from nasops.utils import cpu  # noqa: E402
from nasops.utils.files import write_json  # noqa: E402
from nasops.train import DEFAULTS, train_step  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = {"attentive_nas": 1000, "small": 10}
VARIANTS = {"default": {}, "nchw": {"channels_last": False}, "bf16": {"amp": "bf16"}}
BACKENDS = ("nasops", "torch")


class FixedArchs:
    """Stands in for a Strategy: the same sampled sub-networks every step."""

    def __init__(self, archs):
        self.archs = archs

    def sample(self, n, loss_fn=None):
        return self.archs[:n]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device, repeats=9, n=2048):
    """float32 n x n matrix product, GFLOP/s (median after warm-up)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


# -- where the time goes ------------------------------------------------------------------------
GEMM_OPS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::linear", "aten::matmul"}
CONV_OPS = {"aten::mkldnn_convolution", "aten::convolution", "aten::_convolution",
            "aten::conv2d", "aten::thnn_conv2d", "aten::_slow_conv2d_forward",
            "aten::_conv_depthwise2d", "aten::_nnpack_spatial_convolution"}
CONV_BACKWARD_OPS = {"aten::convolution_backward", "aten::_slow_conv2d_backward",
                     "aten::mkldnn_convolution_backward"}
ELEMENTWISE = ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::copy_", "aten::fill_",
               "aten::zero_", "aten::sum", "aten::mean", "aten::clone", "aten::where",
               "aten::empty", "aten::zeros", "aten::contiguous", "aten::to")


def _depthwise(shapes, weight_at, input_at):
    """Whether a convolution's recorded shapes are a depthwise one's (weight [C, 1, k, k] on a
    C-channel input)."""
    try:
        w, x = shapes[weight_at], shapes[input_at]
        return len(w) == 4 and w[1] == 1 and w[0] > 1 and len(x) == 4 and x[1] == w[0]
    except (IndexError, TypeError):
        return False


def kind_of(name, shapes):
    if "dw_conv2d" in name:  # (the op, its backward ops and its autograd wrappers)
        return "depthwise conv"
    if name in CONV_OPS:
        return "depthwise conv" if _depthwise(shapes, 1, 0) else "GEMM (1x1 conv, linear)"
    if name in CONV_BACKWARD_OPS:
        return "depthwise conv" if _depthwise(shapes, 2, 1) else "GEMM (1x1 conv, linear)"
    if name in GEMM_OPS:
        return "GEMM (1x1 conv, linear)"
    if "batch_norm" in name or "bn_act" in name or "BnAct" in name:
        return "batch norm (+ act)"
    if any(a in name for a in ("silu", "hardswish", "relu", "sigmoid", "threshold")):
        return "activations"
    if "upsample" in name or "interpolate" in name:
        return "resize"
    if "pool" in name:
        return "pooling"
    if "Optimizer" in name or "_foreach" in name:
        return "optimizer"
    if name.startswith(ELEMENTWISE):
        return "elementwise and copies"
    return "other ops"


def profile_step(step):
    """Self time of one call of step() by kind of operator; what the operators do not account
    for is Python and dispatch. Seconds, as measured under the profiler (which slows the step:
    its wall time is reported too)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        step()
        wall = time.perf_counter() - start
    kinds = defaultdict(float)
    for event in prof.events():
        kinds[kind_of(event.name, event.input_shapes)] += event.self_cpu_time_total / 1e6
    kinds = dict(sorted(kinds.items(), key=lambda kv: -kv[1]))
    kinds["python and dispatch (the rest)"] = max(0.0, wall - sum(kinds.values()))
    return {"profiled_wall_s": wall, "self_s": kinds}


# -- the steps ----------------------------------------------------------------------------------
def bench_space(name, device, batch, repeats, variants, profile):
    space = nasops.SearchSpace.load(name, num_classes=NUM_CLASSES.get(name))
    sampled = space.sample(2, seed=1)
    strategy = FixedArchs(sampled)
    largest, smallest = space.encode(space.max_arch()), space.encode(space.min_arch())
    x = torch.randn(batch, space.in_channels, max(space.choices[0]), max(space.choices[0]),
                    device=device)
    y = torch.randint(0, space.num_classes, (batch,), device=device)
    mflops = [space.flops(a) for a in (largest, smallest, *sampled)]
    gflop = sum(mflops) * 1e6 * 2 * 3 * batch / 1e9  # (space.flops counts multiply-adds)
    setups = {}
    for variant in variants:  # one supernet and optimizer per variant, the same initial weights
        torch.manual_seed(0)
        net = nasops.Supernet(space, dropout=0.1, drop_connect=0.1).to(device)
        cfg = dict(DEFAULTS, num_sampled=2, kd="kl", **VARIANTS[variant])
        if cpu.use_channels_last(cfg["channels_last"], device):
            net.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
        setups[variant] = (net, cfg, opt)

    def step(variant, backend):
        net, cfg, opt = setups[variant]
        with ops.dw_backend_as(backend):
            train_step(net, cfg, strategy, largest, smallest, x, y)
            opt.step()

    def timed(variant, backend):
        sync(device)
        start = time.perf_counter()
        step(variant, backend)
        sync(device)
        return time.perf_counter() - start

    runs = [(v, b) for v in variants for b in BACKENDS]
    times = {run: [] for run in runs}
    for run in runs:  # warm-up
        timed(*run)
    for _ in range(repeats):
        for run in runs:
            times[run].append(timed(*run))
    rows = []
    for v in variants:
        med = {b: statistics.median(times[(v, b)]) for b in BACKENDS}
        rows.append({"space": name, "batch": batch, "variant": v, "mflops": mflops,
                     "gflop_per_step": gflop, "nasops_s": med["nasops"], "torch_s": med["torch"],
                     "nasops_gflops": gflop / med["nasops"], "torch_gflops": gflop / med["torch"],
                     "speedup": med["torch"] / med["nasops"],
                     "nasops_all_s": times[(v, "nasops")], "torch_all_s": times[(v, "torch")]})
    breakdown = profile_step(lambda: step(variants[0], "nasops")) if profile else None
    return rows, breakdown


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--spaces", nargs="+", default=["attentive_nas", "small"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--force-bf16", action="store_true",
                        help="run the bf16 variant on a CPU without native bf16 too (slow)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    malloc = cpu.keep_freed_memory() if device.type == "cpu" else None
    variants = list(args.variants)
    native = cpu.native_dtypes() if device.type == "cpu" else {"bf16": True}
    if "bf16" in variants and not native["bf16"] and not args.force_bf16:
        variants.remove("bf16")
        print("bf16: skipped, this CPU has no native bf16 (--force-bf16 runs it anyway)")
    out_path = args.out or os.path.join(ROOT, "benchmarks", "results", f"bench_train_{device.type}.json")
    if device.type == "cuda":
        machine = torch.cuda.get_device_name()
    else:
        machine = cpu.describe()
    matmul = matmul_gflops(device)
    results = {"device": machine, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpu_isa": nasops._C.cpu_isa() if device.type == "cpu" else None,
               "malloc_kept": malloc, "repeats": args.repeats, "matmul_gflops": matmul,
               "rows": [], "profiles": []}
    print(f"{device.type}: {machine}; torch {torch.__version__}; glibc keeps freed memory: "
          f"{malloc}")
    print(f"float32 2048x2048 matrix product: {matmul:.0f} GFLOP/s on these threads")
    print(f"median of {args.repeats} sandwich steps (largest, smallest, 2 sampled), forward + "
          f"backward + SGD; GFLOP/s = 6 x forward MACs x batch / step time")
    print(f"{'space':<14} {'batch':>5} {'variant':<8} {'GFLOP':>6} | {'nasops s':>8} "
          f"{'GFLOP/s':>7} {'of mm':>6} | {'torch dw s':>10} {'ratio':>6}")
    for space in args.spaces:
        for batch in args.batch:
            rows, breakdown = bench_space(space, device, batch, args.repeats, variants,
                                          profile=not args.no_profile)
            for row in rows:
                row["fraction_of_matmul"] = row["nasops_gflops"] / matmul
                results["rows"].append(row)
                print(f"{space:<14} {batch:>5} {row['variant']:<8} {row['gflop_per_step']:>6.1f} | "
                      f"{row['nasops_s']:>8.3f} {row['nasops_gflops']:>7.1f} "
                      f"{row['fraction_of_matmul']:>6.1%} | {row['torch_s']:>10.3f} "
                      f"{row['speedup']:>5.2f}x", flush=True)
            if breakdown:
                results["profiles"].append({"space": space, "batch": batch,
                                            "variant": variants[0], **breakdown})
    for p in results["profiles"]:
        print(f"\n{p['space']}, batch {p['batch']}, {p['variant']}: self time of one step under "
              f"the profiler ({p['profiled_wall_s']:.2f} s in all)")
        for kind, seconds in p["self_s"].items():
            print(f"  {kind:<32} {seconds:7.3f} s {seconds / p['profiled_wall_s']:6.1%}")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    write_json(out_path, results)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
