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
# C not a multiple of 8 or 16, batch 1, tiny maps where the kernel overhangs every side. Layers
# with Ho * Wo * k * k < 1024 run the channel-group kernels, the others the flat-grid ones.
SHAPES = [
    (2, 5, 8, 9, 9, 3, 7, 1), (1, 13, 16, 11, 7, 5, 7, 2), (3, 24, 24, 8, 8, 7, 7, 1),
    (2, 17, 40, 15, 13, 3, 5, 2), (1, 1, 1, 1, 1, 3, 3, 1), (2, 9, 9, 2, 3, 7, 7, 2),
    (4, 33, 64, 14, 14, 5, 5, 1), (2, 7, 8, 28, 27, 7, 9, 2), (1, 3, 3, 5, 5, 1, 3, 2),
    # wide maps (flat grid; so do the 8 x 8 k = 7 and 14 x 14 k = 5 layers above)
    (2, 5, 8, 37, 35, 3, 7, 1), (1, 6, 6, 41, 40, 5, 5, 2), (2, 3, 4, 33, 64, 7, 7, 2),
    (1, 2, 2, 16, 17, 1, 1, 1), (1, 3, 5, 20, 67, 3, 5, 2), (3, 11, 12, 13, 13, 5, 7, 2),
    # stride 3: flat grid, then channel groups
    (2, 4, 4, 20, 19, 5, 5, 3), (1, 3, 3, 10, 10, 3, 3, 3),
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


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_float64(isa, layout):
    for shape in [(2, 3, 4, 6, 5, 3, 5, 1), (1, 2, 2, 5, 7, 5, 5, 2), (2, 19, 20, 7, 6, 3, 5, 2)]:
        x, weight, k, s = make(shape, layout, dtype=torch.float64)
        x.requires_grad_(True)
        weight.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a, b: torch.ops.nasops.dw_conv2d(a, b, k, s),
                                        (x, weight))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(layout):
    x, weight, k, s = make((2, 5, 8, 9, 9, 3, 7, 2), layout)
    x.requires_grad_(True)
    weight.requires_grad_(True)
    torch.library.opcheck(torch.ops.nasops.dw_conv2d.default, (x, weight, k, s))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_shape_accuracy(isa, layout):
    """A realistic layer: the weight gradient sums 16 x 56 x 56 products per tap."""
    x, weight, k, s = make((16, 48, 64, 56, 56, 5, 7, 1), layout)
    weight.requires_grad_(True)
    out = torch.ops.nasops.dw_conv2d(x, weight, k, s)
    wr = weight.detach().double().requires_grad_(True)
    expected = reference(x, wr, k, s)
    grad = torch.randn_like(expected)
    out.backward(grad.float())
    expected.backward(grad)
    assert rel_err(out, expected) < 1e-5 and rel_err(weight.grad, wr.grad) < 1e-5


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_results_do_not_depend_on_the_thread_count(layout):
    """Forward, input and weight gradient bitwise the same on 1, 2 and 3 threads (the weight
    gradient sums fixed blocks of rows in a fixed order)."""
    x, weight, k, s = make((8, 40, 48, 29, 29, 5, 5, 2), layout)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    grad = torch.randn(8, 40, 15, 15, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=memory_format)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append((torch.ops.nasops.dw_conv2d(x, weight, k, s),
                            torch.ops.nasops.dw_conv2d_grad_input(grad, x, weight, k, s),
                            torch.ops.nasops.dw_conv2d_grad_weight(grad, x, weight, k, s)))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


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


# The CUDA kernels' source run by the host grid emulator (csrc/kernels/cuda/dw_conv2d_emulated.cpp):
# every block and thread, phase by phase, shared memory starting as NaN, threads in either order.
EMULATED = [(torch.float32, 1e-5, False, "contiguous"), (torch.float32, 1e-5, True, "channels_last"),
            (torch.float64, 1e-12, False, "contiguous"), (torch.float64, 1e-12, True, "strided"),
            (torch.float16, 2e-3, False, "contiguous"), (torch.bfloat16, 1.6e-2, True, "channels_last")]


