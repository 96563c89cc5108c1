"""Damaged files: every kind of file nasops reads, truncated, emptied, bit-flipped and replaced by
a file of another kind, read the way its command reads it. Each damaged file gets a one-line
ValueError / OSError naming it, or, for a flipped bit that leaves a file of its kind (a digit of a
YAML value, a pixel of an image: formats without a checksum), loads as that file; checkpoints,
which carry a checksum, and zip-based files (predictors, released checkpoints, exported weights),
whose records carry CRC-32s, never load damaged. docs/reliability.md reports the counts."""
import json
import os
import pickle
import random
import shutil

import numpy as np
import pytest
import torch

from nasops import SearchSpace, Supernet
from nasops.data import load_dataset
from nasops.data.folders import FolderStream
from nasops.evaluate import read_evaluations, write_evaluations
from nasops.nn.checkpoint import load_supernet
from nasops.nn.official import official_state_dict
from nasops.predictor import AccuracyPredictor
from nasops.search.latency import LatencyTable
from nasops.train.recipe import load_recipe
from nasops.train.rundir import RunDir
from nasops.utils.files import load_tensors

from test_data import write_cifar, write_idx
from test_folders import write_jpegs

FLIPS = 24  # bit flips per kind (each one bit, at a seeded random position)


def load_images(path):
    """An image folder's decoding, as training and evaluation read it."""
    data = load_dataset("imagefolder", "train", os.path.dirname(os.path.dirname(path)))
    return [x for x, _ in FolderStream(data, 4, torch.zeros(3), torch.ones(3), 16).epoch(0)]


def load_cifar(path):
    data = load_dataset("cifar10", "train", os.path.dirname(path))
    return data.images, data.labels, data.classes


def load_idx(path):
    data = load_dataset("fashion-mnist", "train", os.path.dirname(path))
    return data.images, data.labels


def same(a, b) -> bool:
    """Whether two reads gave the same contents (tensors, arrays, containers)."""
    if isinstance(a, (torch.Tensor, np.ndarray)):
        return type(a) is type(b) and a.shape == b.shape and bool((a == b).all())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def kinds(trained, tiny, tmp):
    """{kind: (a valid file's path, the reader, whether damage must always be caught)}."""
    space = SearchSpace.load(tiny)
    archs = space.sample(40, seed=0)
    (tmp / "run").mkdir()
    for name in ("checkpoint.pt", "config.yaml"):  # (copies: the fixture's run stays whole)
        shutil.copy(trained / name, tmp / "run" / name)
    shutil.copy(trained / "config.yaml", tmp / "recipe.yaml")
    shutil.copy(tiny, tmp / "space.yaml")
    out = {"checkpoint": (str(tmp / "run" / "checkpoint.pt"),
                          lambda p: load_supernet(p)[1].state_dict(), True),
           "recipe": (str(tmp / "recipe.yaml"), lambda p: dict(load_recipe(p)), False),
           "space YAML": (str(tmp / "space.yaml"), lambda p: SearchSpace.load(p).config, False),
           "run config.yaml": (str(tmp / "run" / "config.yaml"),
                               lambda p: dict(RunDir(os.path.dirname(p)).read_config()), False)}
    evaluations = str(tmp / "evaluations.json")
    write_evaluations(evaluations, space, archs, np.linspace(0.5, 0.9, 40), "holdout", "test")
    out["evaluations"] = (evaluations, lambda p: read_evaluations(p)[1:], False)
    predictor = str(tmp / "predictor.npz")
    AccuracyPredictor(space, n_estimators=4).fit(archs, np.linspace(0.5, 0.9, 40)).save(predictor)
    out["predictor"] = (predictor, lambda p: AccuracyPredictor.load(p, space).predict(archs), True)
    weights = str(tmp / "state_dict.pt")
    torch.save(torch.nn.Linear(64, 32).state_dict(), weights)
    out["exported state dict"] = (weights, lambda p: load_tensors(p, "exported state dict"), True)
    table = str(tmp / "latency.json")
    LatencyTable.measure(space, repeats=1, warmup=0).save(table)
    out["latency table"] = (table, lambda p: LatencyTable.load(p, space)(archs), False)
    g = np.random.default_rng(0)
    (tmp / "idx").mkdir()
    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(tmp / "idx" / f"{prefix}-images-idx3-ubyte", g.integers(0, 256, (n, 28, 28)))
        write_idx(tmp / "idx" / f"{prefix}-labels-idx1-ubyte", g.integers(0, 10, n))
    out["IDX"] = (str(tmp / "idx" / "train-images-idx3-ubyte"), load_idx, False)
    (tmp / "cifar").mkdir()
    write_cifar(tmp / "cifar", g)
    out["CIFAR batch"] = (str(tmp / "cifar" / "data_batch_1"), load_cifar, False)
    write_jpegs(tmp / "images" / "train", 6, size=(20, 24))
    out["JPEG image"] = (str(tmp / "images" / "train" / "c1" / "00004.jpg"), load_images, False)
    return out


