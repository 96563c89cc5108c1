"""Distillation losses against float64 NumPy references of their formulas."""
import numpy as np
import pytest
import torch

from nasops.losses import (adaptive_alpha_divergence, alpha_divergence, distillation_loss,
                           kl_distillation, smoothed_cross_entropy)


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


def reference_clipped_grad(student, teacher, alpha, clip):
    """d/dz of the divergence with weights (p/q)^alpha clipped: with c_i = -(1/alpha) min(w_i,
    clip) q_i / N and d log q_i / d z_j = [i = j] - q_j, the gradient is c_j - q_j sum_i c_i."""
    p, q = softmax(teacher), softmax(student)
    w = np.minimum((p / q) ** alpha, clip)
    c = -(w * q) / alpha / len(student)
    return c - q * c.sum(1, keepdims=True)


@pytest.fixture
def logits():
    g = np.random.default_rng(0)
    return g.normal(0, 2, (6, 10)), g.normal(0, 2, (6, 10))


def grad_of(fn, student, teacher):
    z = torch.tensor(student, dtype=torch.float64, requires_grad=True)
    value = fn(z, torch.tensor(teacher, dtype=torch.float64))
    value.backward()
    return float(value.detach()), z.grad.numpy()


def test_alpha_one_is_kl(logits):
    s, t = logits
    v1, g1 = grad_of(lambda z, u: alpha_divergence(z, u, 1.0), s, t)
    v2, g2 = grad_of(kl_distillation, s, t)
    assert v1 == pytest.approx(v2, rel=1e-12)
    np.testing.assert_allclose(g1, g2, rtol=1e-10, atol=1e-14)
    assert v2 == pytest.approx(reference_divergence(s, t, 1), rel=1e-10)


@pytest.mark.parametrize("alpha", [-1.0, -0.5, 0.0, 0.3, 0.999, 2.0])
def test_alpha_divergence_matches_its_formula(logits, alpha):
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


@pytest.mark.parametrize("alpha", [-1.0, 0.5, 1.0])
def test_clipped_gradient_and_value(logits, alpha):
    s, t = logits
    value, grad = grad_of(lambda z, u: alpha_divergence(z, u, alpha, clip=1.5), s, t)
    assert value == pytest.approx(reference_divergence(s, t, alpha), rel=1e-9)  # value unclipped
    np.testing.assert_allclose(grad, reference_clipped_grad(s, t, alpha, 1.5), rtol=1e-9, atol=1e-14)
    # the clip is active on this data: the clipped gradient differs from the exact one
    _, exact = grad_of(lambda z, u: alpha_divergence(z, u, alpha), s, t)
    assert np.abs(grad - exact).max() > 1e-4


def test_adaptive_is_the_larger_divergence(logits):
    s, t = logits
    value, _ = grad_of(lambda z, u: adaptive_alpha_divergence(z, u, -1.0, 1.0, 5.0), s, t)
    expected = max(reference_divergence(s, t, -1.0), reference_divergence(s, t, 1.0))
    assert value == pytest.approx(expected, rel=1e-9)
    assert distillation_loss("alpha", torch.tensor(s), torch.tensor(t)).item() == pytest.approx(expected, rel=1e-9)


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
    with pytest.raises(ValueError, match="kd = 'js'"):
        distillation_loss("js", z, z)
    with pytest.raises(ValueError, match=r"\[N, classes\]"):
        kl_distillation(z, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="alpha_min"):
        adaptive_alpha_divergence(z, z, 0.5, 1.0)
    with pytest.raises(ValueError, match="smoothing"):
        smoothed_cross_entropy(z, torch.zeros(2, dtype=torch.long), 1.5)
