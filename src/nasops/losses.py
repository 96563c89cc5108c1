"""Training losses: label-smoothed cross-entropy for the largest sub-network, and in-place
distillation of the others from its detached logits, by KL or by AlphaNet's adaptive
alpha-divergence.

With p the teacher's and q the student's class probabilities, the alpha-divergence is

    D_alpha(p || q) = 1 / (alpha (alpha - 1)) * sum_i q_i ((p_i / q_i) ** alpha - 1),

which is KL(p || q) at alpha = 1 and KL(q || p) at alpha = 0 (the limits). AlphaNet (Wang et al.,
ICML 2021) trains with max(D_alpha-, D_alpha+) for alpha- < 0 < alpha+ (-1 and 1 by default), so
that a student is penalised both for over- and for under-estimating the teacher's uncertainty,
and clips the importance weights (p_i / q_i) ** alpha of the gradient at `clip` (5) because they
explode where the student gives a class almost no probability.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KD_LOSSES = ("kl", "alpha")


def _check_logits(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(f"student and teacher logits must both be [N, classes], got "
                         f"{list(student.shape)} and {list(teacher.shape)}")


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy against labels smoothed by `smoothing` (mass spread uniformly)."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing = {smoothing!r} must be in [0, 1)")
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)


def kl_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the softmaxes, mean over the batch; the teacher is detached."""
    _check_logits(student, teacher)
    log_p = F.log_softmax(teacher.detach(), dim=1)
    log_q = F.log_softmax(student, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()


def alpha_divergence(student: torch.Tensor, teacher: torch.Tensor, alpha: float,
                     clip: float | None = None) -> torch.Tensor:
    """D_alpha(teacher || student) of the softmaxes, mean over the batch (module docstring).

    The value is the divergence itself. The gradient is that of the divergence, except that with
    `clip` each importance weight (p_i / q_i) ** alpha is first clipped to at most `clip`."""
    _check_logits(student, teacher)
    alpha = float(alpha)
    log_p = F.log_softmax(teacher.detach(), dim=1)
    log_q = F.log_softmax(student, dim=1)
    if alpha == 1.0:  # the limits are the two KL divergences; their gradients are those below
        value = (log_p.exp() * (log_p - log_q)).sum(1)
    elif alpha == 0.0:
        value = (log_q.exp() * (log_q - log_p)).sum(1)
    else:
        ratio = torch.exp(alpha * (log_p - log_q))  # (p / q) ** alpha
        value = (log_q.exp() * (ratio - 1.0)).sum(1) / (alpha * (alpha - 1.0))
    if clip is None:
        return value.mean()
    if not clip > 0:
        raise ValueError(f"importance-weight clip = {clip!r} must be positive")
    # d D / d theta = -(1 / alpha) sum_i w_i q_i d(log q_i) / d theta with w_i = (p_i / q_i) ** alpha
    # (alpha = 0: -sum_i q_i (log p_i - log q_i) d(log q_i) / d theta). A surrogate with that
    # gradient, w clipped, carries the value of the divergence.
    with torch.no_grad():
        q = log_q.exp()
        if alpha == 0.0:
            coeff = -q * (log_p - log_q)  # (no importance weight to clip)
        else:
            weight = torch.exp(alpha * (log_p - log_q)).clamp(max=clip)
            coeff = -(weight * q) / alpha
    surrogate = (coeff * log_q).sum(1).mean()
    return value.mean().detach() + surrogate - surrogate.detach()


def adaptive_alpha_divergence(student: torch.Tensor, teacher: torch.Tensor,
                              alpha_min: float = -1.0, alpha_max: float = 1.0,
                              clip: float = 5.0) -> torch.Tensor:
    """AlphaNet's loss: the larger of D_alpha_min and D_alpha_max (each a batch mean), clipped
    importance weights in its gradient."""
    if not (-math.inf < alpha_min < 0.0 < alpha_max < math.inf):
        raise ValueError(f"alpha_min = {alpha_min!r} and alpha_max = {alpha_max!r} must satisfy "
                         f"alpha_min < 0 < alpha_max")
    low = alpha_divergence(student, teacher, alpha_min, clip)
    high = alpha_divergence(student, teacher, alpha_max, clip)
    return torch.maximum(low, high)


def distillation_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor,
                      alpha_min: float = -1.0, alpha_max: float = 1.0,
                      clip: float = 5.0) -> torch.Tensor:
    """The in-place distillation loss a recipe names: "kl" or "alpha"."""
    if kind == "kl":
        return kl_distillation(student, teacher)
    if kind == "alpha":
        return adaptive_alpha_divergence(student, teacher, alpha_min, alpha_max, clip)
    raise ValueError(f"kd = {kind!r} is not allowed; allowed: {list(KD_LOSSES)}")