@pytest.mark.parametrize("dtype, tol, reverse, layout", EMULATED)
@pytest.mark.parametrize("shape", SHAPES)
def test_emulated_cuda_kernels_match_float64(shape, dtype, tol, reverse, layout):
    x, weight, k, s = make(shape, layout=layout, dtype=dtype)
    xr = x.double().requires_grad_(True)
    wr = weight.double().requires_grad_(True)
    expected = reference(xr, wr, k, s)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected.backward(grad.double())
    ops_ = torch.ops.nasops
    out = ops_.emulated_dw_conv2d(x, weight, k, s, reverse)
    grad_input = ops_.emulated_dw_conv2d_grad_input(grad, x, weight, k, s, reverse)
    grad_weight = ops_.emulated_dw_conv2d_grad_weight(grad, x, weight, k, s, reverse)
    assert out.dtype == grad_input.dtype == grad_weight.dtype == dtype
    assert rel_err(out, expected.detach()) < tol
    assert rel_err(grad_input, xr.grad) < tol
    assert rel_err(grad_weight, wr.grad) < tol
    window = torch.zeros_like(weight, dtype=torch.bool)
    start = (weight.shape[-1] - k) // 2
    window[:x.shape[1], :, start:start + k, start:start + k] = True
    assert (grad_weight[~window] == 0).all()  # exactly zero outside the active window


def test_emulated_cuda_kernels_large_layer():
    """More tiles than one block row and one tile column, 147 (image, tile) steps per channel in
    the weight gradient."""
    x, weight, k, s = make((3, 10, 16, 56, 70, 5, 7, 1))
    xr, wr = x.double().requires_grad_(True), weight.double().requires_grad_(True)
    expected = reference(xr, wr, k, s)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2))
    expected.backward(grad.double())
    assert rel_err(torch.ops.nasops.emulated_dw_conv2d(x, weight, k, s), expected.detach()) < 1e-5
    assert rel_err(torch.ops.nasops.emulated_dw_conv2d_grad_input(grad, x, weight, k, s), xr.grad) < 1e-5
    assert rel_err(torch.ops.nasops.emulated_dw_conv2d_grad_weight(grad, x, weight, k, s), wr.grad) < 1e-5


@pytest.mark.parametrize("call, error, message", [
    (lambda: torch.ops.nasops.emulated_dw_conv2d(torch.randn(1, 4, 9, 9), torch.randn(8, 1, 11, 11), 11, 1),
     ValueError, "kernel_size = 11 is larger than the CUDA kernels' limit of 9"),
    (lambda: torch.ops.nasops.emulated_dw_conv2d(torch.randn(1, 9, 5, 5), torch.randn(8, 1, 3, 3), 3, 1),
     ValueError, "input has C = 9 channels but the weight holds only C_max = 8"),
    (lambda: torch.ops.nasops.emulated_dw_conv2d(torch.randn(1, 4, 5, 5).half(), torch.randn(8, 1, 3, 3), 3, 1),
     TypeError, "input dtype Half differs from weight dtype Float"),
    (lambda: torch.ops.nasops.emulated_dw_conv2d_grad_input(torch.randn(1, 4, 2, 2), torch.randn(1, 4, 5, 5), torch.randn(8, 1, 5, 5), 3, 1),
     ValueError, "grad_output has shape"),
])
def test_emulated_cuda_kernels_check_their_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_auto_backend_uses_the_nasops_kernels_on_cpu_only():
    """The default depthwise backend runs the nasops kernels on CPU and PyTorch's path on CUDA
    (until the CUDA kernels have run on a GPU); "nasops" and "torch" hold on every device."""
    assert os.environ.get("NASOPS_DW_BACKEND") or ops.dw_backend() == "auto"
    expected = {"auto": (True, False), "nasops": (True, True), "torch": (False, False)}
    previous = ops.dw_backend()
    try:
        for backend, (cpu, cuda) in expected.items():
            ops.set_dw_backend(backend)
            assert ops.uses_nasops_kernels("cpu") == cpu
            assert ops.uses_nasops_kernels("cuda:1") == cuda
            x, weight, k, s = make((2, 5, 8, 9, 9, 5, 7, 1))
            with torch.profiler.profile() as profile:
                ops.dw_conv2d(x, weight, k, s)
            ran = any(e.name == "nasops::dw_conv2d" for e in profile.events())
            assert ran == cpu
    finally:
        ops.set_dw_backend(previous)


def ran_nasops_kernels(x, weight, k, s):
    with torch.profiler.profile() as profile:
        out = ops.dw_conv2d(x, weight, k, s)
    torch.testing.assert_close(out, ops.dw_conv2d_reference(x, weight, k, s), rtol=1e-5, atol=1e-5)
    return any(e.name == "nasops::dw_conv2d" for e in profile.events())


