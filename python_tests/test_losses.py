"""Distillation losses against float64 NumPy references of their formulas."""
import numpy as np
import pytest
import torch

from nasops.train.losses import (LOSSES, LossOption, adaptive_alpha_divergence,
                                 alpha_divergence, distillation_loss, distillation_weight,
                                 kl_distillation, register_loss, smoothed_cross_entropy)
from nasops.train.recipe import DEFAULTS


def softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def reference_divergence(student, teacher, alpha):
    """D_alpha(p || q) = 1 / (alpha (alpha - 1)) sum q ((p / q)^alpha - 1), batch mean, float64."""
    p, q = softmax(teacher), softmax(student)
    if alpha == 1:
        return float((p * np.log(p / q)).sum(1).mean())
    if alpha == 0:
        return float((q * np.log(q / p)).sum(1).mean())
    return float((q * ((p / q) ** alpha - 1)).sum(1).mean() / (alpha * (alpha - 1)))


@pytest.fixture
def logits():
    g = np.random.default_rng(0)
    return g.normal(0, 2, (6, 10)), g.normal(0, 2, (6, 10))


def grad_of(fn, student, teacher):
    z = torch.tensor(student, dtype=torch.float64, requires_grad=True)
    value = fn(z, torch.tensor(teacher, dtype=torch.float64))
    value.backward()
    return float(value.detach()), z.grad.numpy()


@pytest.mark.parametrize("alpha", [-1.0, -0.5, 0.0, 0.3, 0.998, 1.0, 2.0])
def test_alpha_divergence_without_clip_matches_its_formula(logits, alpha):
    s, t = logits
    value, grad = grad_of(lambda z, u: alpha_divergence(z, u, alpha), s, t)
    assert value == pytest.approx(reference_divergence(s, t, alpha), rel=1e-9)
    # unclipped gradient: finite differences of the float64 reference
    eps, numeric = 1e-6, np.zeros_like(s)
    for idx in np.ndindex(*s.shape):
        hi, lo = s.copy(), s.copy()
        hi[idx] += eps
        lo[idx] -= eps
        numeric[idx] = (reference_divergence(hi, t, alpha) - reference_divergence(lo, t, alpha)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)  # (near 1: cancellation)


def published_value(student, teacher, alpha, clip):
    """Per-sample D_alpha as AlphaNet's code computes it, float64: the importance weights
    w = (p / q)^alpha clipped at `clip` in the value too; alpha = 1 exact KL(p || q)."""
    p, q = softmax(teacher), softmax(student)
    if abs(alpha - 1) < 1e-3:
        return (p * np.log(p / q)).sum(1)
    w = np.minimum((p / q) ** alpha, clip)
    return (q * (w - 1)).sum(1) / (alpha * (alpha - 1))


def published_grad(student, teacher, alpha, clip):
    """Per-sample gradient of published_value with respect to the student's logits: with
    c_i = -(1/alpha) min(w_i, clip) q_i (alpha = 1: c_i = -p_i) and d log q_i / d z_j =
    [i = j] - q_j, it is c_j - q_j sum_i c_i."""
    p, q = softmax(teacher), softmax(student)
    c = -p if abs(alpha - 1) < 1e-3 else -np.minimum((p / q) ** alpha, clip) * q / alpha
    return c - q * c.sum(1, keepdims=True)


def cases():
    """Random logits; a confident teacher with a near-uniform student; a confident teacher with
    a confidently wrong student."""
    g = np.random.default_rng(1)
    s, t = g.normal(0, 2, (6, 10)), g.normal(0, 2, (6, 10))
    confident = g.normal(0, 0.5, (6, 10))
    confident[np.arange(6), np.arange(6)] += 12
    near_uniform = g.normal(0, 0.1, (6, 10))
    wrong = g.normal(0, 0.5, (6, 10))
    wrong[np.arange(6), np.arange(6) + 1] += 10
    return {"random": (s, t), "near-uniform student": (near_uniform, confident),
            "confidently wrong student": (wrong, confident)}


