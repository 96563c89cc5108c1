"""Training losses: label-smoothed cross-entropy for the largest sub-network, and in-place
distillation of the others from its detached logits, by KL or by AlphaNet's adaptive
alpha-divergence.

With p the teacher's and q the student's class probabilities, the alpha-divergence is

    D_alpha(p || q) = 1 / (alpha (alpha - 1)) * sum_i q_i ((p_i / q_i) ** alpha - 1),

which is KL(p || q) at alpha = 1 and KL(q || p) at alpha = 0 (the limits). AlphaNet (Wang et al.,
ICML 2021) trains with max(D_alpha-, D_alpha+) for alpha- < 0 < alpha+ (-1 and 1 by default),
taken per sample, so that a student is penalised both for over- and for under-estimating the
teacher's uncertainty. It clips the importance weights w_i = (p_i / q_i) ** alpha at `clip` (5),
because they explode where the student gives a class almost no probability, in the value (which
therefore picks the alpha) and in the gradient, -(1 / alpha) sum_i min(w_i, clip) q_i d log q_i.
At alpha = 1 (within 1e-3) it is plain KL(p || q), unclipped, in value and gradient. These are
the published code's behaviour (AlphaNet's reference implementation, the f-divergence loss).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..utils.registry import Registry
from ..utils.checks import is_number

# |alpha - 1| (or |alpha|) below this takes the exact-KL branch, as the published code does
_EXACT_KL = 1e-3


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


def _log_softmaxes(student: torch.Tensor, teacher: torch.Tensor):
    """(log p, log q): the teacher's (detached) and the student's log-softmax, finite for any
    finite logits. In float32 at least: in fp16 / bf16 a gap between two logits past the type's
    range gives -inf. A log that still underflows (float32 logits near 1e38) is held at the
    type's lowest number, so that no 0 * -inf term turns the loss into NaN."""
    dtype = torch.promote_types(student.dtype, torch.float32)  # (float32 logits: unchanged)
    lowest = torch.finfo(dtype).min
    log_p = F.log_softmax(teacher.detach().to(dtype), dim=1).clamp(min=lowest)
    log_q = F.log_softmax(student.to(dtype), dim=1).clamp(min=lowest)
    return log_p, log_q


def _saturated(loss: torch.Tensor) -> torch.Tensor:
    """A loss held within its type's range: logits ~1e38 apart make a divergence larger than
    float32 holds, which then saturates at the largest float32 (no gradient) instead of
    becoming inf. Any other value passes unchanged, bit for bit; NaN (from NaN logits) stays."""
    top = torch.finfo(loss.dtype).max
    return loss.clamp(-top, top)


def kl_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the softmaxes, mean over the batch; the teacher is detached.
    Computed in float32 at least, and finite for any finite logits."""
    _check_logits(student, teacher)
    log_p, log_q = _log_softmaxes(student, teacher)
    return _saturated((log_p.exp() * (log_p - log_q)).sum(1).mean())


def _alpha_per_sample(student: torch.Tensor, teacher: torch.Tensor, alpha: float,
                      clip: float | None) -> torch.Tensor:
    """Per-sample D_alpha(teacher || student) as AlphaNet publishes it: [N] values whose
    gradient is the loss's (module docstring)."""
    log_p, log_q = _log_softmaxes(student, teacher)
    if abs(alpha - 1.0) < _EXACT_KL:  # KL(p || q), exact: no importance weight, no clip
        return (log_p.exp() * (log_p - log_q)).sum(1)
    q = log_q.exp()
    with torch.no_grad():
        if abs(alpha) < _EXACT_KL:  # KL(q || p) with the ratio p / q clipped
            log_ratio = log_p - log_q
            if clip is not None:
                log_ratio = log_ratio.clamp(max=math.log(clip))
            value = -(q * log_ratio).sum(1)
            coeff = -q * log_ratio
        else:
            weight = torch.exp(alpha * (log_p - log_q))  # (p / q) ** alpha
            # (unclipped, held finite: an infinite weight times a zero q would be NaN)
            weight = weight.clamp(max=torch.finfo(weight.dtype).max if clip is None else clip)
            value = (q * (weight - 1.0)).sum(1) / (alpha * (alpha - 1.0))
            coeff = -(weight * q) / alpha
    # the value, plus a zero whose gradient is the published one, sum_i coeff_i d(log q_i) (a
    # zero however large coeff is: coeff * log_q itself may overflow when p and q are far apart)
    return value + (coeff * (log_q - log_q.detach())).sum(1)


def alpha_divergence(student: torch.Tensor, teacher: torch.Tensor, alpha: float,
                     clip: float | None = None) -> torch.Tensor:
    """D_alpha(teacher || student) of the softmaxes, mean over the batch, as AlphaNet computes
    it (module docstring): with `clip`, each importance weight (p_i / q_i) ** alpha is clipped to
    at most `clip` in the value and in the gradient alike; alpha = 1 is KL(p || q), exact."""
    _check_logits(student, teacher)
    if clip is not None and not clip > 0:
        raise ValueError(f"importance-weight clip = {clip!r} must be positive")
    return _saturated(_alpha_per_sample(student, teacher, float(alpha), clip).mean())