def test_auto_backend_leaves_the_measured_shapes_to_pytorch(isa):
    """"auto" on CPU: k = 3 channels-last layers, and k = 3 NCHW maps up to 14 x 14 with the
    AVX2 or portable kernels, run PyTorch's path (measured faster: ops.pytorch_is_faster); the
    rest the nasops kernels; "nasops" forces the kernels everywhere."""
    assert ops.dw_backend() == "auto" or os.environ.get("NASOPS_DW_BACKEND")
    with ops.dw_backend_as("auto"):
        for shape, layout, nasops_runs in (
                ((2, 8, 8, 9, 9, 3, 5, 1), "channels_last", False),
                ((2, 8, 8, 9, 9, 5, 5, 1), "channels_last", True),
                ((2, 8, 8, 14, 14, 3, 5, 2), "contiguous", isa == "avx512"),
                ((2, 8, 8, 15, 15, 3, 5, 1), "contiguous", True),
                ((2, 8, 8, 9, 9, 5, 5, 1), "contiguous", True)):
            x, weight, k, s = make(shape, layout)
            assert ran_nasops_kernels(x, weight, k, s) == nasops_runs, (shape, layout)
    with ops.dw_backend_as("nasops"):
        x, weight, k, s = make((2, 8, 8, 9, 9, 3, 5, 1), "channels_last")
        assert ran_nasops_kernels(x, weight, k, s)


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


# The fused batch norm + activation of BN re-calibration and evaluation (ops.batch_norm_act_).
BN_SHAPES = [(2, 5, 3, 3), (3, 19, 7, 5), (1, 40, 4, 4), (64, 96, 6, 6)]  # C % 8: tail, mixed
BN_ACTS = ["identity", "relu", "silu", "hardswish"]


def bn_act_reference(x, weight, bias, mean, var, training, momentum, eps, act):
    """float64, the formulas written out: the biased batch variance normalises, the unbiased one
    is averaged into the running variance."""
    x, weight, bias, mean, var = (t.double() for t in (x, weight, bias, mean, var))
    if training:
        n = x.numel() // x.shape[1]
        batch_mean = x.mean((0, 2, 3))
        batch_var = ((x - batch_mean.view(1, -1, 1, 1)) ** 2).mean((0, 2, 3))
        mean_used, var_used = batch_mean, batch_var
        mean = (1 - momentum) * mean + momentum * batch_mean
        var = (1 - momentum) * var + momentum * batch_var * n / (n - 1)
    else:
        mean_used, var_used = mean, var
    y = ((x - mean_used.view(1, -1, 1, 1)) / torch.sqrt(var_used.view(1, -1, 1, 1) + eps)
         * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1))
    y = {"identity": y, "relu": y.clamp(min=0), "silu": y / (1 + torch.exp(-y)),
         "hardswish": y * (y + 3).clamp(0, 6) / 6}[act]
    return y, mean, var


def make_bn(shape, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=g) * scale + 0.5).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
    mean, var = torch.randn(c, generator=g) * 0.1, torch.rand(c, generator=g) + 0.5
    return x, weight, bias, mean, var