@pytest.mark.parametrize("case", list(cases()))
@pytest.mark.parametrize("alpha", [-1.0, -0.5, 0.5, 1.0])
def test_clipped_value_and_gradient_are_the_published_ones(case, alpha):
    s, t = cases()[case]
    value, grad = grad_of(lambda z, u: alpha_divergence(z, u, alpha, clip=5.0), s, t)
    assert value == pytest.approx(published_value(s, t, alpha, 5.0).mean(), rel=1e-9)
    np.testing.assert_allclose(grad, published_grad(s, t, alpha, 5.0) / len(s), rtol=1e-8, atol=1e-13)
    if alpha == 1.0:  # exact KL: the clip changes nothing
        v2, g2 = grad_of(kl_distillation, s, t)
        assert value == pytest.approx(v2, rel=1e-12)
        np.testing.assert_allclose(grad, g2, rtol=1e-10, atol=1e-14)


def test_the_clip_is_active_in_these_cases():
    """(so that the tests above could tell a clipped value from the exact divergence)"""
    s, t = cases()["near-uniform student"]
    exact = (softmax(s) * ((softmax(t) / softmax(s)) ** -1.0 - 1)).sum(1) / 2
    assert exact.max() > 1e3 and published_value(s, t, -1.0, 5.0).max() <= 2.0


@pytest.mark.parametrize("case", list(cases()))
def test_adaptive_picks_per_sample_the_larger_published_divergence(case):
    s, t = cases()[case]
    low, high = published_value(s, t, -1.0, 5.0), published_value(s, t, 1.0, 5.0)
    pick_low = low > high
    z = torch.tensor(s, requires_grad=True)
    per_sample = adaptive_alpha_divergence(z, torch.tensor(t), -1.0, 1.0, 5.0, reduction="none")
    np.testing.assert_allclose(per_sample.detach().numpy(), np.where(pick_low, low, high), rtol=1e-9)
    per_sample.mean().backward()
    expected = np.where(pick_low[:, None], published_grad(s, t, -1.0, 5.0),
                        published_grad(s, t, 1.0, 5.0)) / len(s)
    np.testing.assert_allclose(z.grad.numpy(), expected, rtol=1e-8, atol=1e-13)
    if case != "random":  # the published code picks KL for every sample here
        assert not pick_low.any()
    else:
        assert 0 < pick_low.sum() < len(s)  # both alphas are picked: the choice is per sample
    value = distillation_loss("alpha", torch.tensor(s), torch.tensor(t)).item()
    assert value == pytest.approx(np.maximum(low, high).mean(), rel=1e-9)


def test_teacher_gets_no_gradient(logits):
    s, t = (torch.tensor(a, requires_grad=True) for a in logits)
    for kind in ("kl", "alpha"):
        distillation_loss(kind, s, t).backward()
        assert t.grad is None and s.grad is not None


def test_smoothed_cross_entropy(logits):
    s, _ = logits
    labels = np.arange(6) % 10
    logp = np.log(softmax(s))
    target = np.full_like(logp, 0.1 / 10)
    target[np.arange(6), labels] += 0.9
    expected = -(target * logp).sum(1).mean()
    got = smoothed_cross_entropy(torch.tensor(s), torch.tensor(labels), 0.1).item()
    assert got == pytest.approx(expected, rel=1e-10)


def test_bad_inputs_raise():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"kd = 'js' is not registered; registered: \['kl', 'alpha'"):
        distillation_loss("js", z, z)
    with pytest.raises(ValueError, match=r"\[N, classes\]"):
        kl_distillation(z, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="alpha_min"):
        adaptive_alpha_divergence(z, z, 0.5, 1.0)
    with pytest.raises(ValueError, match="reduction = 'sum' is not allowed"):
        adaptive_alpha_divergence(z, z, reduction="sum")
    with pytest.raises(ValueError, match="clip = 0"):
        alpha_divergence(z, z, 0.5, clip=0)
    with pytest.raises(ValueError, match="smoothing"):
        smoothed_cross_entropy(z, torch.zeros(2, dtype=torch.long), 1.5)


