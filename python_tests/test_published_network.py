"""The network as AttentiveNAS/AlphaNet publish it (issue 13): no head bias, the residual's pooling
on odd maps, the drop-connect schedule, the zero-initialised last BN of each block; and a space
with odd sizes and an unexpanded stage whose widths are not multiples of 8."""
import copy

import numpy as np
import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from nasops import SearchSpace, Supernet
from nasops.train.rundir import load_trained
from nasops.nn.layers import shortcut_pool


def published_pool(x):
    """2x2 average pooling, stride 2, zero padding 1 on an odd axis, the zeros counted in the
    average: written out in float64 loops."""
    x = x.double().numpy()
    n, c, h, w = x.shape
    ph, pw = h % 2, w % 2
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    padded[:, :, ph:ph + h, pw:pw + w] = x
    oh, ow = (h + 2 * ph) // 2, (w + 2 * pw) // 2
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = padded[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].sum((2, 3)) / 4
    return torch.from_numpy(out)


@pytest.mark.parametrize("h, w", [(7, 7), (8, 8), (9, 6), (6, 9), (1, 1), (29, 29)])
def test_shortcut_pooling_is_the_published_formula(h, w):
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    got = shortcut_pool(x, 2)
    assert got.shape[-2:] == (-(-h // 2), -(-w // 2))  # ceil(n / 2), like the strided convs
    torch.testing.assert_close(got, published_pool(x), rtol=0, atol=1e-12)
    assert shortcut_pool(x, 1) is x


def small_space_file(tmp_path, packaged_yaml, **changes):
    doc = copy.deepcopy(packaged_yaml["small"])
    doc.update(changes)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc))
    return SearchSpace.load(str(path)), doc


def test_every_pooled_residual_uses_the_published_pooling(tmp_path, packaged_yaml):
    """With every block's last BN zeroed (scale and shift), each block outputs its residual
    alone; at an odd map size the pooled residual must be the published one, in the supernet
    and in the exported static network."""
    space, _ = small_space_file(tmp_path, packaged_yaml, resolution=[25])
    torch.manual_seed(0)
    net = Supernet(space).double().eval()
    arch = space.max_arch()
    for blocks in net.stages:
        for block in blocks:
            torch.nn.init.zeros_(block.project_bn.weight)
            torch.nn.init.zeros_(block.project_bn.bias)
    seen = []

    def check(block, inputs, output):
        x = inputs[0]
        if block.stride == 2:
            expected = published_pool(x)
            if block.shortcut is not None and expected.shape[1] != output.shape[1]:
                expected = torch.nn.functional.conv2d(expected, block.shortcut.weight[:output.shape[1], :x.shape[1]])
            torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-12)
            seen.append(x.shape[-1])

    hooks = [b.register_forward_hook(check) for blocks in net.stages for b in blocks]
    x = torch.randn(2, 3, 25, 25, dtype=torch.float64)
    with torch.no_grad():
        expected = net(x)
    for h in hooks:
        h.remove()
    assert sorted(seen) == [7, 13, 25]  # all three stride-2 stages, each on an odd map
    static = net.extract(arch).eval()
    with torch.no_grad():
        torch.testing.assert_close(static(x), expected, rtol=1e-10, atol=1e-12)


def test_odd_sizes_and_unexpanded_stages_of_any_width(tmp_path, packaged_yaml):
    """Odd resolutions and a ratio-1 stage fed widths that are not multiples of 8 (hidden =
    the input width): the cost model, FlopCounterMode on the extracted network and the
    supernet's own outputs all agree."""
    doc = copy.deepcopy(packaged_yaml["small"])
    doc["stem"]["width"] = [12, 20]
    doc["stages"][0]["width"] = [12, 20]
    space, _ = small_space_file(tmp_path, packaged_yaml, resolution=[23, 29],
                                stem=doc["stem"], stages=doc["stages"])
    torch.manual_seed(0)
    net = Supernet(space).eval()
    for row in np.concatenate([space.sample(12, seed=3), [space.encode(space.min_arch())]]):
        arch = space.decode(row)
        static = net.extract(arch).eval()
        x = torch.randn(2, 3, arch.resolution, arch.resolution)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            got = static(x[:1])
        assert counter.get_total_flops() / 2 == round(space.flops(arch) * 1e6)
        with torch.no_grad():
            torch.testing.assert_close(static(x), net(x), rtol=1e-5, atol=1e-6)


