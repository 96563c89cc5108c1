// CUDA implementations of the depthwise operators: float32, float64, float16 and bfloat16,
// accumulating in float (double for float64). Straightforward kernels first: one thread per
// output (forward) or input (grad_input) element, one block per (channel, tap) for grad_weight.
// Tuning them on a GPU is issue 8.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../dw_conv2d.h"

namespace nasops {

namespace {

constexpr int kThreads = 256;

struct Geometry {
  int64_t N, C, H, W, Ho, Wo;
  int64_t k, s, p;
  int64_t K, window_offset;  // shared weight: K x K taps per channel; centred window start
};

Geometry geometry(const at::Tensor& input, const at::Tensor& weight, int64_t k, int64_t s) {
  Geometry g;
  g.N = input.size(0);
  g.C = input.size(1);
  g.H = input.size(2);
  g.W = input.size(3);
  g.Ho = dw_out_size(g.H, s);
  g.Wo = dw_out_size(g.W, s);
  g.k = k;
  g.s = s;
  g.p = k / 2;
  g.K = weight.size(2);
  const int64_t off = (g.K - k) / 2;
  g.window_offset = off * g.K + off;
  return g;
}

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>((n + kThreads - 1) / kThreads);
}

template <typename T>
__global__ void forward_kernel(const T* __restrict__ in, const T* __restrict__ w,
                               T* __restrict__ out, Geometry g) {
  using acc_t = at::opmath_type<T>;
  const int64_t total = g.N * g.C * g.Ho * g.Wo;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ow = idx % g.Wo, oh = (idx / g.Wo) % g.Ho, plane = idx / (g.Wo * g.Ho);
    const int64_t c = plane % g.C;
    const T* x = in + plane * g.H * g.W;
    const T* wc = w + c * g.K * g.K + g.window_offset;
    acc_t acc = 0;
    for (int64_t i = 0; i < g.k; ++i) {
      const int64_t ih = oh * g.s + i - g.p;
      if (ih < 0 || ih >= g.H) continue;
      for (int64_t j = 0; j < g.k; ++j) {
        const int64_t iw = ow * g.s + j - g.p;
        if (iw < 0 || iw >= g.W) continue;
        acc += static_cast<acc_t>(x[ih * g.W + iw]) * static_cast<acc_t>(wc[i * g.K + j]);
      }
    }
    out[idx] = static_cast<T>(acc);
  }
}

template <typename T>
__global__ void grad_input_kernel(const T* __restrict__ go, const T* __restrict__ w,
                                  T* __restrict__ gi, Geometry g) {
  using acc_t = at::opmath_type<T>;
  const int64_t total = g.N * g.C * g.H * g.W;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t iw = idx % g.W, ih = (idx / g.W) % g.H, plane = idx / (g.W * g.H);
    const int64_t c = plane % g.C;
    const T* grad = go + plane * g.Ho * g.Wo;
    const T* wc = w + c * g.K * g.K + g.window_offset;
    acc_t acc = 0;
    for (int64_t i = 0; i < g.k; ++i) {
      const int64_t y = ih + g.p - i;  // = oh * s
      if (y < 0 || y % g.s != 0 || y / g.s >= g.Ho) continue;
      for (int64_t j = 0; j < g.k; ++j) {
        const int64_t x = iw + g.p - j;  // = ow * s
        if (x < 0 || x % g.s != 0 || x / g.s >= g.Wo) continue;
        acc += static_cast<acc_t>(grad[(y / g.s) * g.Wo + x / g.s]) *
               static_cast<acc_t>(wc[i * g.K + j]);
      }
    }
    gi[idx] = static_cast<T>(acc);
  }
}

