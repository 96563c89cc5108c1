"""torch.ops.nasops.dw_conv2d against slice + F.conv2d on the AttentiveNAS depthwise layers.

The shapes are the depthwise layers of the smallest and largest attentive_nas sub-networks (every
stage's first and repeated block: resolution, active width, kernel, stride, read out of the
supernet's shared weight), at batch 16, and three k = 3 layers of other sub-networks (C = 480 at
14 x 14, C = 1344 at 7 x 7, C = 200 at 29 x 29 stride 2). For each, in each memory format
(channels-last, where the nasops kernels run their NHWC path and PyTorch oneDNN's; NCHW): forward,
backward and both, nasops and PyTorch interleaved on the same data after warm-up; medians; the
ratio; and achieved GB/s (input, output and gradients counted once each) against a measured plain
copy. On CPU, then the fused batch norm + SiLU (nasops::bn_act, forward and backward) against
PyTorch's two operators on five layers of the largest sub-network. The process keeps freed
memory as training does (nasops.utils.cpu.keep_freed_memory). Prints a table per format, writes JSON
(one file per instruction set of the nasops kernels).

On an AVX-512 machine the AVX2 build is measured against PyTorch restricted to AVX2 the same way:
    NASOPS_CPU_ISA=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_kernels.py

    python benchmarks/bench_kernels.py [--device cpu|cuda] [--layouts channels_last contiguous]
                                       [--dtype float32 ...] [--repeats 7]
    python benchmarks/bench_kernels.py --gpu-traffic   (no timing: the CUDA kernels' predicted
                                                        global-memory traffic on the same layers)
"""
import argparse
import math
import os
import statistics
import time

import torch

