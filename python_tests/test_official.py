"""The released AttentiveNAS / AlphaNet supernets: an official-format state dict, built here from
the published key names (issue 13), loads into nasops and gives the same outputs."""
import json
import os
import re

import numpy as np
import pytest
import torch

import nasops
from nasops import SearchSpace, Supernet
from nasops.nn.official import official_state_dict

A0 = {"resolution": 192, "width": [16, 16, 24, 32, 64, 112, 192, 216, 1792],
      "depth": [1, 3, 3, 3, 3, 3, 1], "kernel_size": [3, 3, 3, 3, 3, 3, 3],
      "expand_ratio": [1, 4, 4, 4, 4, 6, 6]}

# nasops key pattern -> official key, from the published names of AttentiveNasDynamicModel
RENAMES = [
    (r"stem\.weight", "first_conv.conv.conv.weight"),
    (r"stem_bn\.(.+)", r"first_conv.bn.bn.\1"),
    (r"B\.expand\.weight", "M.inverted_bottleneck.conv.conv.weight"),
    (r"B\.expand_bn\.(.+)", r"M.inverted_bottleneck.bn.bn.\1"),
    (r"B\.depthwise\.weight", "M.depth_conv.conv.conv.weight"),
    (r"B\.depthwise_bn\.(.+)", r"M.depth_conv.bn.bn.\1"),
    (r"B\.se\.(reduce|expand)\.(weight|bias)", r"M.depth_conv.se.fc.\1.\2"),
    (r"B\.project\.weight", "M.point_linear.conv.conv.weight"),
    (r"B\.project_bn\.(.+)", r"M.point_linear.bn.bn.\1"),
    (r"B\.shortcut\.weight", "S.shortcut.conv.conv.weight"),
    (r"last_conv\.weight", "last_conv.final_expand_layer.conv.conv.weight"),
    (r"last_bn\.(.+)", r"last_conv.final_expand_layer.bn.bn.\1"),
    (r"head_conv\.weight", "last_conv.feature_mix_layer.conv.conv.weight"),
    (r"classifier\.(weight|bias)", r"classifier.linear.linear.\1"),
]
MAX_DEPTHS = [2, 5, 6, 6, 8, 8, 2]


def randomised_supernet(seed=0):
    torch.manual_seed(seed)
    net = Supernet(SearchSpace.load("attentive_nas"))
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("running_mean") or name.endswith(".bias"):
                t.normal_(0, 0.1)
            elif name.endswith("bn.weight"):
                t.uniform_(0.5, 1.5)
    return net.eval()


def official_format(net):
    """The official state dict of `net`, built from the key facts above (37 blocks, unused
    residual convs and bn_tracking statistics included), independently of nasops.nn.official."""
    first = np.cumsum([0] + MAX_DEPTHS[:-1])
    out = {}
    for key, tensor in net.state_dict().items():
        m = re.match(r"stages\.(\d+)\.(\d+)\.(.+)", key)
        if m:
            i = first[int(m.group(1))] + int(m.group(2))
            key = "B." + m.group(3)
        for pattern, repl in RENAMES:
            if re.fullmatch(pattern, key):
                new = re.sub(pattern, repl, key)
                if m:
                    new = new.replace("M.", f"blocks.{i}.mobile_inverted_conv.").replace("S.", f"blocks.{i}.")
                break
        else:
            raise AssertionError(f"no official name for {key}")
        out[new] = tensor.clone()
        if new.endswith("bn.bn.weight"):  # the dynamic BN's two spare trackers
            c = tensor.shape[0]
            for j in (0, 1):
                base = new[: -len("bn.weight")] + f"bn_tracking.{j}."
                out[base + "running_mean"] = torch.randn(c)
                out[base + "running_var"] = torch.rand(c) + 0.5
                out[base + "num_batches_tracked"] = torch.tensor(7)
    stage_of = np.repeat(np.arange(7), MAX_DEPTHS)
    widths = [[16, 24]] + [s["width"] for s in net.space.config["stages"]]
    for i in range(37):  # every official block has a residual conv; nasops keeps the used ones
        key = f"blocks.{i}.shortcut.conv.conv.weight"
        if key not in out:
            s = stage_of[i]
            c_in = max(widths[s]) if i == first[s] else max(widths[s + 1])
            out[key] = torch.randn(max(widths[s + 1]), c_in, 1, 1)
    return out


def subnets(space):
    return [A0, space.min_arch(), space.max_arch(), *space.decode_all(space.sample(3, seed=4))]


def test_an_official_state_dict_loads_and_computes_the_same_outputs(tmp_path):
    net = randomised_supernet()
    space = net.space
    official = official_format(net)
    assert len({k.split(".")[1] for k in official if k.startswith("blocks.")}) == 37
    # a released checkpoint: a dict with state_dict, saved from DDP (module. prefix)
    path = tmp_path / "attentive_nas_supernet.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in official.items()}, "epoch": 360}, path)
    loaded = Supernet.from_official(str(path)).eval()
    assert loaded.space.name == "attentive_nas"
    for arch in subnets(space):
        net.set_active(arch)
        loaded.set_active(arch)
        res = net.active_arch.resolution
        x = torch.randn(2, 3, res, res)
        with torch.no_grad():
            assert torch.equal(loaded(x), net(x))


