"""Python side of the torch.ops.nasops operators: shape functions for tracing and compilation,
autograd, and the switch between the nasops kernels and the pure-PyTorch path.

``torch.ops.nasops.dw_conv2d(input, weight, kernel_size, stride)``: depthwise convolution of
``input`` [N, C, H, W] with channels [:C] and the centred kernel_size x kernel_size window of the
shared ``weight`` [C_max, 1, K_max, K_max], padding kernel_size // 2. Its backward writes the
weight gradient at the full shared shape, zero outside the active window.

``torch.ops.nasops.bn_act(x, weight, bias, running_mean, running_var, training, momentum, eps,
act)``: batch norm and an activation of a channels-last float32 CPU tensor, with autograd (C++);
returns the output, the batch mean and 1/std it saves. ``torch.ops.nasops.batch_norm_act_``: the
same written over ``x`` itself, without autograd. :func:`batch_norm_act` picks one of them, or
PyTorch's ops where they do not apply.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch._prims_common import suggest_memory_format

from . import _C  # noqa: F401  (registers the operators)

BACKENDS = ("auto", "nasops", "torch")
_backend = os.environ.get("NASOPS_DW_BACKEND", "auto")
if _backend not in BACKENDS:
    raise ValueError(f"NASOPS_DW_BACKEND = {_backend!r} is not allowed; allowed: {list(BACKENDS)}")


def set_dw_backend(name: str) -> str:
    """Selects the depthwise implementation the dynamic layers use: "nasops" (the custom
    kernels), "torch" (slice + F.conv2d, for comparison and debugging) or "auto" (the default:
    the nasops kernels on CPU except where PyTorch's measured faster, :func:`pytorch_is_faster`;
    PyTorch's on CUDA, where the nasops kernels have been verified only through the host
    emulator, never on a GPU). Returns the previous one. The environment variable
    NASOPS_DW_BACKEND sets the initial value."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"depthwise backend {name!r} is not allowed; allowed: {list(BACKENDS)}")
    previous, _backend = _backend, name
    return previous


def uses_nasops_kernels(device) -> bool:
    """Whether :func:`dw_conv2d` runs the nasops kernels on `device` under the current backend."""
    return _backend == "nasops" or (_backend == "auto" and torch.device(device).type != "cuda")


def dw_backend() -> str:
    return _backend


@contextlib.contextmanager
def dw_backend_as(name: str):
    """Within the block, the depthwise backend is `name`; then the one before."""
    previous = set_dw_backend(name)
    try:
        yield
    finally:
        set_dw_backend(previous)


def _out_size(n, stride):
    # the rule's one home, imported late so that `import nasops` stays light
    from .space.cost import out_size
    return out_size(n, stride)


def _dw_format(input, kernel_size):
    """The memory format of the depthwise ops' results: channels-last where the CPU kernels run
    their NHWC path (csrc/kernels/cpu/dw_conv2d.cpp, use_nhwc), else contiguous."""
    n, c, h, w = input.shape
    nhwc = (input.device.type == "cpu" and c > 1 and h * w > 1 and kernel_size <= 63
            and suggest_memory_format(input) == torch.channels_last)
    return torch.channels_last if nhwc else torch.contiguous_format


def _check_dw_shapes(input, weight, kernel_size, stride, op, grad_output=None):
    """The shape rules of the C++ op (csrc/kernels/dw_conv2d.cpp, check_dw_conv2d), for the fake
    kernels: a traced graph fails where the eager op would, with the same message."""
    torch._check(input.dim() == 4,
                 lambda: f"{op}: input must be 4-D [N, C, H, W], got shape {list(input.shape)}")
    torch._check(weight.dim() == 4 and weight.shape[1] == 1 and weight.shape[2] == weight.shape[3],
                 lambda: f"{op}: weight must be the shared [C_max, 1, K_max, K_max] tensor, got "
                         f"shape {list(weight.shape)}")
    k_max = weight.shape[2]
    torch._check(k_max % 2 == 1, lambda: f"{op}: the weight's K_max = {k_max} must be odd")
    torch._check(1 <= kernel_size <= k_max and kernel_size % 2 == 1,
                 lambda: f"{op}: kernel_size = {kernel_size} must be odd and between 1 and "
                         f"K_max = {k_max}")
    torch._check(stride >= 1, lambda: f"{op}: stride = {stride} must be at least 1")
    torch._check(input.shape[1] <= weight.shape[0],
                 lambda: f"{op}: input has C = {input.shape[1]} channels but the weight holds "
                         f"only C_max = {weight.shape[0]}")
    torch._check(input.dtype == weight.dtype,
                 lambda: f"{op}: input dtype {input.dtype} differs from weight dtype {weight.dtype}")
    if grad_output is not None:
        n, c, h, w = input.shape
        expected = [n, c, _out_size(h, stride), _out_size(w, stride)]
        torch._check(list(grad_output.shape) == expected,
                     lambda: f"{op}: grad_output has shape {list(grad_output.shape)}, which is "
                             f"not the output shape of this input")


