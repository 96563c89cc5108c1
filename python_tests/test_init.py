"""Warm start (recipe key `init`): a new run starts from a trained supernet's weights, a nasops
checkpoint or a released official one; tensors shaped by the data (input channels, classes) are
re-initialised and named; another space, a missing or foreign file stop the run before its
directory is made."""
import json
import os

import pytest
import torch

import nasops
from nasops.nn.checkpoint import FORMAT, save_checkpoint, warm_start
from nasops.train import loop as train_mod


def nasops_checkpoint(path, space):
    torch.manual_seed(1)
    net = nasops.Supernet(space)
    for value in net.state_dict().values():  # (BN statistics too: all of it must arrive)
        if value.is_floating_point():
            value.normal_()
    save_checkpoint(str(path), {"format": FORMAT, "space": space.config, "model": net.state_dict(),
                                "config": dict(train_mod.DEFAULTS)})
    return net.state_dict()


@pytest.mark.parametrize("change,kept", [
    ({}, []),
    ({"num_classes": 4}, ["classifier.weight", "classifier.bias"]),
    ({"in_channels": 1}, ["stem.weight"]),
])
def test_weights_arrive_and_data_shaped_tensors_are_reinitialised(tmp_path, change, kept):
    source = nasops_checkpoint(tmp_path / "a.pt", nasops.SearchSpace.load("small"))
    torch.manual_seed(2)
    net = nasops.Supernet(nasops.SearchSpace.load("small", **change))
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    assert warm_start(net, str(tmp_path / "a.pt")) == kept
    for key, value in net.state_dict().items():
        assert torch.equal(value, fresh[key] if key in kept else source[key]), key


@pytest.mark.parametrize("classifier,data,reset", [
    ("auto", {"dataset": "digits", "data_dir": None}, False),   # the init's own data (DEFAULTS)
    ("auto", {"dataset": "fashion-mnist", "data_dir": "/d"}, True),  # other classes, same count
    ("auto", None, True),
    ("keep", {"dataset": "fashion-mnist", "data_dir": "/d"}, False),
    ("reset", {"dataset": "digits", "data_dir": None}, True),
])
def test_the_classifier_is_reinitialised_for_other_data(tmp_path, classifier, data, reset):
    source = nasops_checkpoint(tmp_path / "a.pt", nasops.SearchSpace.load("small"))
    torch.manual_seed(2)
    net = nasops.Supernet(nasops.SearchSpace.load("small"))
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    kept = ["classifier.weight", "classifier.bias"] if reset else []
    assert warm_start(net, str(tmp_path / "a.pt"), classifier, data) == kept
    for key, value in net.state_dict().items():
        assert torch.equal(value, fresh[key] if key in kept else source[key]), key
    with pytest.raises(ValueError, match=r"classifier = 'new' is not allowed; allowed: \['auto'"):
        warm_start(net, str(tmp_path / "a.pt"), "new", data)


def test_a_released_official_supernet_warm_starts_another_number_of_classes(tmp_path):
    space = nasops.SearchSpace.load("attentive_nas")
    torch.manual_seed(3)
    released = nasops.Supernet(space)
    torch.save({"state_dict": nasops.official_state_dict(released)}, tmp_path / "alphanet.pth")
    net = nasops.Supernet(nasops.SearchSpace.load("attentive_nas", num_classes=10))
    assert warm_start(net, str(tmp_path / "alphanet.pth")) == ["classifier.weight",
                                                              "classifier.bias"]
    same = nasops.Supernet(space)  # ImageNet's 1,000 classes: kept for an imagenet run only
    assert warm_start(same, str(tmp_path / "alphanet.pth"), "auto", {"dataset": "imagenet"}) == []
    assert warm_start(same, str(tmp_path / "alphanet.pth"), "auto",
                      {"dataset": "imagefolder"}) == ["classifier.weight", "classifier.bias"]
    for key, value in released.state_dict().items():
        if not key.startswith("classifier"):
            assert torch.equal(net.state_dict()[key], value), key
    with pytest.raises(ValueError, match="released AttentiveNAS/AlphaNet supernet, whose space is "
                                         "attentive_nas; this run's space is 'small'"):
        warm_start(nasops.Supernet(nasops.SearchSpace.load("small")), str(tmp_path / "alphanet.pth"))


def test_bad_init_files_are_refused_naming_them(tmp_path):
    nasops_checkpoint(tmp_path / "wide.pt", nasops.SearchSpace.load("small_wide"))
    net = nasops.Supernet(nasops.SearchSpace.load("small"))
    with pytest.raises(ValueError, match=r"wide.pt' was trained on another search space "
                                         r"\('small_wide'; its \['head', 'resolution', 'stages', 'stem'\] "
                                         r"differ from this run's 'small'\)"):
        warm_start(net, str(tmp_path / "wide.pt"))
    with pytest.raises(FileNotFoundError, match="checkpoint \\(init\\) '.*none.pt' does not exist"):
        warm_start(net, str(tmp_path / "none.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk.pt is not a readable checkpoint \(init\)"):
        warm_start(net, str(tmp_path / "junk.pt"))


def test_a_run_starts_from_init_and_a_bad_init_makes_no_run_directory(tmp_path, tiny):
    cfg = dict(train_mod.DEFAULTS, recipe="test", space=tiny, limit=160, batch_size=32, epochs=1,
               num_sampled=1, n_prior=5000, calib_images=64, eval_batch_size=128, eval_every=0)
    first = tmp_path / "first"
    train_mod.train(dict(cfg, seed=5), str(first), progress=False)
    trained = torch.load(first / "checkpoint.pt", weights_only=True)["model"]
    runs = {}
    for name, init in (("warm", str(first / "checkpoint.pt")), ("scratch", None)):
        train_mod.train(dict(cfg, init=init), str(tmp_path / name), progress=False,
                        stop_after_steps=1)
        runs[name] = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["model"]
    lines = [json.loads(line) for line in (tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()]
    assert {"event": "init", "from": str(first / "checkpoint.pt"), "reinitialised": []} in lines
    assert not any(line.get("event") == "init" for line in map(
        json.loads, (tmp_path / "scratch" / "metrics.jsonl").read_text().splitlines()))
    # one step (learning rate warming up from 0.001 x lr) from the first run's weights: far closer
    # to them than the same step from the run's own initialisation
    for key in ("stem.weight", "stages.0.0.project.weight", "classifier.weight"):
        warm = (runs["warm"][key] - trained[key]).abs().max()
        scratch = (runs["scratch"][key] - trained[key]).abs().max()
        assert warm < scratch / 100, (key, warm, scratch)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        train_mod.train(dict(cfg, init=str(tmp_path / "missing.pt")), str(tmp_path / "third"),
                        progress=False)
    assert not os.path.exists(tmp_path / "third")
    with pytest.raises(ValueError, match=r"init = 3 is not allowed; allowed: a path or null"):
        train_mod.check_config(dict(cfg, init=3))