def test_registered_losses_and_their_default_weights():
    assert distillation_weight("kl") == 1.0
    assert distillation_weight("alpha") == 0.5
    assert distillation_weight("alpha", 2.0) == 2.0
    s, t = torch.randn(4, 10, dtype=torch.float64), torch.randn(4, 10, dtype=torch.float64)
    assert distillation_loss("kl", s, t) == kl_distillation(s, t)

    @register_loss("test-l2", default_weight=0.25)
    def l2(student, teacher):
        return ((student - teacher) ** 2).mean()
    try:
        assert distillation_loss("test-l2", s, t) == ((s - t) ** 2).mean()
        assert distillation_weight("test-l2") == 0.25
        with pytest.raises(ValueError, match="'test-l2' is already registered"):
            register_loss("test-l2")(kl_distillation)
        register_loss("test-l2", default_weight=0.5)(l2)  # the same definition again: replaced
        assert distillation_weight("test-l2") == 0.5
    finally:
        LOSSES.unregister("test-l2")
    assert "test-l2" not in LOSSES.names()


def test_a_loss_declares_its_options_and_a_recipe_sets_them():
    """A plug-in loss's hyper-parameter: declared with the loss (default, check, help), set in a
    recipe's kd_options, checked before training, reaching the loss; no core file edited."""
    from nasops.train.losses import number_option
    from nasops.train.recipe import apply_overrides, loss_options
    s, t = torch.randn(4, 10, dtype=torch.float64), torch.randn(4, 10, dtype=torch.float64)

    @register_loss("test-pow", options={"power": number_option(2.0, "the exponent", above=0)})
    def pow_loss(student, teacher, power):
        return (student - teacher).abs().pow(power).mean()
    try:
        assert distillation_loss("test-pow", s, t) == (s - t).abs().pow(2.0).mean()  # default
        cfg = apply_overrides(DEFAULTS, ["kd=test-pow", "kd_options={power: 3}"])
        assert loss_options(cfg) == {"power": 3}
        assert distillation_loss("test-pow", s, t, loss_options(cfg)) == (s - t).abs().pow(3).mean()
        with pytest.raises(ValueError, match=r"power = -1 is not allowed; allowed: a number > 0"):
            apply_overrides(DEFAULTS, ["kd=test-pow", "kd_options={power: -1}"])
        with pytest.raises(ValueError, match=r"unknown option\(s\) \['gamma'\]; this loss takes \['power'\]"):
            apply_overrides(DEFAULTS, ["kd=test-pow", "kd_options={gamma: 1}"])
        with pytest.raises(ValueError, match="must be a mapping"):
            apply_overrides(DEFAULTS, ["kd=test-pow", "kd_options=3"])
        with pytest.raises(ValueError, match="unknown option"):  # kl takes none
            apply_overrides(DEFAULTS, ["kd=kl", "kd_options={power: 3}"])
    finally:
        LOSSES.unregister("test-pow")


def test_the_alpha_options_are_recipe_keys_and_checked_by_the_loss():
    from nasops.train.recipe import apply_overrides, loss_options
    cfg = apply_overrides(DEFAULTS, ["kd=alpha", "alpha_min=-0.5", "alpha_clip=3"])
    assert loss_options(cfg) == {"alpha_min": -0.5, "alpha_max": 1.0, "alpha_clip": 3}
    s, t = torch.randn(4, 10, dtype=torch.float64), torch.randn(4, 10, dtype=torch.float64)
    assert distillation_loss("alpha", s, t, loss_options(cfg)) == adaptive_alpha_divergence(
        s, t, -0.5, 1.0, 3)
    with pytest.raises(ValueError, match=r"alpha_min = 0.5 is not allowed; allowed: a number < 0"):
        apply_overrides(DEFAULTS, ["alpha_min=0.5"])  # checked whatever kd is, as before
    with pytest.raises(ValueError, match=r"\['alpha_min'\] are recipe keys"):
        apply_overrides(DEFAULTS, ["kd=alpha", "kd_options={alpha_min: -0.5}"])


def test_a_loss_without_the_options_protocol_is_refused_when_registered():
    with pytest.raises(TypeError, match=r"must take \(student, teacher, \*\*options\)"):
        @register_loss("test-old")
        def old(student, teacher, cfg):  # the protocol before kd_options
            return student.sum()
    with pytest.raises(TypeError, match="must take"):
        register_loss("test-old", options={"beta": LossOption(1, bool, "any", "b")})(
            lambda student, teacher: student.sum())
    with pytest.raises(TypeError, match="must be a LossOption"):
        register_loss("test-old", options={"beta": 1})
    assert "test-old" not in LOSSES.names()
