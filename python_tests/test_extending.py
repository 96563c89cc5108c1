"""Users' own strategies, losses and datasets: the guide's examples run exactly as printed, the
registries find entry points and refuse what they cannot use, and the built-in names resolve
through the same registries."""
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import nasops
from nasops import data
from nasops.train import losses, strategies as sampling
from nasops.utils.registry import Registry, import_modules

GUIDE = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "guides", "extending.md")
needs_source = pytest.mark.skipif(not os.path.isfile(GUIDE), reason="needs the source tree")


def readme_example(name: str) -> str:
    """The code block of docs/guides/extending.md that follows `<!-- example: NAME -->`."""
    with open(GUIDE) as f:
        text = f.read()
    match = re.search(rf"<!-- example: {re.escape(name)} -->\s*```\w+\n(.*?)```", text, re.S)
    assert match, f"docs/guides/extending.md has no block after <!-- example: {name} -->"
    return match.group(1)


EXAMPLE_MODULES = ("mystrategies.py", "mydata.py", "mylosses.py")


@pytest.fixture()
def examples(tmp_path, monkeypatch):
    """The README's example modules, written to tmp_path and importable from it; their
    registrations are removed afterwards."""
    for name in EXAMPLE_MODULES:
        (tmp_path / name).write_text(readme_example(name))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for registry, name in ((sampling.STRATEGIES, "furthest"), (data.DATASETS, "bars"),
                           (losses.LOSSES, "soft-kl")):
        if name in registry.names():
            registry.unregister(name)
    for module in EXAMPLE_MODULES:
        sys.modules.pop(module[:-3], None)


def test_examples_are_short():
    for name in EXAMPLE_MODULES:
        assert len(readme_example(name).strip().splitlines()) < 30


@needs_source
@pytest.mark.slow
def test_readme_commands_train_and_search_with_the_examples(examples):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    for line in readme_example("custom-run").strip().splitlines():
        out = subprocess.run(line, shell=True, cwd=examples, env=env, capture_output=True,
                             text=True, timeout=900)
        assert out.returncode == 0, f"{line}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    run = examples / "runs" / "bars"
    config = (run / "config.yaml").read_text()
    assert "dataset: bars" in config and "strategy: furthest" in config
    assert "kd: soft-kl" in config and "temperature: 2" in config
    final = json.loads((run / "final.json").read_text())
    assert final["largest_holdout_acc"] > 0.9  # the bars are easy: it learned them
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert isinstance(ckpt["strategy"]["last"], float)  # the strategy's own state was saved
    front = json.loads((run / "search" / "pareto.json").read_text())
    assert front["results"][0]["flops"] <= 5


def test_example_strategy_does_what_it_says(examples):
    import_modules(["mystrategies"])
    space = nasops.SearchSpace.load("small")
    strategy = sampling.build_strategy("furthest", space, seed=0, n_prior=2000)
    picks = space.flops(strategy.sample(200))
    uniform = space.flops(space.sample(200, seed=0))
    # consecutive picks are far apart in FLOPs, much more than consecutive uniform draws
    assert np.abs(np.diff(picks)).mean() > 2 * np.abs(np.diff(uniform)).mean()
    state = strategy.state_dict()
    again = sampling.build_strategy("furthest", space, seed=5, n_prior=2000)
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.sample(5), strategy.sample(5))


def test_example_loss_takes_its_option_from_the_recipe(examples):
    import_modules(["mylosses"])
    from nasops.train.recipe import DEFAULTS, apply_overrides, loss_options
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 10, generator=g, dtype=torch.float64), torch.randn(6, 10, generator=g,
                                                                            dtype=torch.float64)
    cfg = apply_overrides(DEFAULTS, ["kd=soft-kl", "kd_options={temperature: 2}"])
    p, q = torch.softmax(t / 2, 1), torch.softmax(s / 2, 1)  # the formula, written out
    want = 4 * (p * (p.log() - q.log())).sum(1).mean()
    got = losses.distillation_loss("soft-kl", s, t, loss_options(cfg))
    assert torch.allclose(got, want, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="temperature = 0 is not allowed; allowed: a number > 0"):
        apply_overrides(DEFAULTS, ["kd=soft-kl", "kd_options={temperature: 0}"])


