import copy

import numpy as np
import pytest
import yaml

import nasops
from nasops import Arch, SearchSpace

# docs/DESIGN.md's table of the AttentiveNAS space (paper, Table 2), typed in again here.
ATTENTIVE_TABLE = [  # width, depth, kernel, expand, se, stride
    ([16, 24], [1, 2], [3, 5], [1], False, 1),
    ([24, 32], [3, 4, 5], [3, 5], [4, 5, 6], False, 2),
    ([32, 40], [3, 4, 5, 6], [3, 5], [4, 5, 6], True, 2),
    ([64, 72], [3, 4, 5, 6], [3, 5], [4, 5, 6], False, 2),
    ([112, 120, 128], [3, 4, 5, 6, 7, 8], [3, 5], [4, 5, 6], True, 1),
    ([192, 200, 208, 216], [3, 4, 5, 6, 7, 8], [3, 5], [6], True, 2),
    ([216, 224], [1, 2], [3, 5], [6], True, 1),
]

# AttentiveNAS-A0 as released (its dict form).
A0 = {"resolution": 192, "width": [16, 16, 24, 32, 64, 112, 192, 216, 1792],
      "depth": [1, 3, 3, 3, 3, 3, 1], "kernel_size": [3, 3, 3, 3, 3, 3, 3],
      "expand_ratio": [1, 4, 4, 4, 4, 6, 6]}


def test_attentive_nas_matches_design_table():
    space = SearchSpace.load("attentive_nas")
    cfg = space.config
    assert cfg["resolution"] == [192, 224, 256, 288]
    assert cfg["stem"]["width"] == [16, 24] and cfg["stem"]["stride"] == 2
    assert cfg["stem"]["kernel_size"] == 3
    assert cfg["head"]["width"] == [1792, 1984] and cfg["head"]["expand_ratio"] == 6
    assert cfg["num_classes"] == 1000 and cfg["in_channels"] == 3
    assert len(cfg["stages"]) == len(ATTENTIVE_TABLE)
    for stage, (w, d, k, e, se, stride) in zip(cfg["stages"], ATTENTIVE_TABLE):
        assert (stage["width"], stage["depth"], stage["kernel_size"], stage["expand_ratio"],
                stage["se"], stage["stride"], stage["act"]) == (w, d, k, e, se, stride, "swish")
    assert space.dim == 1 + 9 + 7 * 3


def test_smallest_and_largest_flops_match_the_paper():
    space = SearchSpace.load("attentive_nas")
    assert round(space.flops(space.min_arch()), 1) == 203.4
    assert round(space.flops(space.max_arch()), 1) == 1939.3
    assert space.min_arch().to_dict() == A0  # the smallest sub-network is AttentiveNAS-A0's config


def test_packaged_spaces_include_a_small_one():
    names = nasops.packaged_spaces()
    assert "attentive_nas" in names
    small = [n for n in names if max(SearchSpace.load(n).config["resolution"]) <= 32]
    assert small, "a space for 28-32 px inputs is packaged"
    space = SearchSpace.load(small[0])
    assert 28 in space.config["resolution"] or 32 in space.config["resolution"]


def test_encode_decode_round_trip():
    space = SearchSpace.load("attentive_nas")
    vec = space.encode(A0)
    assert vec.dtype == np.int64 and vec.shape == (space.dim,)
    assert vec.tolist() == [192, 16, 16, 24, 32, 64, 112, 192, 216, 1792, 1, 3, 3, 3, 3, 3, 1,
                            3, 3, 3, 3, 3, 3, 3, 1, 4, 4, 4, 4, 6, 6]
    assert space.decode(vec).to_dict() == A0
    for row in space.sample(50, seed=3):
        assert np.array_equal(space.encode(space.decode(row)), row)


def test_arch_dict_round_trip_and_integral_floats():
    arch = Arch.from_dict(A0)
    assert arch.to_dict() == A0
    d = arch.to_dict()
    d["width"][0] = 999
    assert arch.width[0] == 16, "to_dict returns a copy"
    as_floats = dict(A0, expand_ratio=[float(v) for v in A0["expand_ratio"]])
    assert Arch.from_dict(as_floats) == arch


