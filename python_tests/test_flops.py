import copy

import numpy as np
import pytest
import yaml

from nasops import SearchSpace
from reference import random_arch, reference_cost


def check_against_reference(space, doc, n, seed):
    """n random architectures drawn from the YAML with NumPy: batched C++ cost == reference."""
    rng = np.random.default_rng(seed)
    archs = [random_arch(doc, rng) for _ in range(n)]
    expected = np.array([reference_cost(doc, a) for a in archs])
    encoded = np.stack([space.encode(a) for a in archs])
    np.testing.assert_allclose(space.flops(encoded), expected[:, 0], rtol=1e-9, atol=0)
    np.testing.assert_allclose(space.params(encoded), expected[:, 1], rtol=1e-9, atol=0)
    return archs, expected


@pytest.mark.parametrize("name", ["attentive_nas", "small", "small_wide"])
def test_flops_and_params_equal_the_reference(packaged_yaml, name):
    space = SearchSpace.load(name)
    archs, expected = check_against_reference(space, packaged_yaml[name], 10_000, seed=0)
    # one at a time, and as Arch objects / dicts, gives the same numbers
    for a, (f, p) in zip(archs[:50], expected[:50]):
        assert space.flops(a) == pytest.approx(f, rel=1e-12)
        assert space.params(space.validate(a)) == pytest.approx(p, rel=1e-12)
    assert isinstance(space.flops(archs[0]), float)
    assert space.flops(archs[:3]).shape == (3,)


def test_unusual_space_equals_the_reference(tmp_path, packaged_yaml):
    """Odd resolutions (ceil of n / stride), a stride-2 stem and 1x1-free stages, non-default
    head expansion and classes, and widths that make_divisible rounds."""
    doc = copy.deepcopy(packaged_yaml["small"])
    doc.update(name="odd", resolution=[17, 23, 31], num_classes=13, in_channels=1)
    doc["stem"].update(stride=2, kernel_size=5, width=[12, 20])
    doc["stages"][1].update(width=[20, 28], expand_ratio=[1, 3, 5])
    doc["stages"][2].update(stride=1, width=[28, 36])
    doc["head"].update(expand_ratio=4, width=[100])
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump(doc))
    check_against_reference(SearchSpace.load(str(path)), doc, 3000, seed=1)


def test_flops_grow_with_every_dimension():
    """Moving any one dimension of the smallest sub-network to a larger choice adds FLOPs."""
    space = SearchSpace.load("attentive_nas")
    base = space.encode(space.min_arch())
    for j, choices in enumerate(space.choices):
        if len(choices) > 1:
            bigger = base.copy()
            bigger[j] = choices[-1]
            assert space.flops(bigger) > space.flops(base), space.dim_names[j]