def adaptive_alpha_divergence(student: torch.Tensor, teacher: torch.Tensor,
                              alpha_min: float = -1.0, alpha_max: float = 1.0,
                              clip: float = 5.0, reduction: str = "mean") -> torch.Tensor:
    """AlphaNet's loss: per sample, the larger of D_alpha_min and D_alpha_max (that one gives
    the sample's value and gradient), then the mean over the batch (``reduction="none"``: the
    per-sample values)."""
    if not (-math.inf < alpha_min < 0.0 < alpha_max < math.inf):
        raise ValueError(f"alpha_min = {alpha_min!r} and alpha_max = {alpha_max!r} must satisfy "
                         f"alpha_min < 0 < alpha_max")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction = {reduction!r} is not allowed; allowed: ['mean', 'none']")
    _check_logits(student, teacher)
    if not clip > 0:
        raise ValueError(f"importance-weight clip = {clip!r} must be positive")
    low = _alpha_per_sample(student, teacher, float(alpha_min), clip)
    high = _alpha_per_sample(student, teacher, float(alpha_max), clip)
    per_sample = torch.where(low.detach() > high.detach(), low, high)
    return _saturated(per_sample if reduction == "none" else per_sample.mean())


@dataclasses.dataclass(frozen=True)
class LossOption:
    """A hyper-parameter that a distillation loss declares: its default, the values it allows
    (``check(value)`` is True for them; ``allowed`` says which in words) and what it does."""
    default: Any
    check: Callable[[Any], bool]
    allowed: str
    help: str


def number_option(default: float, help: str, *, above: float = -math.inf,
                  below: float = math.inf) -> LossOption:
    """A LossOption taking a real number strictly between `above` and `below`."""
    def check(v):
        return not isinstance(v, bool) and isinstance(v, (int, float)) and above < v < below
    bounds = [f"> {above}"] * (above > -math.inf) + [f"< {below}"] * (below < math.inf)
    return LossOption(default, check, "a number" + (" " + " and ".join(bounds) if bounds else ""),
                      help)


@dataclasses.dataclass(frozen=True)
class DistillationLoss:
    """A registered distillation loss: ``fn(student, teacher, **options)`` -> a scalar (the
    teacher's logits are detached), the options it declares, and its weight against the largest
    sub-network's cross-entropy when the recipe's kd_weight is null."""
    fn: Callable
    default_weight: float = 1.0
    options: Mapping[str, LossOption] = dataclasses.field(default_factory=dict)

    def resolve(self, given: Mapping | None = None, where: str = "kd_options") -> dict:
        """The loss's options: `given` over the defaults; ValueError naming an unknown option
        or a value it does not allow."""
        given = {} if given is None else given
        if not isinstance(given, Mapping):
            raise ValueError(f"{where} = {given!r} must be a mapping of option names to values")
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {unknown}; this loss takes "
                             f"{sorted(self.options) or 'none'}")
        for name, value in given.items():
            if not self.options[name].check(value):
                raise ValueError(f"{where}: {name} = {value!r} is not allowed; allowed: "
                                 f"{self.options[name].allowed}")
        return {name: given.get(name, option.default) for name, option in self.options.items()}

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor, options: Mapping | None = None
                 ) -> torch.Tensor:
        return self.fn(student, teacher.detach(), **self.resolve(options))


def _adopt(name: str, fn) -> None:  # an entry point's bare function: weight 1, no options
    register_loss(name)(fn)


LOSSES = Registry("distillation loss", "kd", "nasops.losses", adopt=_adopt)


def register_loss(name: str, default_weight: float = 1.0,
                  options: Mapping[str, LossOption] | None = None):
    """Decorator: registers ``fn(student, teacher, **options) -> scalar`` as the distillation
    loss `name` (the recipe's kd=), weighted `default_weight` unless the recipe sets kd_weight.
    `options` declares its hyper-parameters (name -> :class:`LossOption`); a recipe sets them in
    ``kd_options``, checked before training."""
    if not is_number(default_weight) \
            or not default_weight >= 0:
        raise ValueError(f"default_weight = {default_weight!r} must be a number >= 0")
    options = dict(options or {})
    for key, option in options.items():
        if not isinstance(option, LossOption):
            raise TypeError(f"option {key!r} of loss {name!r} must be a LossOption, got "
                            f"{type(option).__name__}")

    def add(fn):
        try:  # the call the step makes, with every declared option
            inspect.signature(fn).bind(None, None, **{k: o.default for k, o in options.items()})
        except TypeError as e:
            raise TypeError(f"distillation loss {name!r}: {getattr(fn, '__name__', fn)} must take "
                            f"(student, teacher, **options) with the options it declares "
                            f"({sorted(options) or 'none'}): {e}") from None
        LOSSES.register(name, DistillationLoss(fn, float(default_weight), options))
        return fn
    return add


# The published weight is 1 for both; alpha's 0.5 is measured: at 1 the largest sub-network's
# loss stalls in short runs from scratch (docs/guides/training.md: Distillation).
@register_loss("kl", default_weight=1.0)
def _kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return kl_distillation(student, teacher)


@register_loss("alpha", default_weight=0.5, options={
    "alpha_min": number_option(-1.0, "the negative alpha of the adaptive divergence", below=0),
    "alpha_max": number_option(1.0, "the positive alpha of the adaptive divergence", above=0),
    "alpha_clip": number_option(5.0, "clip of the importance weights", above=0)})
def _alpha(student: torch.Tensor, teacher: torch.Tensor, alpha_min: float, alpha_max: float,
           alpha_clip: float) -> torch.Tensor:
    return adaptive_alpha_divergence(student, teacher, alpha_min, alpha_max, alpha_clip)


def distillation_loss(name: str, student: torch.Tensor, teacher: torch.Tensor,
                      options: Mapping | None = None) -> torch.Tensor:
    """The registered distillation loss `name` (a recipe's kd) of student against teacher, with
    its `options` (the defaults where None)."""
    return LOSSES.get(name)(student, teacher, options)


def distillation_weight(name: str, weight: float | None = None) -> float:
    """`weight`, or the loss's default weight when that is None (a recipe's kd_weight: null)."""
    return LOSSES.get(name).default_weight if weight is None else weight
