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


@pytest.mark.parametrize("name, count", [("small", 200), ("attentive_nas", 200)])
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