// One block per (channel, tap): the sum over images and output pixels of grad * shifted input.
template <typename T>
__global__ void grad_weight_kernel(const T* __restrict__ go, const T* __restrict__ in,
                                   T* __restrict__ gw, Geometry g) {
  using acc_t = at::opmath_type<T>;
  const int64_t c = blockIdx.x / (g.k * g.k), tap = blockIdx.x % (g.k * g.k);
  const int64_t i = tap / g.k, j = tap % g.k;
  const int64_t per_image = g.Ho * g.Wo;
  acc_t acc = 0;
  for (int64_t idx = threadIdx.x; idx < g.N * per_image; idx += blockDim.x) {
    const int64_t n = idx / per_image, pix = idx % per_image;
    const int64_t oh = pix / g.Wo, ow = pix % g.Wo;
    const int64_t ih = oh * g.s + i - g.p, iw = ow * g.s + j - g.p;
    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
    const int64_t plane = n * g.C + c;
    acc += static_cast<acc_t>(go[plane * per_image + pix]) *
           static_cast<acc_t>(in[plane * g.H * g.W + ih * g.W + iw]);
  }
  __shared__ acc_t partial[kThreads];
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) gw[c * g.K * g.K + g.window_offset + i * g.K + j] = static_cast<T>(partial[0]);
}

void check_grad_output(const at::Tensor& grad_output, const Geometry& g, const char* op) {
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef({g.N, g.C, g.Ho, g.Wo}), op,
                    ": grad_output has shape ", grad_output.sizes(),
                    ", which is not the output shape of this input");
  TORCH_CHECK_VALUE(grad_output.is_cuda(), op, ": grad_output must be a CUDA tensor, got ",
                    grad_output.device());
}

}  // namespace

at::Tensor dw_conv2d_cuda(const at::Tensor& input, const at::Tensor& weight, int64_t k,
                          int64_t s) {
  check_dw_conv2d(input, weight, k, s, "dw_conv2d");
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const Geometry g = geometry(x, w, k, s);
  at::Tensor out = at::empty({g.N, g.C, g.Ho, g.Wo}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dw_conv2d_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(out.numel()), kThreads, 0,
                               c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor dw_conv2d_grad_input_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                     const at::Tensor& weight, int64_t k, int64_t s) {
  check_dw_conv2d(input, weight, k, s, "dw_conv2d_grad_input");
  const c10::cuda::CUDAGuard guard(input.device());
  const Geometry g = geometry(input, weight, k, s);
  check_grad_output(grad_output, g, "dw_conv2d_grad_input");
  const at::Tensor go = grad_output.contiguous(), w = weight.contiguous();
  at::Tensor grad_input = at::empty({g.N, g.C, g.H, g.W}, go.options());
  if (grad_input.numel() == 0) return grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "dw_conv2d_grad_input_cuda", [&] {
    grad_input_kernel<scalar_t><<<blocks_for(grad_input.numel()), kThreads, 0,
                                  c10::cuda::getCurrentCUDAStream()>>>(
        go.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

at::Tensor dw_conv2d_grad_weight_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                      const at::Tensor& weight, int64_t k, int64_t s) {
  check_dw_conv2d(input, weight, k, s, "dw_conv2d_grad_weight");
  const c10::cuda::CUDAGuard guard(input.device());
  const Geometry g = geometry(input, weight, k, s);
  check_grad_output(grad_output, g, "dw_conv2d_grad_weight");
  const at::Tensor go = grad_output.contiguous(), x = input.contiguous();
  at::Tensor grad_weight = at::zeros(weight.sizes(), weight.options());
  if (g.C == 0) return grad_weight;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, go.scalar_type(), "dw_conv2d_grad_weight_cuda", [&] {
    grad_weight_kernel<scalar_t><<<static_cast<unsigned>(g.C * k * k), kThreads, 0,
                                   c10::cuda::getCurrentCUDAStream()>>>(
        go.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), grad_weight.data_ptr<scalar_t>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_weight;
}

}  // namespace nasops

TORCH_LIBRARY_IMPL(nasops, CUDA, m) {
  m.impl("dw_conv2d", &nasops::dw_conv2d_cuda);
  m.impl("dw_conv2d_grad_input", &nasops::dw_conv2d_grad_input_cuda);
  m.impl("dw_conv2d_grad_weight", &nasops::dw_conv2d_grad_weight_cuda);
}
