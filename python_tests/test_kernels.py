import os
import subprocess
import sys

import pytest
import torch

import nasops
from nasops import ops

CUDA = torch.cuda.is_available()
ISAS = nasops._C.cpu_isas()

# (N, C, C_max, H, W, k, K_max, stride): odd sizes, strides 1 and 2, k cropped from larger K_max,
# C not a multiple of 8, batch 1, tiny maps where the kernel overhangs every side.
SHAPES = [
    (2, 5, 8, 9, 9, 3, 7, 1), (1, 13, 16, 11, 7, 5, 7, 2), (3, 24, 24, 8, 8, 7, 7, 1),
    (2, 17, 40, 15, 13, 3, 5, 2), (1, 1, 1, 1, 1, 3, 3, 1), (2, 9, 9, 2, 3, 7, 7, 2),
    (4, 33, 64, 14, 14, 5, 5, 1), (2, 7, 8, 28, 27, 7, 9, 2), (1, 3, 3, 5, 5, 1, 3, 2),
    # output rows of 16 or more run the row kernels (the ones above, the channel-group kernels)
    (2, 5, 8, 37, 35, 3, 7, 1), (1, 6, 6, 41, 40, 5, 5, 2), (2, 3, 4, 33, 64, 7, 7, 2),
    (1, 2, 2, 16, 17, 1, 1, 1), (1, 3, 5, 20, 67, 3, 5, 2), (3, 11, 12, 13, 13, 5, 7, 2),
]


def reference(x, weight, k, s):
    """float64 slice + F.conv2d."""
    return ops.dw_conv2d_reference(x.double(), weight.double(), k, s)


def rel_err(got, expected):
    return ((got.double() - expected).abs().max() / expected.abs().max().clamp(min=1e-30)).item()


@pytest.fixture(params=ISAS)
def isa(request):
    previous = nasops._C.cpu_isa()
    nasops._C.set_cpu_isa(request.param)
    yield request.param
    nasops._C.set_cpu_isa(previous)


def make(shape, layout="contiguous", device="cpu", dtype=torch.float32, seed=0):
    n, c, c_max, h, w, k, k_max, s = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c_max, 1, k_max, k_max, generator=g, dtype=torch.float64)
    x, weight = x.to(device, dtype), weight.to(device, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # a non-contiguous view of a wider tensor
        wide = torch.zeros(n, c, h, 2 * w, device=device, dtype=dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
        assert w == 1 or not x.is_contiguous()
    return x, weight, k, s


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_match_float64(isa, shape, layout):
    x, weight, k, s = make(shape, layout)
    x.requires_grad_(True)
    weight.requires_grad_(True)
    out = torch.ops.nasops.dw_conv2d(x, weight, k, s)
    xr, wr = x.detach().double().requires_grad_(True), weight.detach().double().requires_grad_(True)
    expected = reference(xr, wr, k, s)
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert rel_err(out, expected) < 1e-5
    grad = torch.randn_like(expected)
    out.backward(grad.float())
    expected.backward(grad)
    assert rel_err(x.grad, xr.grad) < 1e-5
    assert weight.grad.shape == weight.shape
    assert rel_err(weight.grad, wr.grad) < 1e-5
    # outside the active channels and window the gradient is exactly zero
    c, k_max = x.shape[1], weight.shape[-1]
    start = (k_max - k) // 2
    mask = torch.ones_like(weight.grad, dtype=torch.bool)
    mask[:c, :, start:start + k, start:start + k] = False
    assert weight.grad[mask].abs().sum() == 0


def test_gradcheck_float64(isa):
    for shape in [(2, 3, 4, 6, 5, 3, 5, 1), (1, 2, 2, 5, 7, 5, 5, 2)]:
        x, weight, k, s = make(shape, dtype=torch.float64)
        x.requires_grad_(True)
        weight.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a, b: torch.ops.nasops.dw_conv2d(a, b, k, s),
                                        (x, weight))


def test_opcheck():
    x, weight, k, s = make((2, 5, 8, 9, 9, 3, 7, 2))
    x.requires_grad_(True)
    weight.requires_grad_(True)
    torch.library.opcheck(torch.ops.nasops.dw_conv2d.default, (x, weight, k, s))


def test_large_shape_accuracy(isa):
    """A realistic layer: the weight gradient sums 16 x 56 x 56 products per tap."""
    x, weight, k, s = make((16, 48, 64, 56, 56, 5, 7, 1))
    weight.requires_grad_(True)
    out = torch.ops.nasops.dw_conv2d(x, weight, k, s)
    wr = weight.detach().double().requires_grad_(True)
    expected = reference(x, wr, k, s)
    grad = torch.randn_like(expected)
    out.backward(grad.float())
    expected.backward(grad)
    assert rel_err(out, expected) < 1e-5 and rel_err(weight.grad, wr.grad) < 1e-5


@pytest.mark.parametrize("call, error, message", [
    (lambda: torch.ops.nasops.dw_conv2d(torch.randn(1, 9, 5, 5), torch.randn(8, 1, 3, 3), 3, 1),
     ValueError, "input has C = 9 channels but the weight holds only C_max = 8"),
    (lambda: torch.ops.nasops.dw_conv2d(torch.randn(1, 4, 5, 5), torch.randn(8, 1, 5, 5), 4, 1),
     ValueError, "kernel_size = 4 must be odd and between 1 and K_max = 5"),
    (lambda: torch.ops.nasops.dw_conv2d(torch.randn(1, 4, 5, 5), torch.randn(8, 1, 5, 5), 7, 1),
     ValueError, "kernel_size = 7 must be odd"),
    (lambda: torch.ops.nasops.dw_conv2d(torch.randn(4, 5, 5), torch.randn(8, 1, 5, 5), 3, 1),
     ValueError, r"input must be 4-D \[N, C, H, W\], got shape \[4, 5, 5\]"),
    (lambda: torch.ops.nasops.dw_conv2d(torch.randn(1, 4, 5, 5), torch.randn(8, 1, 5, 3), 3, 1),
     ValueError, r"weight must be the shared \[C_max, 1, K_max, K_max\] tensor"),
    (lambda: torch.ops.nasops.dw_conv2d(torch.randn(1, 4, 5, 5), torch.randn(8, 1, 4, 4), 3, 1),
     ValueError, "K_max = 4 must be odd"),
    (lambda: torch.ops.nasops.dw_conv2d(torch.randn(1, 4, 5, 5), torch.randn(8, 1, 5, 5), 3, 0),
     ValueError, "stride = 0 must be at least 1"),
    (lambda: torch.ops.nasops.dw_conv2d(torch.randn(1, 4, 5, 5).half(), torch.randn(8, 1, 5, 5).half(), 3, 1),
     TypeError, "dtype Half is not supported on CPU; allowed: float32, float64"),
    (lambda: torch.ops.nasops.dw_conv2d(torch.randn(1, 4, 5, 5), torch.randn(8, 1, 5, 5).double(), 3, 1),
     TypeError, "input dtype Float differs from weight dtype Double"),
    (lambda: torch.ops.nasops.dw_conv2d_grad_input(torch.randn(1, 4, 2, 2), torch.randn(1, 4, 5, 5), torch.randn(8, 1, 5, 5), 3, 1),
     ValueError, "grad_output has shape"),
])
def test_bad_inputs_raise(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_cpu_isa_switch_is_checked():
    with pytest.raises(ValueError, match="CPU kernel ISA 'sse9' is not available"):
        nasops._C.set_cpu_isa("sse9")


def test_backend_switch_gives_the_same_supernet_outputs_and_gradients():
    torch.manual_seed(0)
    space = nasops.SearchSpace.load("small")
    net = nasops.Supernet(space)
    arch = space.decode(space.sample(1, seed=3)[0])
    net.set_active(arch)
    x = torch.randn(4, 3, arch.resolution, arch.resolution)
    results = {}
    for backend in ops.BACKENDS:
        previous = ops.set_dw_backend(backend)
        try:
            net.zero_grad()
            out = net(x)
            out.square().mean().backward()
            results[backend] = (out.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None])
        finally:
            ops.set_dw_backend(previous)
    (a, ga), (b, gb) = results["nasops"], results["torch"]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for g1, g2 in zip(ga, gb):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"depthwise backend 'cudnn' is not allowed"):
        ops.set_dw_backend("cudnn")


