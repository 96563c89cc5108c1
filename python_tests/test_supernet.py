import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import nasops
from nasops import SearchSpace, Supernet, calibrate_bn, resize_batch


def conv_linear_macs(module, x):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() / 2  # FlopCounterMode counts 2 FLOPs per multiply-add


def conv_linear_weights(module):
    return sum(m.weight.numel() for m in module.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


@pytest.mark.parametrize("name, count",
                         [("small", 200), ("small_wide", 200), ("attentive_nas", 200)])
def test_flops_and_params_equal_the_extracted_module(name, count):
    torch.manual_seed(0)
    space = SearchSpace.load(name)
    net = Supernet(space).eval()
    archs = np.concatenate([[space.encode(space.min_arch()), space.encode(space.max_arch())],
                            space.sample(count - 2, seed=1)])
    for row, flops, params in zip(archs, space.flops(archs), space.params(archs)):
        arch = space.decode(row)
        static = net.extract(arch)
        x = torch.randn(1, space.in_channels, arch.resolution, arch.resolution)
        assert conv_linear_macs(static, x) == round(flops * 1e6)
        assert conv_linear_weights(static) == round(params * 1e6)


def small_batches(space, resolution, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, space.in_channels, resolution, resolution, generator=g) for _ in range(n)]


def test_extracted_network_matches_the_supernet_after_calibration():
    torch.manual_seed(0)
    space = SearchSpace.load("small")
    net = Supernet(space)
    for row in space.sample(10, seed=2):
        arch = space.decode(row)
        net.set_active(arch)
        calibrate_bn(net, small_batches(space, arch.resolution))
        net.eval()
        static = net.extract()
        x = torch.randn(4, 3, arch.resolution, arch.resolution)
        with torch.no_grad():
            expected, got = net(x), static(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        scripted = torch.jit.script(static)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-6)
        net.train()


def test_calibration_touches_only_the_active_statistics():
    torch.manual_seed(0)
    space = SearchSpace.load("small")
    net = Supernet(space)
    arch = space.min_arch()
    net.set_active(arch)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    assert calibrate_bn(net, small_batches(space, arch.resolution)) == 4
    after = net.state_dict()
    assert not net.training
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("running_" in k for k in changed)
    bn = net.stem_bn  # the stem runs width[0] channels; the rest keep their old statistics
    c = arch.width[0]
    assert torch.equal(bn.running_mean[c:], before["stem_bn.running_mean"][c:])
    assert not torch.equal(bn.running_mean[:c], before["stem_bn.running_mean"][:c])
    with pytest.raises(ValueError, match="no batches"):
        calibrate_bn(net, [])
    assert all(torch.equal(after[k], v) for k, v in net.state_dict().items())


def test_set_active_changes_no_weight_and_gradients_reach_only_active_slices():
    torch.manual_seed(0)
    space = SearchSpace.load("small")
    net = Supernet(space)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for row in space.sample(5, seed=3):
        net.set_active(row)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    arch = space.min_arch()
    net.set_active(arch)
    net(torch.randn(2, 3, arch.resolution, arch.resolution)).sum().backward()
    stem = net.stem.weight.grad
    assert stem[: arch.width[0]].abs().sum() > 0 and stem[arch.width[0]:].abs().sum() == 0
    dw = net.stages[1][0].depthwise.weight.grad  # kernel 3 out of 5: the border stays zero
    assert dw[:, :, 1:4, 1:4].abs().sum() > 0
    assert dw[:, :, 0].abs().sum() == 0 and dw[:, :, :, 4].abs().sum() == 0
    assert net.stages[1][1].depthwise.weight.grad is None  # depth 1: the second block is idle


def test_bad_architecture_and_input_raise():
    space = SearchSpace.load("small")
    net = Supernet(space)
    arch = space.min_arch().to_dict()
    with pytest.raises(ValueError, match=r"resolution = 30 is not allowed"):
        net.set_active(dict(arch, resolution=30))
    net.set_active(arch)
    with pytest.raises(ValueError, match=r"input of shape \[2, 3, 32, 32\] .*expected \[N, 3, 24, 24\]"):
        net(torch.randn(2, 3, 32, 32))
    assert resize_batch(torch.randn(2, 3, 32, 32), 24).shape == (2, 3, 24, 24)
    assert net.active_arch.to_dict() == arch


