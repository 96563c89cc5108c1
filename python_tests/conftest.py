import os
import sys

import pytest
import yaml

sys.path.insert(0, os.path.dirname(__file__))  # reference.py

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "src", "nasops", "configs")


@pytest.fixture(scope="session")
def packaged_yaml():
    """Raw YAML of every packaged search space, read without nasops."""
    out = {}
    for name in sorted(os.listdir(CONFIGS)):
        if not name.endswith(".yaml"):
            continue  # recipes/
        with open(os.path.join(CONFIGS, name)) as f:
            doc = yaml.safe_load(f)
        if isinstance(doc, dict) and "stages" in doc:
            out[name[:-len(".yaml")]] = doc
    return out


TINY_SPACE = """
name: tiny
in_channels: 1
num_classes: 10
flops_step: 0.1
resolution: [8, 12]
stem: {width: [8, 16], kernel_size: 3, stride: 1, act: swish}
stages:
  - {name: mb1, width: [8, 16], depth: [1, 2], kernel_size: [3, 5], expand_ratio: [1], stride: 1, se: false, act: swish}
  - {name: mb2, width: [16, 24], depth: [1, 2], kernel_size: [3, 5], expand_ratio: [2, 3], stride: 2, se: true, act: swish}
head: {width: [32, 48], expand_ratio: 2, act: swish}
"""


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Path of a search space small enough to train in seconds on 8x8 digits (1,024 sub-networks)."""
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return str(path)


@pytest.fixture(scope="session")
def trained(tiny, tmp_path_factory):
    """A run directory of a supernet of `tiny` trained for 2 epochs on 480 digits (seconds);
    tests read it and write elsewhere."""
    from nasops.train import loop as train_mod
    run = tmp_path_factory.mktemp("run")
    cfg = dict(train_mod.DEFAULTS, recipe="t", space=tiny, limit=480, batch_size=32, epochs=2,
               n_prior=5000, calib_images=128, eval_batch_size=128, lr=0.05)
    train_mod.train(cfg, str(run), progress=False)
    return run
