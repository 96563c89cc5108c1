import os
import sys

import pytest
import yaml

sys.path.insert(0, os.path.dirname(__file__))  # reference.py

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "nasops", "configs")


@pytest.fixture(scope="session")
def packaged_yaml():
    """Raw YAML of every packaged search space, read without nasops."""
    out = {}
    for name in sorted(os.listdir(CONFIGS)):
        with open(os.path.join(CONFIGS, name)) as f:
            doc = yaml.safe_load(f)
        if isinstance(doc, dict) and "stages" in doc:
            out[name[:-len(".yaml")]] = doc
    return out