@torch.library.register_fake("nasops::dw_conv2d")
def _dw_conv2d_fake(input, weight, kernel_size, stride):
    _check_dw_shapes(input, weight, kernel_size, stride, "dw_conv2d")
    n, c, h, w = input.shape
    return input.new_empty(n, c, _out_size(h, stride), _out_size(w, stride)).contiguous(
        memory_format=_dw_format(input, kernel_size))


@torch.library.register_fake("nasops::dw_conv2d_grad_input")
def _grad_input_fake(grad_output, input, weight, kernel_size, stride):
    _check_dw_shapes(input, weight, kernel_size, stride, "dw_conv2d_grad_input", grad_output)
    return torch.empty_like(input, memory_format=_dw_format(input, kernel_size))


@torch.library.register_fake("nasops::dw_conv2d_grad_weight")
def _grad_weight_fake(grad_output, input, weight, kernel_size, stride):
    _check_dw_shapes(input, weight, kernel_size, stride, "dw_conv2d_grad_weight", grad_output)
    return weight.new_empty(weight.shape)


def _check_bn_shapes(x, op, **vectors):
    """The shape rules of the C++ batch norm ops (csrc/kernels/cpu/batch_norm_act.cpp)."""
    torch._check(x.dim() == 4, lambda: f"{op}: x must be 4-D [N, C, H, W], got shape {list(x.shape)}")
    c = x.shape[1]
    for name, t in vectors.items():
        if t is not None:
            torch._check(t.dim() == 1 and t.shape[0] == c,
                         lambda: f"{op}: {name} must have C = {c} values, got shape {list(t.shape)}")


@torch.library.register_fake("nasops::bn_act")
def _bn_act_fake(x, weight, bias, running_mean, running_var, training, momentum, eps, act):
    _check_bn_shapes(x, "bn_act", weight=weight, bias=bias, running_mean=running_mean,
                     running_var=running_var)
    c = x.shape[1]
    return (torch.empty_like(x, memory_format=torch.channels_last), x.new_empty(c),
            x.new_empty(c))


@torch.library.register_fake("nasops::bn_act_backward")
def _bn_act_backward_fake(grad_output, input, weight, bias, save_mean, save_invstd, training, act,
                          output_mask):
    _check_bn_shapes(input, "bn_act_backward", weight=weight, bias=bias, save_mean=save_mean,
                     save_invstd=save_invstd)
    torch._check(grad_output.shape == input.shape,
                 lambda: f"bn_act_backward: grad_output has shape {list(grad_output.shape)} but "
                         f"input has {list(input.shape)}")
    c = input.shape[1]
    return (torch.empty_like(input, memory_format=torch.channels_last) if output_mask[0] else None,
            input.new_empty(c) if output_mask[1] else None,
            input.new_empty(c) if output_mask[2] else None)


@torch.library.register_fake("nasops::batch_norm_act_")
def _batch_norm_act_fake(x, weight, bias, running_mean, running_var, training, momentum, eps, act):
    _check_bn_shapes(x, "batch_norm_act_", weight=weight, bias=bias, running_mean=running_mean,
                     running_var=running_var)
    return None  # (in place)


def _setup_context(ctx, inputs, output):
    input, weight, kernel_size, stride = inputs
    # The input's values only when its weight gradient is asked for (the input gradient needs
    # just its shape and layout); the weight is the shared parameter, alive anyway.
    keep_input = ctx.needs_input_grad[1]
    ctx.save_for_backward(input if keep_input else None, weight)
    if not keep_input:
        ctx.input_like = (input.shape, suggest_memory_format(input), input.dtype, input.device)
    ctx.kernel_size, ctx.stride = kernel_size, stride