import nasops
from nasops.utils import cpu
from nasops.utils.files import write_json
from nasops.space.cost import make_divisible
from nasops.ops import dw_conv2d_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def attentive_shapes(batch):
    """(label, N, C, C_max, H, k, K_max, stride) of every depthwise layer kind of the min and
    max attentive_nas sub-networks, deduplicated."""
    space = nasops.SearchSpace.load("attentive_nas")
    cfg = space.config
    shapes = {}
    for label, arch in (("min", space.min_arch()), ("max", space.max_arch())):
        n = math.ceil(arch.resolution / cfg["stem"]["stride"])
        c_in, max_in = arch.width[0], max(cfg["stem"]["width"])
        for s, stage in enumerate(cfg["stages"]):
            e, k, c_out = arch.expand_ratio[s], arch.kernel_size[s], arch.width[s + 1]
            max_e, max_k, max_out = max(stage["expand_ratio"]), max(stage["kernel_size"]), max(stage["width"])
            for first in (True, False):
                if not first and arch.depth[s] < 2:
                    continue
                cin, mx = (c_in, max_in) if first else (c_out, max_out)
                stride = stage["stride"] if first else 1
                size = n if first else math.ceil(n / stage["stride"])
                key = (batch, make_divisible(cin * e), make_divisible(mx * max_e), size, k, max_k, stride)
                shapes.setdefault(key, f"{label} {stage['name']}{'' if first else '+'}")
            n = math.ceil(n / stage["stride"])
            c_in, max_in = c_out, max_out
    for c, h, stride in ((480, 14, 1), (1344, 7, 1), (200, 29, 2)):  # k = 3, other sub-networks
        shapes.setdefault((batch, c, c, h, 3, 5, stride), "other k3")
    return [(label, *key) for key, label in shapes.items()]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def copy_bandwidth(device, dtype, repeats):
    src = torch.randn(32 * 2**20 // torch.finfo(dtype).bits * 8, device=device).to(dtype)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = statistics.median(timed(lambda: dst.copy_(src), device) for _ in range(repeats))
    return 2 * src.numel() * src.element_size() / t / 1e9  # read + write


def fresh_output_bandwidth(shape, device, dtype, repeats):
    """GB/s of x + 1 on the largest layer's input: read x, write a newly allocated output. On CPU
    a fresh output of tens of MB is page-faulted in on every call, which caps every operator that
    returns a new tensor (the depthwise ones included) far below the plain copy above."""
    _, n, c, _, h, *_ = shape
    x = torch.randn(n, c, h, h, device=device).to(dtype)
    x.add(1)
    t = statistics.median(timed(lambda: x.add(1), device) for _ in range(repeats))
    return 2 * x.numel() * x.element_size() / t / 1e9


# The CUDA kernels' tiles (csrc/kernels/cuda/dw_conv2d_kernels.cuh: kTileH x kTileW outputs per
# block for the forward and the input gradient, GradWeight::kH x kW per step of the weight
# gradient).
FORWARD_TILE, WEIGHT_TILE = (8, 32), (4, 32)


def _in_bounds(starts, length, size):
    """Sum over tiles of how many of the `length` indices from each start lie in [0, size)."""
    return sum(max(0, min(a + length, size) - max(a, 0)) for a in starts)


def _tiles(outputs, tile, s, k, p):
    """Start indices of the read window of each tile along one axis, for a window of
    (tile - 1) * s + k inputs starting at out0 * s - p."""
    return [o * s - p for o in range(0, outputs, tile)], (tile - 1) * s + k


def gpu_traffic(shape):
    """Elements each CUDA kernel reads and writes in global memory for one layer (in-bounds loads
    only, as the kernels skip the rest), and the minimum (every input, output, gradient and
    window tap once). Halo re-reads are counted each time: L2 hits on a GPU, so an upper bound
    on DRAM traffic."""
    _, n, c, _, h, k, _, s = shape
    p, ho = k // 2, -(-h // s)
    planes, taps = n * c, c * k * k
    th, tw = FORWARD_TILE
    rows, rl = _tiles(ho, th, s, k, p)
    cols, cl = _tiles(ho, tw, s, k, p)
    blocks = len(rows) * len(cols) * planes
    forward = planes * _in_bounds(rows, rl, h) * _in_bounds(cols, cl, h) + blocks * k * k + planes * ho * ho
    # input gradient: tiles of input pixels; output-gradient rows first .. first + span
    span = lambda t: (t - 1 + k - 1) // s + 2  # noqa: E731
    first = lambda i0: -((-(i0 + p - (k - 1))) // s)  # noqa: E731  (ceil division)
    grows = [first(i) for i in range(0, h, th)]
    gcols = [first(i) for i in range(0, h, tw)]
    gblocks = len(grows) * len(gcols) * planes
    grad_input = (planes * _in_bounds(grows, span(th), ho) * _in_bounds(gcols, span(tw), ho)
                  + gblocks * k * k + planes * h * h)
    wh, ww = WEIGHT_TILE
    wrows, wrl = _tiles(ho, wh, s, k, p)
    wcols, wcl = _tiles(ho, ww, s, k, p)
    grad_weight = planes * (ho * ho + _in_bounds(wrows, wrl, h) * _in_bounds(wcols, wcl, h)) + taps
    return {"forward": forward, "forward_min": planes * (h * h + ho * ho) + taps,
            "grad_input": grad_input, "grad_input_min": planes * (ho * ho + h * h) + taps,
            "grad_weight": grad_weight, "grad_weight_min": planes * (ho * ho + h * h) + taps}


def print_gpu_traffic(shapes, out_path):
    rows = []
    print("predicted global-memory traffic of the CUDA kernels, float32 MB (ratio to the minimum)")
    print(f"{'layer':<9} {'C':>5} {'HxW':>7} {'k':>2} {'s':>2} | {'forward':>14} {'grad_input':>14} "
          f"{'grad_weight':>14}")
    for shape in shapes:
        t = gpu_traffic(shape)
        row = {"layer": shape[0], "N": shape[1], "C": shape[2], "H": shape[4], "k": shape[5],
               "stride": shape[7], **{key: 4 * v / 1e6 for key, v in t.items()}}
        rows.append(row)
        cells = [f"{row[kind]:7.2f} ({row[kind] / row[kind + '_min']:.2f}x)"
                 for kind in ("forward", "grad_input", "grad_weight")]
        print(f"{row['layer']:<9} {row['C']:>5} {row['H']:>3}x{row['H']:<3} {row['k']:>2} "
              f"{row['stride']:>2} | " + " ".join(f"{c:>14}" for c in cells))
    write_json(out_path, {"batch": shapes[0][1], "tiles": {"forward_and_grad_input": FORWARD_TILE,
                                                           "grad_weight": WEIGHT_TILE}, "rows": rows})
    print(f"wrote {out_path}")


def interleaved_medians(impls, run, repeats, times):
    """Calls run(impl) for every impl once (warm-up, then `times`' lists are cleared) and then
    `repeats` times, interleaved; the median of each list of `times` (run appends to them)."""
    for impl in impls:
        run(impl)
    for values in times.values():
        values.clear()
    for _ in range(repeats):
        for impl in impls:
            run(impl)
    return {key: statistics.median(v) for key, v in times.items()}


FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def bench_shape(shape, device, dtype, repeats, layout="contiguous"):
    label, n, c, c_max, h, k, k_max, s = shape
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, c, h, h, device=device, generator=g).to(dtype)
    x = x.contiguous(memory_format=FORMATS[layout])
    x.requires_grad_(True)
    w = torch.randn(c_max, 1, k_max, k_max, device=device, generator=g).to(dtype).requires_grad_(True)
    impls = {"nasops": lambda: torch.ops.nasops.dw_conv2d(x, w, k, s),
             "torch": lambda: dw_conv2d_reference(x, w, k, s)}
    out = impls["torch"]()
    grad = torch.randn_like(out)
    times = {(impl, part): [] for impl in impls for part in ("fwd", "bwd", "both")}

    def run(impl):
        with torch.no_grad():
            times[(impl, "fwd")].append(timed(impls[impl], device))
        y = impls[impl]()
        times[(impl, "bwd")].append(timed(lambda: torch.autograd.grad(y, (x, w), grad), device))
        times[(impl, "both")].append(
            timed(lambda: torch.autograd.grad(impls[impl](), (x, w), grad), device))

    t = interleaved_medians(impls, run, repeats, times)
    elem = x.element_size()
    io = {"fwd": x.numel() + out.numel(), "bwd": 2 * x.numel() + out.numel(),
          "both": 2 * x.numel() + 2 * out.numel()}
    row = {"layer": label, "N": n, "C": c, "C_max": c_max, "H": h, "k": k, "K_max": k_max,
           "stride": s, "dtype": str(dtype).replace("torch.", ""), "layout": layout}
    for part in ("fwd", "bwd", "both"):
        row[f"{part}_nasops_ms"] = 1e3 * t[("nasops", part)]
        row[f"{part}_torch_ms"] = 1e3 * t[("torch", part)]
        row[f"{part}_speedup"] = t[("torch", part)] / t[("nasops", part)]
        row[f"{part}_nasops_gbs"] = io[part] * elem / t[("nasops", part)] / 1e9
        row[f"{part}_torch_gbs"] = io[part] * elem / t[("torch", part)] / 1e9
    return row


# Batch norm + SiLU layers of the largest attentive_nas sub-network at batch 16 (the expanded
# activations of stages 1, 2, 3 and 6, and a stage's output): [N, C, H, W].
BN_SHAPES = [(16, 24, 144, 144), (16, 192, 72, 72), (16, 240, 36, 36), (16, 1296, 9, 9),
             (16, 40, 36, 36)]


def bench_bn_act(repeats):
    """torch.ops.nasops.bn_act (training mode, SiLU, with its backward) against F.batch_norm +
    F.silu on channels-last float32 tensors: forward, and forward + backward, interleaved,
    medians after warm-up."""
    from torch.nn import functional as F
    rows = []
    print("\nbatch norm (training mode) + SiLU, channels-last float32: nasops::bn_act against "
          "F.batch_norm + F.silu")
    print(f"{'N, C, H, W':<20} | {'fwd x':>6} {'both x':>6} | {'both ms':>8} {'torch ms':>9}")
    for shape in BN_SHAPES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last)
        c = shape[1]
        weight, bias = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
        x.requires_grad_(True)
        weight.requires_grad_(True)
        bias.requires_grad_(True)
        stats = {impl: (torch.zeros(c), torch.ones(c)) for impl in ("nasops", "torch")}
        impls = {"nasops": lambda: torch.ops.nasops.bn_act(x, weight, bias, *stats["nasops"], True,
                                                           0.1, 1e-5, "silu")[0],
                 "torch": lambda: F.silu(F.batch_norm(x, *stats["torch"], weight, bias, True, 0.1,
                                                      1e-5))}
        grad = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last)
        times = {(impl, part): [] for impl in impls for part in ("fwd", "both")}

        def run(impl):
            with torch.no_grad():
                times[(impl, "fwd")].append(timed(impls[impl], "cpu"))
            times[(impl, "both")].append(
                timed(lambda: torch.autograd.grad(impls[impl](), (x, weight, bias), grad), "cpu"))

        t = interleaved_medians(impls, run, repeats, times)
        row = {"shape": list(shape), **{f"{part}_{impl}_ms": 1e3 * t[(impl, part)]
                                         for impl in impls for part in ("fwd", "both")}}
        row["fwd_speedup"] = t[("torch", "fwd")] / t[("nasops", "fwd")]
        row["both_speedup"] = t[("torch", "both")] / t[("nasops", "both")]
        rows.append(row)
        print(f"{str(list(shape)):<20} | {row['fwd_speedup']:>6.2f} {row['both_speedup']:>6.2f} | "
              f"{row['both_nasops_ms']:>8.2f} {row['both_torch_ms']:>9.2f}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", nargs="+", default=["float32"],
                        choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--layouts", nargs="+", default=None,
                        choices=["channels_last", "contiguous"],
                        help="memory formats (default: both on CPU, contiguous on CUDA)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None)
    parser.add_argument("--gpu-traffic", action="store_true",
                        help="print the CUDA kernels' predicted global-memory traffic and exit")
    args = parser.parse_args()
    if args.gpu_traffic:
        print_gpu_traffic(attentive_shapes(args.batch), args.out or os.path.join(
            ROOT, "benchmarks", "results", "bench_kernels_gpu_traffic.json"))
        return
    on_cpu = args.device == "cpu"
    layouts = args.layouts or (["channels_last", "contiguous"] if on_cpu else ["contiguous"])
    isa = nasops._C.cpu_isa()
    out_path = args.out or os.path.join(ROOT, "benchmarks", "results",
                                        f"bench_kernels_cpu_{isa}.json" if on_cpu else "bench_kernels_cuda.json")
    malloc = cpu.keep_freed_memory() if on_cpu else None
    device_name = torch.cuda.get_device_name() if not on_cpu else cpu.describe()
    results = {"device": device_name, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpu_isa": isa, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "malloc_kept": malloc,
               "batch": args.batch, "repeats": args.repeats, "rows": []}
    shapes = attentive_shapes(args.batch)
    for name in args.dtype:
        dtype = getattr(torch, name)
        copy = copy_bandwidth(args.device, dtype, args.repeats)
        largest = max(shapes, key=lambda sh: sh[1] * sh[2] * sh[4] * sh[4])
        fresh = fresh_output_bandwidth(largest, args.device, dtype, args.repeats)
        results[f"copy_gbs_{name}"] = copy
        results[f"fresh_output_gbs_{name}"] = fresh
        for layout in layouts:
            print(f"\n{args.device} {device_name}, {name}, {layout}, torch {torch.__version__}, "
                  f"plain copy {copy:.1f} GB/s, x + 1 into a new tensor (largest layer input) "
                  f"{fresh:.1f} GB/s")
            print(f"{'layer':<9} {'C/Cmax':>9} {'HxW':>7} {'k/K':>5} {'s':>2} | "
                  f"{'fwd x':>6} {'bwd x':>6} {'both x':>6} | {'both ms':>8} {'torch ms':>9} {'GB/s':>6} {'%copy':>6}")
            for shape in shapes:
                row = bench_shape(shape, args.device, dtype, args.repeats, layout)
                row["both_pct_copy"] = 100 * row["both_nasops_gbs"] / copy
                results["rows"].append(row)
                print(f"{row['layer']:<9} {row['C']:>4}/{row['C_max']:<4} {row['H']:>3}x{row['H']:<3} "
                      f"{row['k']:>2}/{row['K_max']:<2} {row['stride']:>2} | {row['fwd_speedup']:>6.2f} "
                      f"{row['bwd_speedup']:>6.2f} {row['both_speedup']:>6.2f} | "
                      f"{row['both_nasops_ms']:>8.2f} {row['both_torch_ms']:>9.2f} "
                      f"{row['both_nasops_gbs']:>6.1f} {row['both_pct_copy']:>5.1f}%", flush=True)
            rows = [r for r in results["rows"] if r["dtype"] == name and r["layout"] == layout]
            for part in ("fwd", "bwd", "both"):
                geo = math.exp(statistics.mean(math.log(r[f"{part}_speedup"]) for r in rows))
                results[f"geomean_{part}_speedup_{name}_{layout}"] = geo
                print(f"geometric-mean speed-up {part}: {geo:.2f}x; slowest shape "
                      f"{min(r[f'{part}_speedup'] for r in rows):.2f}x")
    if on_cpu:
        results["bn_act_rows"] = bench_bn_act(args.repeats)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    write_json(out_path, results)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