def test_the_head_conv_has_no_bias_and_old_checkpoints_are_refused(tmp_path):
    net = Supernet(SearchSpace.load("small"))
    assert net.head_conv.bias is None
    assert not any(k.startswith("head_conv.") and k != "head_conv.weight" for k in net.state_dict())
    old = {"format": "nasops-checkpoint-1", "config": {}, "space": net.space.config,
           "model": dict(net.state_dict(), **{"head_conv.bias": torch.zeros(320)})}
    path = str(tmp_path / "checkpoint.pt")
    torch.save(old, path)
    with pytest.raises(ValueError, match=r"format 'nasops-checkpoint-1'.*layout 1, whose "
                                         r"head_conv has a bias.*nasops 0\.1.*retrain"):
        load_trained(path)


def random_blocks(net, x):
    """(stage, block) of the active blocks whose output, for the input the supernet gave them,
    changes with the random seed (each block is run again, from within its hook, under another
    seed and with the same arguments, drop-connect rate included)."""
    found, busy = set(), [False]

    def rerun(block, args, output, where):
        if busy[0]:
            return
        busy[0] = True
        with torch.random.fork_rng():  # (the supernet's own draws go on from where they were)
            torch.manual_seed(12345)
            again = block(*args)
        busy[0] = False
        if not torch.equal(again, output):
            found.add(where)

    hooks = [b.register_forward_hook(lambda m, a, o, w=(s, k): rerun(m, a, o, w))
             for s, blocks in enumerate(net.stages) for k, b in enumerate(blocks)]
    torch.manual_seed(1)
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return found


def test_drop_connect_follows_the_published_schedule():
    space = SearchSpace.load("attentive_nas")
    net = Supernet(space, drop_connect=0.2)
    # maximum depths [2, 5, 6, 6, 8, 8, 2]: 37 blocks; only mb6 (blocks 29-36 at maximum depth,
    # indices 27-34) and mb7 (35-36) drop, block i at 0.2 * i / 37
    first = {5: 27, 6: 35}
    for s, blocks in enumerate(net.stages):
        for b in range(len(blocks)):
            expected = 0.2 * (first[s] + b) / 37 if s in first else 0.0
            assert net.drop_connect_rate(s, b) == pytest.approx(expected, rel=1e-12), (s, b)

    # in training mode: blocks outside the last two stages, and blocks whose residual pools or
    # projects, never drop (their outputs do not depend on the random draw); the others do
    small = SearchSpace.load("small")
    torch.manual_seed(0)
    net = Supernet(small, drop_connect=0.9).train()
    # small: stages mb1-mb4 at maximum depth; the last two (mb3, mb4) start with a stride-2 block
    assert random_blocks(net, torch.randn(16, 3, 32, 32)) == {(2, 1), (2, 2), (3, 1), (3, 2)}


def test_a_dropped_block_outputs_its_residual_at_the_given_rate():
    torch.manual_seed(0)
    net = Supernet(SearchSpace.load("small")).train()
    block = net.stages[3][2]
    x = torch.randn(4000, 80, 1, 1)
    with torch.no_grad():
        out = block(x, 80, 3, 3, drop_connect=0.3)
    dropped = (out == x).flatten(1).all(1).float().mean().item()
    assert abs(dropped - 0.3) < 0.03  # 4,000 draws: 3 standard deviations are 0.022
    kept = ~(out == x).flatten(1).all(1)
    with torch.no_grad():  # the same batch (so the same BN batch statistics), nothing dropped
        full = block(x, 80, 3, 3) - x
    torch.testing.assert_close(out[kept] - x[kept], full[kept] / 0.7, rtol=1e-4, atol=1e-5)


def test_zero_initialised_blocks_start_as_their_residual():
    torch.manual_seed(0)
    space = SearchSpace.load("small")
    net = Supernet(space).zero_init_residual_().train()
    x = torch.randn(4, 3, 32, 32)
    outputs, inputs = [], []

    def record(block, args, output):
        inputs.append(args[0])
        outputs.append((block, output))

    hooks = [b.register_forward_hook(record) for blocks in net.stages for b in blocks]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    identity = 0
    for x_in, (block, out) in zip(inputs, outputs):
        assert torch.all(block.project_bn.weight == 0)
        if block.stride == 1 and x_in.shape[1] == out.shape[1]:
            assert torch.equal(out, x_in)
            identity += 1
    assert identity >= 4
    # the recipe key turns it on
    from nasops.train import DEFAULTS, KEYS
    assert DEFAULTS["zero_init_residual"] is False and "residual" in KEYS["zero_init_residual"][1]