def test_official_state_dict_is_the_official_layout():
    net = randomised_supernet(1)
    expected = official_format(net)
    got = official_state_dict(net)
    assert set(got) == set(expected)
    first_blocks = {f"blocks.{i}." for i in np.cumsum([0] + MAX_DEPTHS[:-1])}
    for key, tensor in expected.items():
        assert got[key].shape == tensor.shape and got[key].dtype == tensor.dtype, key
        unused = "bn_tracking" in key or (key.endswith("shortcut.conv.conv.weight")
                                          and not any(key.startswith(b) for b in first_blocks))
        if not unused:
            assert torch.equal(got[key], tensor), key
    again = Supernet.from_official(got)  # the round trip is exact
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), net.state_dict().values()))


def test_bad_official_state_dicts_raise_naming_the_key(tmp_path):
    net = randomised_supernet(2)
    official = official_format(net)
    key = "blocks.3.mobile_inverted_conv.depth_conv.conv.conv.weight"
    with pytest.raises(ValueError, match=re.escape(f"missing key(s) of an official attentive_nas "
                                                   f"supernet: ['{key}']")):
        Supernet.from_official({k: v for k, v in official.items() if k != key})
    with pytest.raises(ValueError, match=r"unexpected key\(s\).*'blocks\.3\.mobile_inverted_conv\.depth_conv\.conv\.5to3_matrix'"):
        Supernet.from_official(dict(official, **{"blocks.3.mobile_inverted_conv.depth_conv.conv.5to3_matrix": torch.eye(9)}))
    bad = dict(official, **{key: official[key][:, :, 1:4, 1:4]})
    with pytest.raises(ValueError, match=re.escape(f"{key} has shape [192, 1, 3, 3]; an official "
                                                   f"attentive_nas supernet has [192, 1, 5, 5]")):
        Supernet.from_official(bad)
    # the tensors the official forward never reads may be absent
    lean = {k: v for k, v in official.items() if "bn_tracking" not in k}
    Supernet.from_official(lean)
    with pytest.raises(ValueError, match="expected a state dict of tensors"):
        Supernet.from_official({"state_dict": {"a": 1}})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Supernet.from_official(str(tmp_path / "none.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        Supernet.from_official(str(tmp_path / "junk.pth"))
    with pytest.raises(TypeError, match="checkpoint path or a state dict"):
        Supernet.from_official(3)


@pytest.mark.parametrize("resolution, size, offset", [(192, 220, 14), (224, 256, 16),
                                                      (256, 293, 18), (288, 330, 21)])
def test_the_official_evaluation_view(resolution, size, offset):
    """resize to ceil(resolution / 0.875), centre crop (offset rounded as torchvision does)."""
    from nasops.data import eval_resize
    x = torch.randn(2, 3, 40, 40)
    got = eval_resize(x, resolution, 0.875)
    big = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    assert torch.equal(got, big[..., offset:offset + resolution, offset:offset + resolution])
    assert torch.equal(eval_resize(x, resolution), nasops.resize_batch(x, resolution))


def test_convert_then_evaluate_a_released_supernet(tmp_path):
    """The command-line path: convert an official checkpoint (with an ImageNet-layout folder),
    evaluate sub-networks of it; the checkpoint records ImageNet's normalisation and crop."""
    from PIL import Image
    from nasops.train.rundir import load_trained
    from nasops.nn.checkpoint import load_checkpoint
    from nasops.train.convert import main as convert
    from nasops.evaluate.__main__ import main as evaluate
    g = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("n01440764", "n01443537"):
            os.makedirs(tmp_path / "imagenet" / split / c)
            for i in range(n // 2):
                Image.fromarray(g.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
                    tmp_path / "imagenet" / split / c / f"{i}.JPEG")
    net = randomised_supernet(3)
    torch.save({"state_dict": official_format(net)}, tmp_path / "released.pth")
    out = str(tmp_path / "run" / "checkpoint.pt")
    assert convert(["--from-official", str(tmp_path / "released.pth"), "--out", out,
                    "--data-dir", str(tmp_path / "imagenet")]) == 0
    ckpt = load_checkpoint(out)
    cfg = ckpt["config"]
    assert cfg["normalization"] == "imagenet" and cfg["eval_crop"] == 0.875
    assert cfg["dataset"] == "imagenet" and cfg["image_size"] is None
    assert ckpt["converted_from"]["sha256"] and ckpt["space"]["name"] == "attentive_nas"
    _, splits, loaded = load_trained(out)
    assert splits.mean.tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert splits.std.tolist() == pytest.approx([0.229, 0.224, 0.225])
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    evals = str(tmp_path / "evals.json")
    assert evaluate(["--checkpoint", out, "-n", "2", "--out", evals, "--split", "test",
                     "--no-progress"]) == 0
    with open(evals) as f:
        doc = json.load(f)
    assert len(doc["accuracy"]) == 2 and all(a in (0.0, 0.5, 1.0) for a in doc["accuracy"])
    from nasops.search.export import input_spec
    from nasops.search.__main__ import main as search
    spec = input_spec(3, 224, splits)
    # (an image folder: the shorter side of each file to 256, then the centre 224 square)
    assert spec["resize"]["shorter_side"] == 256 and spec["center_crop"]["size"] == [224, 224]
    assert search(["--checkpoint", out, "--budgets", "250", "--population", "4", "--mutations",
                   "1", "--crossovers", "1", "--generations", "1", "--cloud", "0",
                   "--no-export", "--no-progress"]) == 0
    with open(tmp_path / "run" / "search" / "pareto.json") as f:
        (result,) = json.load(f)["results"]
    assert result["flops"] <= 250 and "test_acc" in result
    # bad input says what is wrong
    assert convert(["--from-official", str(tmp_path / "none.pth"), "--out", out]) == 1