def documented_layout(cfg):
    """The state-dict layout as README.md documents it, rebuilt from the space's YAML."""
    def md(v):
        r = max(8, int(v + 4) // 8 * 8)
        return r + 8 if r < 0.9 * v else r

    def bn(prefix, c):
        return {f"{prefix}.{k}": [c] for k in ("weight", "bias", "running_mean", "running_var")} | {
            f"{prefix}.num_batches_tracked": []}

    stem = max(cfg["stem"]["width"])
    k = cfg["stem"]["kernel_size"]
    out = {"stem.weight": [stem, cfg["in_channels"], k, k], **bn("stem_bn", stem)}
    prev = cfg["stem"]["width"]
    for s, st in enumerate(cfg["stages"]):
        w, e, kk = max(st["width"]), max(st["expand_ratio"]), max(st["kernel_size"])
        for b in range(max(st["depth"])):
            c_in = max(prev) if b == 0 else w
            hidden, p = (c_in if e == 1 else md(c_in * e)), f"stages.{s}.{b}"
            if e > 1:
                out |= {f"{p}.expand.weight": [hidden, c_in, 1, 1], **bn(f"{p}.expand_bn", hidden)}
            out |= {f"{p}.depthwise.weight": [hidden, 1, kk, kk], **bn(f"{p}.depthwise_bn", hidden)}
            if st["se"]:
                r = md(hidden // 4)
                out |= {f"{p}.se.reduce.weight": [r, hidden, 1, 1], f"{p}.se.reduce.bias": [r],
                        f"{p}.se.expand.weight": [hidden, r, 1, 1], f"{p}.se.expand.bias": [hidden]}
            out |= {f"{p}.project.weight": [w, hidden, 1, 1], **bn(f"{p}.project_bn", w)}
            if b == 0 and (len(prev) > 1 or prev != st["width"]):
                out[f"{p}.shortcut.weight"] = [w, c_in, 1, 1]
        prev = st["width"]
    last, head = cfg["head"]["expand_ratio"] * max(prev), max(cfg["head"]["width"])
    out |= {"last_conv.weight": [last, max(prev), 1, 1], **bn("last_bn", last),
            "head_conv.weight": [head, last, 1, 1],
            "classifier.weight": [cfg["num_classes"], head], "classifier.bias": [cfg["num_classes"]]}
    return out


@pytest.mark.parametrize("name", ["small", "small_wide", "attentive_nas"])
def test_state_dict_layout_is_the_documented_one(packaged_yaml, name):
    net = Supernet(SearchSpace.load(name))
    layout = {k: list(v.shape) for k, v in net.state_dict().items()}
    cfg = dict(packaged_yaml[name], in_channels=3)
    assert layout == documented_layout(cfg)
    # a checkpoint of one supernet loads into a fresh one
    Supernet(SearchSpace.load(name)).load_state_dict(net.state_dict())


def test_exports_run_without_nasops_code(tmp_path):
    torch.manual_seed(0)
    space = SearchSpace.load("small")
    net = Supernet(space).eval()
    arch = space.decode(space.sample(1, seed=5)[0])
    static = net.extract(arch).eval()
    x = torch.randn(3, 3, arch.resolution, arch.resolution)
    with torch.no_grad():
        expected = net(x)
        traced = torch.jit.trace(static, x)
    traced.save(str(tmp_path / "net.pt"))
    torch.testing.assert_close(torch.jit.load(str(tmp_path / "net.pt"))(x), expected, rtol=1e-5, atol=1e-6)
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = str(tmp_path / "net.onnx")
    torch.onnx.export(static, (x,), path, input_names=["x"], output_names=["logits"])
    onnx.checker.check_model(onnx.load(path))
    got = ort.InferenceSession(path).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_dropout_and_drop_connect_only_in_training():
    torch.manual_seed(0)
    space = SearchSpace.load("small")
    net = Supernet(space, dropout=0.5, drop_connect=0.5)
    x = torch.randn(4, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(x), net(x))
    with pytest.raises(ValueError, match=r"dropout = 1.0 must be a number in \[0, 1\)"):
        net.dropout = 1.0
    with pytest.raises(ValueError, match="drop_connect = -0.1"):
        Supernet(space, drop_connect=-0.1)


def test_calibrating_the_extracted_network_equals_calibrating_the_supernet():
    torch.manual_seed(0)
    space = SearchSpace.load("small")
    net = Supernet(space)
    arch = space.decode(space.sample(1, seed=9)[0])
    net.set_active(arch)
    static = net.extract()
    batches = small_batches(space, arch.resolution, n=3, seed=4)
    assert calibrate_bn(static, batches) == 3
    calibrate_bn(net, batches)
    net.eval(), static.eval()
    x = batches[0][:2]
    with torch.no_grad():
        torch.testing.assert_close(static(x), net(x), rtol=1e-5, atol=1e-6)
    assert static.stem[1].num_batches_tracked == 0 and static.stem[1].momentum == 0.1