def test_backend_environment_variable():
    code = "import nasops; print(nasops.ops.dw_backend())"
    env = {**os.environ, "NASOPS_DW_BACKEND": "torch"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "torch"
    env["NASOPS_DW_BACKEND"] = "fast"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "NASOPS_DW_BACKEND = 'fast' is not allowed" in out.stderr


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_matches_float64(shape, dtype, tol):
    x, weight, k, s = make(shape, device="cuda", dtype=dtype)
    x.requires_grad_(True)
    weight.requires_grad_(True)
    out = torch.ops.nasops.dw_conv2d(x, weight, k, s)
    xr, wr = x.detach().double().requires_grad_(True), weight.detach().double().requires_grad_(True)
    expected = reference(xr, wr, k, s)
    grad = torch.randn_like(expected)
    out.backward(grad.to(dtype))
    expected.backward(grad)
    assert out.dtype == dtype
    assert rel_err(out, expected) < tol
    assert rel_err(x.grad, xr.grad) < tol
    assert rel_err(weight.grad, wr.grad) < tol


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_computes_in_float32(isa, dtype):
    """Under CPU autocast the op gets what autocast's convolutions hand it, a low-precision input
    beside the float32 shared weight, and computes in float32 (the CPU kernels' dtype)."""
    x, weight, k, s = make((2, 5, 8, 9, 9, 3, 7, 2))
    x = x.to(dtype).requires_grad_(True)
    weight.requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        out = torch.ops.nasops.dw_conv2d(x, weight, k, s)
    assert out.dtype == torch.float32
    xr, wr = x.detach().double().requires_grad_(True), weight.detach().double().requires_grad_(True)
    expected = reference(xr, wr, k, s)
    assert rel_err(out, expected) < 1e-5
    grad = torch.randn_like(expected)
    out.backward(grad.float())
    expected.backward(grad)
    assert x.grad.dtype == dtype and rel_err(x.grad, xr.grad) < 1e-2  # rounded to dtype
    assert weight.grad.dtype == torch.float32 and rel_err(weight.grad, wr.grad) < 1e-5
    # outside autocast the same mixed call is refused: the autocast rule is what casts it
    with pytest.raises(TypeError, match="differs from weight dtype"):
        torch.ops.nasops.dw_conv2d(x, weight, k, s)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_autocast_runs_in_the_autocast_dtype(dtype):
    x, weight, k, s = make((2, 5, 8, 9, 9, 3, 7, 2), device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out = torch.ops.nasops.dw_conv2d(x, weight, k, s)
    assert out.dtype == dtype
    assert rel_err(out, reference(x.to(dtype), weight.to(dtype), k, s)) < 2e-2