def _backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    grad_input = grad_weight = None
    if ctx.needs_input_grad[0]:
        if input is None:  # an uninitialised stand-in of the input's shape and layout
            shape, memory_format, dtype, device = ctx.input_like
            input = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
        grad_input = torch.ops.nasops.dw_conv2d_grad_input(grad_output, input, weight,
                                                           ctx.kernel_size, ctx.stride)
    if ctx.needs_input_grad[1]:
        grad_weight = torch.ops.nasops.dw_conv2d_grad_weight(grad_output, input, weight,
                                                             ctx.kernel_size, ctx.stride)
    return grad_input, grad_weight, None, None


torch.library.register_autograd("nasops::dw_conv2d", _backward, setup_context=_setup_context)


def dw_conv2d_reference(input, weight, kernel_size: int, stride: int):
    """The same operation in pure PyTorch: slice the shared weight, then F.conv2d."""
    channels, k_max = input.shape[1], weight.shape[-1]
    start = (k_max - kernel_size) // 2
    window = weight[:channels, :, start:start + kernel_size, start:start + kernel_size]
    return F.conv2d(input, window, None, stride, kernel_size // 2, groups=channels)


def pytorch_is_faster(input, kernel_size: int) -> bool:
    """Whether PyTorch's depthwise convolution measured faster than the nasops CPU kernels on
    this layer, forward + backward (benchmarks/bench_kernels.py on both instruction sets; the
    ratios are in docs/guides/kernels.md): k = 3 on channels-last tensors, where oneDNN has 3 x 3
    kernels of its own, and, without the AVX-512 kernels, k = 3 on NCHW maps of at most 14 x 14
    pixels. The "auto" backend runs PyTorch's path there."""
    if kernel_size != 3 or input.device.type != "cpu":
        return False
    if input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous():
        return True
    return _C.cpu_isa() != "avx512" and input.shape[-2] * input.shape[-1] <= 14 * 14


def dw_conv2d(input, weight, kernel_size: int, stride: int):
    """Depthwise convolution with the active channels and window of a shared weight, by the
    backend selected with :func:`set_dw_backend` ("auto": the nasops kernels on CPU, except on
    the layers where PyTorch's are faster, :func:`pytorch_is_faster`)."""
    if not uses_nasops_kernels(input.device) or (
            _backend == "auto" and pytorch_is_faster(input, kernel_size)):
        return dw_conv2d_reference(input, weight, kernel_size, stride)
    return torch.ops.nasops.dw_conv2d(input, weight, kernel_size, stride)


_FUSED_ACTS = {nn.SiLU: "silu", nn.ReLU: "relu", nn.Hardswish: "hardswish", nn.Identity: "identity"}


def _fusable(x, weight, bias, training: bool, running_mean, act) -> str | None:
    """The fused operators' name of `act` if they apply to x: a channels-last float32 CPU
    tensor (what they are written for), an affine batch norm, a known activation, and what
    PyTorch's batch norm accepts (more than one value per channel in training mode, running
    statistics in evaluation mode). None otherwise."""
    name = "identity" if act is None else _FUSED_ACTS.get(type(act))
    if (name is None or weight is None or bias is None or x.device.type != "cpu"
            or x.dtype != torch.float32 or x.dim() != 4
            or not x.is_contiguous(memory_format=torch.channels_last)
            or (training and x.numel() <= x.shape[1]) or (not training and running_mean is None)):
        return None
    return name


def batch_norm_act(x, weight, bias, running_mean, running_var, training: bool, momentum: float,
                   eps: float, act: nn.Module | None, overwrite: bool = False):
    """``act(F.batch_norm(x, ...))`` (act None: no activation), fused where it can be: on a
    channels-last float32 CPU tensor, by the nasops operators (docs/guides/speed.md), which
    read and write memory three times forward and five times backward where PyTorch's batch
    norm and activation take six and eight:

    - with autograd, ``torch.ops.nasops.bn_act`` (out of place; its backward recomputes the
      normalised values from x instead of keeping them);
    - without autograd and with ``overwrite=True`` (the caller no longer needs x, a conv's
      output say), ``torch.ops.nasops.batch_norm_act_`` over x itself: what BN re-calibration
      and evaluation run.

    Anything else (CUDA, NCHW, another dtype or activation) is PyTorch's batch norm and
    activation, and x is left as it was."""
    name = _fusable(x, weight, bias, training, running_mean, act)
    if name is None:
        y = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
        return y if act is None else act(y)
    if not torch.is_grad_enabled():
        if overwrite and running_mean is not None:
            torch.ops.nasops.batch_norm_act_(x, weight, bias, running_mean, running_var, training,
                                             momentum, eps, name)
            return x
    return torch.ops.nasops.bn_act(x, weight, bias, running_mean, running_var, training,
                                   momentum, eps, name)[0]
