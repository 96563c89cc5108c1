"""Property-based tests (Hypothesis): random search spaces, recipe overrides, command lines,
architectures and logits. Bad input raises only the documented types (ValueError, TypeError)
with a message that names the bad value; the distillation losses stay finite for any finite
logits in float32, bf16 and fp16. The number of examples per test is MAX_EXAMPLES (the
docs' Reliability page reports the totals)."""
import copy
import math

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from nasops import SearchSpace
from nasops.space import Arch
from nasops.train import loop as train_mod
from nasops.train.losses import LOSSES, adaptive_alpha_divergence, alpha_divergence, kl_distillation
from nasops.train.recipe import KEYS, apply_overrides, load_recipe

from conftest import TINY_SPACE

MAX_EXAMPLES = 300
fuzz = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# values of every YAML type, nested a little: what a typo or a wrong paste gives
scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
           | st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def paths(doc, prefix=()):
    """Every (path of keys and indices) in a nested config."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from paths(v, prefix + (i,))


TINY = yaml.safe_load(TINY_SPACE)
TINY_PATHS = list(paths(TINY))[1:]


def shown(value) -> list[str]:
    """Ways a message may show a value: repr, str, and YAML / JSON-ish spellings."""
    return [repr(value), str(value)] + ([str(value).lower()] if isinstance(value, bool) else [])


@fuzz
@given(st.lists(st.tuples(st.sampled_from(TINY_PATHS), values | st.just("<delete>")),
                min_size=1, max_size=3))
def test_a_damaged_space_raises_naming_the_key(edits):
    doc = copy.deepcopy(TINY)
    for path, value in edits:
        target = doc
        try:
            for key in path[:-1]:
                target = target[key]
            if value == "<delete>":
                del target[path[-1]]
            else:
                target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # (an earlier edit removed or replaced the parent)
    try:
        space = SearchSpace(doc, source="fuzz.yaml")
    except (ValueError, TypeError) as e:
        text = str(e)
        assert "fuzz.yaml" in text and "\n" not in text, text
        return
    # accepted: a space that works end to end
    archs = space.sample(4, seed=0)
    assert np.isfinite(space.flops(archs)).all() and (space.flops(archs) > 0).all()
    assert (space.rows(space.encode(space.decode(archs[0]))) == archs[0]).all()


@fuzz
@given(st.sampled_from(sorted(KEYS)) | st.text(min_size=1, max_size=10), values)
def test_a_bad_override_raises_naming_the_key(key, value):
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    base, item = load_recipe("digits"), f"{key}={text}"
    name = item.partition("=")[0]  # (the key as the command line reads it)
    try:
        cfg = apply_overrides(base, [item])
    except (ValueError, TypeError) as e:
        assert any(k in str(e) for k in shown(name) + shown(item)) and "\n" not in str(e), str(e)
        return
    assert name in cfg and cfg == train_mod.check_config(dict(cfg))


OPTIONS = ["--recipe", "--run-dir", "--resume", "--no-progress", "--import", "--", "-x", "digits",
           "epochs=1", "seed=2", "epochs=-1", "kd=alpha", "kd=nope", "=1", "x=", "lr=1e-3"]


@fuzz
@given(st.lists(st.sampled_from(OPTIONS) | st.text(max_size=8), max_size=6))
def test_the_train_command_line_either_starts_or_says_why(tmp_path_factory, monkeypatch, capsys,
                                                          argv):
    """Random argument lists (options and overrides in any order): the run starts with a
    checked recipe (training itself replaced), or the command exits 1 with one "error:" line,
    or argparse exits 2 with its usage; never another exception."""
    started = []
    monkeypatch.setattr(train_mod, "train", lambda cfg, run_dir, **kw: started.append(cfg) or
                        {"interrupted": 0})
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        code = train_mod.main(argv)
    except SystemExit as e:  # argparse: a bad option
        assert e.code == 2 and "usage:" in capsys.readouterr().err
        return
    err = capsys.readouterr().err.strip()
    if code == 1:
        assert len(err.splitlines()) == 1 and ": error: " in err, err
    else:
        assert code == 130 and len(started) == 1  # (the stub's "interrupted" result)
        train_mod.check_config(dict(started[0]))


SPACE = SearchSpace(TINY, source="tiny")


@fuzz
@given(st.dictionaries(st.sampled_from(["resolution", "width", "depth", "kernel_size",
                                        "expand_ratio", "other"]),
                       values | st.lists(st.integers(-5, 60), max_size=6), max_size=6))
def test_a_bad_architecture_dict_raises_naming_the_field(arch):
    try:
        vec = SPACE.encode(arch)
    except (ValueError, TypeError) as e:
        text = str(e)
        assert any(k in text for k in list(arch) + ["architecture dict", "expected"]), text
        return
    assert (SPACE.encode(SPACE.decode(vec)) == vec).all()


@fuzz
@given(st.lists(st.integers(-2**40, 2**40) | st.sampled_from([8, 12, 16, 24, 1, 2, 3, 5]),
                min_size=0, max_size=SPACE.dim + 2))
def test_a_bad_encoded_architecture_raises(vector):
    rows = np.asarray(vector, dtype=np.int64)
    try:
        flops = SPACE.flops(SPACE.rows(rows))
    except (ValueError, TypeError) as e:
        assert "\n" not in str(e) and str(e), str(e)
        return
    assert rows.shape == (SPACE.dim,) and np.isfinite(flops).all()


def draw_logits(data, dtype, n: int, c: int) -> torch.Tensor:
    """[n, c] logits of `dtype`: any finite values, with ties, huge gaps and one-hot rows among
    them (each a case of its own, so that they come up often)."""
    top = float(torch.finfo(dtype).max)
    finite = st.floats(-top, top, allow_nan=False, allow_infinity=False, width=32)
    kind = data.draw(st.sampled_from(["any", "tie", "one-hot", "huge"]))
    if kind == "tie":
        rows = [[data.draw(finite)] * c for _ in range(n)]
    elif kind == "one-hot":
        big = data.draw(st.sampled_from([1.0, 30.0, 1e4, top]))
        hot = [data.draw(st.integers(0, c - 1)) for _ in range(n)]
        rows = [[big if j == hot[i] else 0.0 for j in range(c)] for i in range(n)]
    elif kind == "huge":
        rows = [[data.draw(st.sampled_from([top, -top, top / 2, 0.0])) for _ in range(c)]
                for _ in range(n)]
    else:
        rows = [[data.draw(finite) for _ in range(c)] for _ in range(n)]
    return torch.tensor(rows, dtype=torch.float32).clamp(-top, top).to(dtype)


LOSS_FUNCTIONS = {"kl": kl_distillation, "alpha (registered)": lambda s, t: LOSSES.get("alpha")(s, t),
                  "adaptive alpha": adaptive_alpha_divergence,
                  "alpha=0.5 clipped": lambda s, t: alpha_divergence(s, t, 0.5, clip=5.0),
                  "alpha=0 clipped": lambda s, t: alpha_divergence(s, t, 0.0, clip=5.0)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(LOSS_FUNCTIONS))
def test_distillation_losses_stay_finite(name, dtype):
    @settings(max_examples=MAX_EXAMPLES // 3, deadline=None, derandomize=True)
    @given(st.data())
    def check(data):
        n, c = data.draw(st.integers(1, 4)), data.draw(st.integers(2, 6))
        teacher = draw_logits(data, dtype, n, c)
        same = data.draw(st.booleans())
        student = (teacher.clone() if same else draw_logits(data, dtype, n, c)).requires_grad_(True)
        loss = LOSS_FUNCTIONS[name](student, teacher)
        loss.backward()
        assert math.isfinite(loss.item()), (student, teacher, loss)
        assert torch.isfinite(student.grad).all(), (student, teacher, student.grad)
        if same:
            assert abs(loss.item()) <= 1e-6, (teacher, loss)  # (D(p || p) = 0)
    check()