def test_example_dataset_loads_as_splits(examples):
    import_modules(["mydata"])
    splits = data.load_splits("bars", holdout=0.1)
    assert (len(splits.train), len(splits.holdout), len(splits.test)) == (900, 100, 200)
    assert splits.train.classes == ["vertical", "horizontal"]
    assert splits.train.images.dtype == torch.uint8 and splits.train.channels == 1


def test_entry_points_register_on_first_lookup(tmp_path, monkeypatch):
    """A package declares a dataset (the object) and a strategy (a module that registers on
    import) as entry points; neither is imported until its name is looked up."""
    (tmp_path / "ep_data.py").write_text(textwrap.dedent("""
        import torch
        from nasops.data import ImageSet

        def tiny(split, root=None, **options):
            images = torch.zeros(20, 1, 8, 8, dtype=torch.uint8)
            return ImageSet(images, torch.arange(20) % 2, ["a", "b"])
        """))
    (tmp_path / "ep_strategies.py").write_text(textwrap.dedent("""
        from nasops.train.strategies import Strategy, register_strategy

        @register_strategy("ep-first")
        class First(Strategy):
            def sample(self, n, loss_fn=None):
                return self.space.sample(n, seed=0)
        """))
    info = tmp_path / "ep_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[nasops.datasets]\nep-tiny = ep_data:tiny\n\n"
                                           "[nasops.strategies]\nep-first = ep_strategies\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "ep-tiny" not in data.DATASETS.names() and "ep_data" not in sys.modules
        assert len(data.load_dataset("ep-tiny", "train")) == 20
        space = nasops.SearchSpace.load("small")
        np.testing.assert_array_equal(
            sampling.build_strategy("ep-first", space, n_prior=2000).sample(3),
            space.sample(3, seed=0))
    finally:
        for registry, name in ((data.DATASETS, "ep-tiny"), (sampling.STRATEGIES, "ep-first")):
            if name in registry.names():
                registry.unregister(name)
        sys.modules.pop("ep_data", None)
        sys.modules.pop("ep_strategies", None)


def test_registry_families_duplicates_and_unknown_names():
    registry = Registry("widget", "widget", "nasops.test-widgets")
    registry.register("plain", object)

    @registry.register("top-{k}-of-{n}")
    def family(**fields):
        return fields
    assert registry.lookup("top-3-of-10") == (family, {"k": 3, "n": 10})
    assert registry.get("plain") is object
    for bad in ("top-0-of-10", "top-3-of-", "top-3-of-10x", "plainer"):
        with pytest.raises(ValueError, match=rf"widget = '{bad}' is not registered; registered: "
                                             r"\['plain', 'top-\{k\}-of-\{n\}'\]"):
            registry.lookup(bad)
    with pytest.raises(ValueError, match="'plain' is already registered"):
        registry.register("plain", dict)
    with pytest.raises(TypeError, match="widget must be a string"):
        registry.lookup(3)
    with pytest.raises(ValueError, match="non-empty string"):
        registry.register(" padded ", object)
    registry.unregister("top-{k}-of-{n}")
    assert registry.names() == ["plain"]
    with pytest.raises(KeyError):
        registry.unregister("top-{k}-of-{n}")


def test_built_in_names_are_registered():
    assert sampling.STRATEGIES.names() == [
        "uniform", "balanced", "bestup-offline", "worstup-offline", "balanced-nao", "bestup-{k}-loss",
        "worstup-{k}-loss", "bestup-{k}-acc", "worstup-{k}-acc"]
    assert losses.LOSSES.names() == ["kl", "alpha"]
    assert data.DATASETS.names() == ["digits", "fashion-mnist", "cifar10", "imagefolder", "imagenet"]


def test_bad_datasets_and_imports_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"dataset = 'mnist' is not registered; registered: "
                                         r"\['digits', 'fashion-mnist'"):
        data.load_dataset("mnist")

    @data.register_dataset("test-not-images")
    def not_images(split, root=None, **options):
        return np.zeros((4, 1, 8, 8))
    try:
        with pytest.raises(TypeError, match="'test-not-images' returned ndarray"):
            data.load_dataset("test-not-images")
    finally:
        data.DATASETS.unregister("test-not-images")
    with pytest.raises(ValueError, match="normalization = 'mine' is not allowed"):
        data.register_dataset("x", normalization="mine")
    from nasops import train
    assert train.main(["--import", "no_such_module_here", "--run-dir", str(tmp_path / "r")]) == 1
    assert "--import no_such_module_here: no module named 'no_such_module_here'" in \
        capsys.readouterr().err