def test_validation_names_field_value_and_allowed():
    space = SearchSpace.load("attentive_nas")
    bad = copy.deepcopy(A0)
    bad["width"][3] = 20
    with pytest.raises(ValueError, match=r"width\[3\] \(mb3\) = 20 .*allowed: \[32, 40\]"):
        space.validate(bad)
    with pytest.raises(ValueError, match=r"resolution = 100 .*\[192, 224, 256, 288\]"):
        space.validate(dict(A0, resolution=100))
    with pytest.raises(ValueError, match=r"kernel_size\[6\] \(mb7\) = 7 .*\[3, 5\]"):
        space.validate(dict(A0, kernel_size=[3] * 6 + [7]))
    with pytest.raises(ValueError, match=r"depth has 6 entries; .* expects 7"):
        space.validate(dict(A0, depth=[1, 3, 3, 3, 3, 3]))
    with pytest.raises(ValueError, match=r"unknown keys \['kernel'\]"):
        space.validate(dict(A0, kernel=[3]))
    with pytest.raises(ValueError, match=r"missing keys \['depth'\]"):
        space.validate({k: v for k, v in A0.items() if k != "depth"})
    with pytest.raises(ValueError, match=r"expand_ratio\[1\] = 4.5 is not an integer"):
        Arch.from_dict(dict(A0, expand_ratio=[1, 4.5, 4, 4, 4, 6, 6]))
    with pytest.raises(TypeError, match=r"width\[0\] must be an integer, got str"):
        Arch.from_dict(dict(A0, width=["16"] + A0["width"][1:]))
    with pytest.raises(TypeError, match="resolution must be an integer"):
        Arch.from_dict(dict(A0, resolution=True))
    with pytest.raises(TypeError, match="expected an Arch or a dict"):
        space.validate([1, 2, 3])


def test_encoded_array_checks():
    space = SearchSpace.load("attentive_nas")
    vec = space.encode(A0)
    with pytest.raises(TypeError, match="integer array, got dtype float64"):
        space.flops(vec.astype(np.float64))
    with pytest.raises(ValueError, match=r"shape \[31\] or \[N, 31\]"):
        space.flops(vec[:-1])
    bad = np.stack([vec, vec])
    bad[1, 5] = 65
    with pytest.raises(ValueError, match=r"row 1: width\[4\] = 65 is not allowed; allowed values: \[64, 72\]"):
        space.flops(bad)
    with pytest.raises(ValueError, match="decode takes one"):
        space.decode(np.stack([vec, vec]))


def write_yaml(tmp_path, doc):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("stages"), "required key 'stages' is missing"),
    (lambda d: d.update(colour="red"), r"unknown key\(s\) \['colour'\]"),
    (lambda d: d["stages"][1].update(kernel_size=[3, 4]), r"stages\[1\].kernel_size = \[3, 4\]: kernel sizes must be odd"),
    (lambda d: d["stages"][0].update(stride=3), r"stages\[0\].stride = 3 is not allowed; allowed: \[1, 2\]"),
    (lambda d: d["stages"][2].update(width=[32, 32]), r"stages\[2\].width = \[32, 32\] repeats a value"),
    (lambda d: d["stages"][2].update(depth=[]), r"stages\[2\].depth is empty"),
    (lambda d: d["stages"][2].update(expand_ratio=[0, 4]), "must be positive integers"),
    (lambda d: d["stages"][2].update(se="yes"), r"stages\[2\].se = 'yes' is not allowed"),
    (lambda d: d["stem"].update(act="gelu"), r"stem.act = 'gelu' is not allowed; allowed: \['swish', 'relu', 'hswish'\]"),
    (lambda d: d.update(flops_step=0), "flops_step = 0 must be a positive number"),
    (lambda d: d.update(num_classes=0), "num_classes = 0 must be a positive integer"),
    (lambda d: d["head"].update(width="wide"), r"head.width must be a list of integers"),
    (lambda d: d.update(stages=[]), "stages must be a non-empty list"),
])
def test_bad_space_yaml(tmp_path, packaged_yaml, mutate, message):
    doc = copy.deepcopy(packaged_yaml["small"])
    mutate(doc)
    with pytest.raises(ValueError, match=message):
        SearchSpace.load(write_yaml(tmp_path, doc))


def test_space_loading_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown search space 'attentive'; packaged spaces: \["):
        SearchSpace.load("attentive")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SearchSpace.load(str(tmp_path / "missing.yaml"))
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        SearchSpace.load(str(path))
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        SearchSpace.load(str(path))


def test_user_yaml_and_overrides(tmp_path, packaged_yaml):
    doc = copy.deepcopy(packaged_yaml["small"])
    doc["name"] = "mine"
    space = SearchSpace.load(write_yaml(tmp_path, doc), num_classes=7, in_channels=1)
    assert space.name == "mine" and space.num_classes == 7 and space.in_channels == 1
    small = SearchSpace.load("small")
    arch = small.min_arch()
    head = arch.width[-1]
    stem = arch.width[0] * small.config["stem"]["kernel_size"] ** 2
    assert space.params(arch) == pytest.approx(
        small.params(arch) - head * (small.num_classes - 7) / 1e6 - stem * 2 / 1e6, rel=1e-12)


def test_uniform_sample_checks():
    space = SearchSpace.load("small")
    assert space.sample(0).shape == (0, space.dim)
    with pytest.raises(ValueError, match="n = -1 must be a non-negative integer"):
        space.sample(-1)
    with pytest.raises(ValueError, match=r"seed = -3 must be None or an integer in \[0, 2\*\*64\)"):
        space.sample(3, seed=-3)
    assert np.array_equal(space.sample(20, seed=5), space.sample(20, seed=5))
    assert not np.array_equal(space.sample(20, seed=5), space.sample(20, seed=6))