def close(got, expected, tol):
    return ((got.double() - expected).abs() <= tol * (1 + expected.abs())).all()


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("act", BN_ACTS)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_act_matches_float64(isa, shape, act, training):
    x, weight, bias, mean, var = make_bn(shape, scale=40.0 if act == "silu" else 2.0)
    y_ref, mean_ref, var_ref = bn_act_reference(x, weight, bias, mean, var, training, 0.3, 1e-5, act)
    y = x.clone(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.ops.nasops.batch_norm_act_(y, weight, bias, mean, var, training, 0.3, 1e-5, act)
    assert close(y, y_ref, 2e-6)
    assert close(mean, mean_ref, 1e-6) and close(var, var_ref, 1e-6)


def test_batch_norm_act_opcheck():
    for training in (True, False):
        x, weight, bias, mean, var = make_bn((3, 10, 4, 5))
        torch.library.opcheck(torch.ops.nasops.batch_norm_act_.default,
                              (x, weight, bias, mean, var, training, 0.1, 1e-5, "silu"))


def test_batch_norm_act_does_not_depend_on_the_thread_count():
    x, weight, bias, mean, var = make_bn((32, 24, 9, 9))
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            y, m, v = x.clone(memory_format=torch.channels_last), mean.clone(), var.clone()
            torch.ops.nasops.batch_norm_act_(y, weight, bias, m, v, True, 0.1, 1e-5, "silu")
            results.append((y, m, v))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_batch_norm_act_wrapper_picks_the_fused_operators():
    """ops.batch_norm_act: over x in place (batch_norm_act_) only under no_grad with overwrite
    on a channels-last float32 tensor; out of place by bn_act on channels-last otherwise;
    PyTorch's ops (x untouched) on NCHW. The results agree."""
    from torch import nn
    x, weight, bias, mean, var = make_bn((4, 12, 5, 5))
    expected, _, _ = bn_act_reference(x, weight, bias, mean, var, False, 0.1, 1e-5, "silu")
    for grad, layout, overwrite, op in (
            (True, torch.channels_last, True, "nasops::bn_act"),
            (False, torch.channels_last, False, "nasops::bn_act"),
            (False, torch.channels_last, True, "nasops::batch_norm_act_"),
            (False, torch.contiguous_format, True, None), (True, torch.contiguous_format, False, None)):
        x_in = x.contiguous(memory_format=layout).clone(memory_format=layout)
        with torch.set_grad_enabled(grad), torch.profiler.profile() as profile:
            y = ops.batch_norm_act(x_in, weight, bias, mean, var, False, 0.1, 1e-5, nn.SiLU(),
                                   overwrite)
        names = {e.name for e in profile.events()}
        assert {n for n in ("nasops::bn_act", "nasops::batch_norm_act_") if n in names} == ({op} - {None})
        in_place = op == "nasops::batch_norm_act_"
        assert (y.data_ptr() == x_in.data_ptr()) == in_place
        assert torch.equal(x_in, x) != in_place
        assert close(y, expected, 2e-6)


def bn_act_grads(x, weight, bias, mean, var, training, act, grad, bn=None):
    """Output, (grad x, grad weight, grad bias) and running statistics of `bn` (default: the
    float64 reference) under autograd."""
    x, weight, bias = (t.detach().clone().requires_grad_(True) for t in (x, weight, bias))
    mean, var = mean.clone(), var.clone()
    if bn is None:
        y, new_mean, new_var = bn_act_reference(x, weight, bias, mean, var, training, 0.3, 1e-5, act)
    else:
        y = bn(x, weight, bias, mean, var, training, 0.3, 1e-5, act)[0]
        new_mean, new_var = mean, var
    y.backward(grad.to(y.dtype))
    return y, (x.grad, weight.grad, bias.grad), (new_mean, new_var)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("act", BN_ACTS)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_bn_act_forward_and_backward_match_float64(isa, shape, act, training):
    """The training operator (nasops::bn_act, its C++ autograd and nasops::bn_act_backward)
    against the formulas in float64 under autograd: output, the three gradients and the
    running statistics, in training and evaluation mode."""
    x, weight, bias, mean, var = make_bn(shape, scale=40.0 if act == "silu" else 2.0)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y_ref, grads_ref, stats_ref = bn_act_grads(x, weight, bias, mean, var, training, act, grad)
    y, grads, stats = bn_act_grads(x, weight, bias, mean, var, training, act, grad,
                                   torch.ops.nasops.bn_act)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    assert close(y, y_ref.detach(), 2e-6)
    for got, expected in zip(grads, grads_ref):
        assert rel_err(got, expected) < 1e-5
    for got, expected in zip(stats, stats_ref):
        assert close(got, expected, 1e-6)


def test_bn_act_is_finite_and_exact_far_out(isa):
    """Normalised values from -120 to 120 (evaluation mode with unit statistics): every
    activation finite and within float rounding of float64, where exp overflows float."""
    z = torch.linspace(-120, 120, 4801, dtype=torch.float64).view(1, -1, 1, 1).repeat(2, 1, 1, 1)
    c = z.shape[1]
    x = z.float().contiguous(memory_format=torch.channels_last)
    for act in BN_ACTS:
        y = torch.ops.nasops.bn_act(x, torch.ones(c), torch.zeros(c), torch.zeros(c),
                                    torch.ones(c) - 1e-5, False, 0.1, 1e-5, act)[0]
        expected = bn_act_reference(z, torch.ones(c), torch.zeros(c), torch.zeros(c),
                                    torch.ones(c) - 1e-5, False, 0.1, 1e-5, act)[0]
        assert torch.isfinite(y).all() and close(y, expected, 1e-6), act


@pytest.mark.parametrize("act", ["identity", "silu"])
def test_bn_act_holds_for_a_large_mean(isa, act):
    """Channels whose mean is 1,000 times their spread (a conv output far from zero): the batch
    variance and the output as accurate as for a centred channel, the gradients (which start
    from the mean saved in float) no less accurate than PyTorch's own float32 batch norm."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(8, 16, 12, 12, generator=g, dtype=torch.float64) * 0.5 + 500.0).float()
    c = x.shape[1]
    weight, bias = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
    xs = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    ws, bs = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    y, mean, invstd = torch.ops.nasops.bn_act(xs, ws, bs, torch.zeros(c), torch.ones(c), True, 0.1,
                                              1e-5, act)
    refs = [t.double().requires_grad_(True) for t in (x, weight, bias)]
    expected = bn_act_reference(*refs, torch.zeros(c), torch.ones(c), True, 0.1, 1e-5, act)[0]
    dy = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    y.backward(dy.float())
    expected.backward(dy)
    assert close(y, expected, 1e-5)
    assert close(1 / invstd.double() ** 2 - 1e-5, x.double().var((0, 2, 3), unbiased=False), 1e-5)
    torch_inputs = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    torch_out = torch.nn.functional.batch_norm(torch_inputs[0], None, None, *torch_inputs[1:],
                                               True, 0.1, 1e-5)
    {"identity": torch_out, "silu": torch.nn.functional.silu(torch_out)}[act].backward(dy.float())
    for got, pytorch, ref in zip((xs, ws, bs), torch_inputs, refs):
        error = (got.grad.double() - ref.grad).abs().max()
        assert error <= max(1.5 * (pytorch.grad.double() - ref.grad).abs().max(),
                            1e-6 * ref.grad.abs().max())


def test_bn_act_takes_any_layout_and_frozen_statistics():
    """An NCHW input is read as channels-last; without running statistics (training mode: the
    frozen-statistics forward of loss-scored candidates) the batch statistics normalise and
    nothing is updated."""
    x, weight, bias, mean, var = make_bn((3, 10, 4, 5))
    y_ref, _, _ = bn_act_reference(x, weight, bias, mean, var, True, 0.1, 1e-5, "relu")
    y, batch_mean, invstd = torch.ops.nasops.bn_act(x.contiguous(), weight, bias, None, None,
                                                    True, 0.1, 1e-5, "relu")
    assert close(y, y_ref, 2e-6)
    assert close(batch_mean, x.double().mean((0, 2, 3)), 1e-6)
    assert close(invstd, 1 / torch.sqrt(x.double().var((0, 2, 3), unbiased=False) + 1e-5), 1e-6)


def test_bn_act_does_not_depend_on_the_thread_count():
    x, weight, bias, mean, var = make_bn((32, 24, 9, 9))
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            y, grads, stats = bn_act_grads(x, weight, bias, mean, var, True, "silu", grad,
                                           torch.ops.nasops.bn_act)
            results.append((y, *grads, *stats))
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_bn_act_opcheck():
    for training in (True, False):
        x, weight, bias, mean, var = make_bn((3, 10, 4, 5))
        x.requires_grad_(True)
        weight.requires_grad_(True)
        torch.library.opcheck(torch.ops.nasops.bn_act.default,
                              (x, weight, bias, mean, var, training, 0.1, 1e-5, "silu"))


@pytest.mark.parametrize("args, error, message", [
    (lambda x, w, b, m, v: (x.double(), w, b, m, v, True, 0.1, 1e-5, "silu"),
     TypeError, "bn_act: x must be a float32 CPU tensor, got Double"),
    (lambda x, w, b, m, v: (x, w[:3], b, m, v, True, 0.1, 1e-5, "silu"),
     ValueError, r"bn_act: weight must have C = 5 values, got shape \[3\]"),
    (lambda x, w, b, m, v: (x, w, b, m, None, True, 0.1, 1e-5, "silu"),
     ValueError, "give both running_mean and running_var, or neither"),
    (lambda x, w, b, m, v: (x, w, b, None, None, False, 0.1, 1e-5, "silu"),
     ValueError, "evaluation mode needs the running statistics"),
    (lambda x, w, b, m, v: (x, w, b, m, v, True, 0.1, 1e-5, "gelu"),
     ValueError, "bn_act: act = 'gelu' is not supported; allowed: identity, relu, silu, hardswish"),
    (lambda x, w, b, m, v: (x[:1, :, :1, :1], w, b, m, v, True, 0.1, 1e-5, "silu"),
     ValueError, "training mode needs more than one value per channel"),
    (lambda x, w, b, m, v: (x[0], w, b, m, v, True, 0.1, 1e-5, "silu"),
     ValueError, r"bn_act: x must be 4-D \[N, C, H, W\]"),
])
def test_bn_act_bad_inputs_raise(args, error, message):
    with pytest.raises(error, match=message):
        torch.ops.nasops.bn_act(*args(*make_bn((2, 5, 3, 3))))


@pytest.mark.parametrize("call, error, message", [
    (lambda x, w, b, m, v: (x.contiguous(), w, b, m, v, True, 0.1, 1e-5, "silu"),
     ValueError, "x must be a channels-last"),
    (lambda x, w, b, m, v: (x.double(), w, b, m, v, True, 0.1, 1e-5, "silu"),
     TypeError, "x has dtype Double; allowed: float32"),
    (lambda x, w, b, m, v: (x, w[:3], b, m, v, True, 0.1, 1e-5, "silu"),
     ValueError, r"weight must have C = 5 values, got shape \[3\]"),
    (lambda x, w, b, m, v: (x, w, b, m, v.double(), True, 0.1, 1e-5, "silu"),
     TypeError, "running_var must be a float32 CPU tensor"),
    (lambda x, w, b, m, v: (x, w, b, m, v, True, 0.1, 1e-5, "gelu"),
     ValueError, "act = 'gelu' is not supported; allowed: identity, relu, silu, hardswish"),
    (lambda x, w, b, m, v: (x[:1, :, :1, :1].contiguous(memory_format=torch.channels_last), w, b,
                            m, v, True, 0.1, 1e-5, "silu"),
     ValueError, "training mode needs more than one value per channel"),
])
def test_batch_norm_act_bad_inputs_raise(call, error, message):
    args = call(*make_bn((2, 5, 3, 3)))
    with pytest.raises(error, match=message), torch.no_grad():
        torch.ops.nasops.batch_norm_act_(*args)


def test_batch_norm_act_refuses_autograd():
    x, weight, bias, mean, var = make_bn((2, 5, 3, 3))
    x.requires_grad_(True)
    with pytest.raises(RuntimeError, match="has no gradient; call it under torch.no_grad"):
        torch.ops.nasops.batch_norm_act_(x, weight, bias, mean, var, True, 0.1, 1e-5, "silu")


def test_fused_calibration_and_evaluation_match_pytorch():
    """A supernet re-calibrated and evaluated channels-last (the fused operator) against the
    same supernet on NCHW tensors (PyTorch's batch norm and activations): the same running
    statistics and logits, to float32 rounding."""
    from nasops.nn import calibrate_bn
    space = nasops.SearchSpace.load("small", in_channels=1)
    torch.manual_seed(0)
    nets = [nasops.Supernet(space), nasops.Supernet(space)]
    nets[1].load_state_dict(nets[0].state_dict())
    nets[1].to(memory_format=torch.channels_last)
    arch = space.sample(1, seed=3)[0]
    outputs, stats, fused = [], [], []
    for net, layout in zip(nets, (torch.contiguous_format, torch.channels_last)):
        net.set_active(arch)
        r = net.active_arch.resolution
        batches = [torch.randn(32, 1, r, r, generator=torch.Generator().manual_seed(i))
                   .contiguous(memory_format=layout) for i in range(3)]
        with ops.dw_backend_as("torch"), torch.profiler.profile() as profile:
            calibrate_bn(net, batches)
            net.eval()
            with torch.no_grad():
                outputs.append(net(batches[0]))
        stats.append(torch.cat([m.running_var for m in net.modules()
                                if isinstance(m, torch.nn.BatchNorm2d)]))
        fused.append(any(e.name == "nasops::batch_norm_act_" for e in profile.events()))
    assert fused == [False, True]
    assert torch.allclose(stats[0], stats[1], rtol=1e-5, atol=1e-6)
    assert torch.allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)


# -- the ops under tracing: fake kernels, saved tensors, torch.compile ---------------------------

@pytest.mark.parametrize("call, message", [
    (lambda: torch.ops.nasops.dw_conv2d(torch.empty(2, 9, 5, 5), torch.empty(8, 1, 5, 5), 3, 1),
     "input has C = 9 channels but the weight holds only C_max = 8"),
    (lambda: torch.ops.nasops.dw_conv2d(torch.empty(2, 4, 5, 5), torch.empty(8, 1, 5, 5), 4, 1),
     "kernel_size = 4 must be odd"),
    (lambda: torch.ops.nasops.dw_conv2d(torch.empty(4, 5, 5), torch.empty(8, 1, 5, 5), 3, 1),
     r"input must be 4-D"),
    (lambda: torch.ops.nasops.dw_conv2d_grad_input(torch.empty(2, 4, 5, 5), torch.empty(2, 4, 5, 5),
                                                   torch.empty(8, 1, 5, 5), 3, 2),
     "grad_output has shape"),
    (lambda: torch.ops.nasops.bn_act(torch.empty(2, 4, 5, 5), torch.empty(3), torch.empty(4), None,
                                     None, True, 0.1, 1e-5, "silu"),
     "weight must have C = 4 values"),
])
def test_fake_kernels_check_shapes(call, message):
    """Traced with fake tensors (as torch.compile does), a bad call fails with the eager op's
    message instead of producing a graph with wrong shapes."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(), pytest.raises(RuntimeError, match=message):
        call()


def saved_by_autograd(fn):
    """The tensors autograd saves while fn() runs (by their storage's data pointer)."""
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().data_ptr())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_dw_autograd_saves_the_input_only_for_the_weight_gradient(layout):
    """With the weight frozen, the input's values are not kept for backward (its gradient needs
    only its shape and layout), and the input gradient is still right."""
    x, weight, k, s = make((2, 12, 16, 9, 9, 3, 5, 2), layout)
    x.requires_grad_(True)
    out, saved = saved_by_autograd(lambda: torch.ops.nasops.dw_conv2d(x, weight, k, s))
    assert x.untyped_storage().data_ptr() not in saved
    grad = torch.randn(out.shape, dtype=torch.float64)
    out.backward(grad.float())
    xr = x.detach().double().requires_grad_(True)
    reference(xr, weight, k, s).backward(grad)
    assert rel_err(x.grad, xr.grad) < 1e-5
    weight.requires_grad_(True)
    _, saved = saved_by_autograd(lambda: torch.ops.nasops.dw_conv2d(x, weight, k, s))
    assert x.untyped_storage().data_ptr() in saved


def test_a_subnetwork_compiles_whole_and_matches_eager():
    """Forward + backward of a sub-network under torch.compile(fullgraph=True): the custom ops
    trace through their fake kernels and autograd with no graph break, and give eager's result.
    (aot_eager: the graph AOTAutograd builds, run op by op, without Inductor's C++ compile.)"""
    space = nasops.SearchSpace.load("small", num_classes=10)
    torch.manual_seed(0)
    net = nasops.Supernet(space).to(memory_format=torch.channels_last)
    arch = space.sample(1, seed=3)[0]
    net.set_active(arch)
    a = space.decode(arch)
    x = torch.randn(4, space.in_channels, a.resolution, a.resolution).contiguous(
        memory_format=torch.channels_last)

    twin = nasops.Supernet(space).to(memory_format=torch.channels_last)  # (training mode
    twin.load_state_dict(net.state_dict())  # updates the BN statistics: one copy each)
    twin.set_active(arch)

    def loss_and_grads(model, params):
        loss = model(x).square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in params if p.grad is not None}
    with ops.dw_backend_as("nasops"):
        eager = loss_and_grads(net, net.named_parameters())
        compiled = loss_and_grads(torch.compile(twin, fullgraph=True, backend="aot_eager"),
                                  twin.named_parameters())
    assert torch.allclose(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    assert compiled[1].keys() == eager[1].keys() and eager[1]
    for name, g in eager[1].items():
        assert torch.allclose(compiled[1][name], g, rtol=1e-4, atol=1e-6), name
    for (name, b), b_twin in zip(net.named_buffers(), twin.buffers()):
        assert torch.allclose(b, b_twin, rtol=1e-5, atol=1e-7), name
