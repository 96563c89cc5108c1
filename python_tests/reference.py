"""An independent pure-Python FLOPs and parameter count, written from docs/DESIGN.md's facts.

It walks the network block by block, layer by layer, from the raw YAML of a search space and an
architecture dict; nothing here comes from nasops. The tests compare the C++ core against it and
benchmarks/bench_core.py times it.
"""
import math


def make_divisible(v, divisor=8):
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


def reference_cost(space_yaml, arch, num_classes=None, in_channels=None):
    """(MFLOPs, M params) of one architecture dict of the space described by space_yaml."""
    classes = num_classes or space_yaml.get("num_classes", 1000)
    channels = in_channels or space_yaml.get("in_channels", 3)
    total = {"macs": 0, "params": 0}

    def conv(c_in, c_out, kernel, out_size, groups=1):
        weights = (c_in // groups) * c_out * kernel * kernel
        total["params"] += weights
        total["macs"] += weights * out_size * out_size

    stem = space_yaml["stem"]
    width, depth = arch["width"], arch["depth"]
    kernel, expand = arch["kernel_size"], arch["expand_ratio"]
    size = math.ceil(arch["resolution"] / stem.get("stride", 2))
    conv(channels, width[0], stem.get("kernel_size", 3), size)
    c_in = width[0]
    for s, stage in enumerate(space_yaml["stages"]):
        c_out = width[s + 1]
        for block in range(depth[s]):
            stride = stage.get("stride", 1) if block == 0 else 1
            # no expansion at ratio 1: the depthwise conv runs on the input's channels
            hidden = c_in if expand[s] == 1 else make_divisible(round(c_in * expand[s]))
            if expand[s] != 1:
                conv(c_in, hidden, 1, size)
            out = math.ceil(size / stride)
            conv(hidden, hidden, kernel[s], out, groups=hidden)
            if stage.get("se", False):
                reduced = make_divisible(hidden // 4)
                conv(hidden, reduced, 1, 1)
                conv(reduced, hidden, 1, 1)
            conv(hidden, c_out, 1, out)
            if c_in != c_out:
                conv(c_in, c_out, 1, out)
            c_in, size = c_out, out
    last = space_yaml["head"].get("expand_ratio", 6) * c_in
    conv(c_in, last, 1, size)
    conv(last, width[-1], 1, 1)
    conv(width[-1], classes, 1, 1)  # the classifier: a linear layer is a 1x1 conv on 1 pixel
    return total["macs"] / 1e6, total["params"] / 1e6


def random_arch(space_yaml, rng):
    """A uniform random architecture dict, drawn with NumPy straight from the YAML lists."""
    def one(values):
        values = values if isinstance(values, list) else [values]
        return int(values[rng.integers(len(values))])
    stages = space_yaml["stages"]
    return {
        "resolution": one(space_yaml["resolution"]),
        "width": [one(space_yaml["stem"]["width"])] + [one(s["width"]) for s in stages]
                 + [one(space_yaml["head"]["width"])],
        "depth": [one(s["depth"]) for s in stages],
        "kernel_size": [one(s["kernel_size"]) for s in stages],
        "expand_ratio": [one(s["expand_ratio"]) for s in stages],
    }