def variants(data: bytes, other: bytes, rng: random.Random, flips: int):
    yield "zero-length", b""
    yield "truncated", data[:len(data) // 2]
    yield "another kind", other
    for i in range(flips):
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        yield f"bit-flip {i}", bytes(flipped)


def test_every_damaged_file_is_named_or_read_as_its_kind(trained, tiny, tmp_path):
    assert_named_or_read(kinds(trained, tiny, tmp_path), FLIPS)


def test_a_damaged_released_checkpoint_is_named(tmp_path):
    """The released AttentiveNAS / AlphaNet supernets' format (the full attentive_nas space:
    fewer flips, each load builds the 100 MB supernet)."""
    path = tmp_path / "alphanet.pth"
    torch.save({"state_dict": official_state_dict(Supernet(SearchSpace.load("attentive_nas")))},
               path)
    (tmp_path / "recipe.yaml").write_text("epochs: 1\n")
    assert_named_or_read({"released checkpoint": (str(path), lambda p: Supernet.from_official(p)
                                                  .state_dict(), True),
                          "recipe": (str(tmp_path / "recipe.yaml"), lambda p: dict(load_recipe(p)),
                                     False)}, 4)


def assert_named_or_read(table: dict, flips: int):
    rng, failures = random.Random(0), []
    names = list(table)
    counts = {}
    for i, kind in enumerate(names):
        path, read, always_caught = table[kind]
        with open(path, "rb") as f:
            good = f.read()
        with open(table[names[(i + 1) % len(names)]][0], "rb") as f:
            other = f.read()
        expected = read(path)  # (the valid file reads)
        for label, data in variants(good, other, rng, flips):
            with open(path, "wb") as f:
                f.write(data)
            try:
                got = read(path)
            except (ValueError, OSError) as e:
                text = str(e)
                if os.path.basename(path) not in text or "\n" in text:
                    failures.append(f"{kind}, {label}: {type(e).__name__}: {text[:300]!r}")
                outcome = "named"
            except Exception as e:  # noqa: BLE001  (anything else is a failure to report)
                failures.append(f"{kind}, {label}: {type(e).__name__} (not a documented type): "
                                f"{str(e)[:200]}")
                outcome = "undocumented"
            else:
                # a flip in bytes the contents do not depend on (zip padding, a YAML comment)
                outcome = "same contents" if same(got, expected) else "read as its kind"
                if outcome != "same contents" and (always_caught or not label.startswith("bit")):
                    failures.append(f"{kind}, {label}: loaded, with other contents")
            counts[kind, outcome] = counts.get((kind, outcome), 0) + 1
        with open(path, "wb") as f:
            f.write(good)
    print(json.dumps({f"{k} {v}": n for (k, v), n in sorted(counts.items())}, indent=1))
    assert not failures, "\n".join(failures)
