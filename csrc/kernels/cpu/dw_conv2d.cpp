// CPU implementations of the depthwise operators: groups of kDwGroup channels of one image in
// parallel with at::parallel_for, each run by the kernels of the best instruction set available.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "../dw_conv2d.h"
#include "dw_conv2d_cpu.h"

namespace nasops {

namespace {

std::atomic<int> isa_choice{-1};  // -1: not chosen yet; 0: base; 1: avx2

bool cpu_has_avx2() {
#if defined(NASOPS_HAVE_AVX2)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

int chosen_isa() {
  int isa = isa_choice.load();
  if (isa < 0) {
    const char* env = std::getenv("NASOPS_CPU_ISA");  // "base" forces the portable kernels
    isa = (env && std::string(env) == "base") ? 0 : (cpu_has_avx2() ? 1 : 0);
    isa_choice.store(isa);
  }
  return isa;
}

template <typename T>
DwKernels<T> kernels() {
#if defined(NASOPS_HAVE_AVX2)
  if (chosen_isa() == 1) return cpu_avx2::dw_kernels<T>();
#endif
  return cpu_base::dw_kernels<T>();
}

// Pointer to the centred window of channel 0 and the channel stride, in a contiguous weight.
struct Window {
  int64_t offset, channel_stride, row_stride;
};

Window window_of(const at::Tensor& weight, int64_t k) {
  const int64_t K = weight.size(2), off = (K - k) / 2;
  return {off * K + off, K * K, K};
}

constexpr int64_t kGrain = 1;  // one group is already thousands of operations

int64_t groups_of(int64_t channels) { return (channels + kDwGroup - 1) / kDwGroup; }

// Wide maps run plane by plane along the rows; narrow ones in interleaved channel groups.
bool use_rows(int64_t W, int64_t k, int64_t s) {
  return dw_out_size(W, s) >= kDwRowsMinWidth && k * k <= 64;
}

}  // namespace

std::string cpu_isa() { return chosen_isa() == 1 ? "avx2" : "base"; }

std::vector<std::string> cpu_isas() {
  std::vector<std::string> out{"base"};
  if (cpu_has_avx2()) out.push_back("avx2");
  return out;
}

void set_cpu_isa(const std::string& name) {
  // std::invalid_argument: pybind11 makes it a ValueError with any torch (a c10::ValueError
  // becomes one only where torch's translator reaches this module: not in torch 2.5).
  if (!(name == "base" || (name == "avx2" && cpu_has_avx2())))
    throw std::invalid_argument("CPU kernel ISA '" + name + "' is not available here; available: base" +
                                (cpu_has_avx2() ? ", avx2" : ""));
  isa_choice.store(name == "avx2" ? 1 : 0);
}

at::Tensor dw_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, int64_t k,
                         int64_t s) {
  check_dw_conv2d(input, weight, k, s, "dw_conv2d");
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = dw_out_size(H, s), Wo = dw_out_size(W, s);
  at::Tensor out = at::empty({N, C, Ho, Wo}, x.options());
  const Window win = window_of(w, k);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dw_conv2d_cpu", [&] {
    const auto kern = kernels<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>() + win.offset;
    scalar_t* op = out.data_ptr<scalar_t>();
    if (use_rows(W, k, s)) {
      at::parallel_for(0, N * C, kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end; ++plane)
          kern.forward_rows(xp + plane * H * W, wp + (plane % C) * win.channel_stride,
                            win.row_stride, op + plane * Ho * Wo, H, W, k, s);
      });
      return;
    }
    const int64_t groups = groups_of(C);
    at::parallel_for(0, N * groups, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t c0 = (task % groups) * kDwGroup, plane = (task / groups) * C + c0;
        kern.forward(xp + plane * H * W, wp + c0 * win.channel_stride, win.channel_stride,
                     win.row_stride, op + plane * Ho * Wo, std::min(kDwGroup, C - c0), H, W, k, s);
      }
    });
  });
  return out;
}

at::Tensor dw_conv2d_grad_input_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                    const at::Tensor& weight, int64_t k, int64_t s) {
  check_dw_conv2d(input, weight, k, s, "dw_conv2d_grad_input");
  const at::Tensor go = grad_output.contiguous(), w = weight.contiguous();
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  TORCH_CHECK_VALUE(go.sizes() == at::IntArrayRef({N, C, dw_out_size(H, s), dw_out_size(W, s)}),
                    "dw_conv2d_grad_input: grad_output has shape ", go.sizes(),
                    ", which is not the output shape of this input");
  const int64_t Ho = go.size(2), Wo = go.size(3);
  at::Tensor grad_input = at::empty({N, C, H, W}, go.options());
  const Window win = window_of(w, k);
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "dw_conv2d_grad_input_cpu", [&] {
    const auto kern = kernels<scalar_t>();
    const scalar_t* gp = go.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>() + win.offset;
    scalar_t* ip = grad_input.data_ptr<scalar_t>();
    if (use_rows(W, k, s)) {
      at::parallel_for(0, N * C, kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end; ++plane)
          kern.grad_input_rows(gp + plane * Ho * Wo, wp + (plane % C) * win.channel_stride,
                               win.row_stride, ip + plane * H * W, H, W, k, s);
      });
      return;
    }
    const int64_t groups = groups_of(C);
    at::parallel_for(0, N * groups, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t c0 = (task % groups) * kDwGroup, plane = (task / groups) * C + c0;
        kern.grad_input(gp + plane * Ho * Wo, wp + c0 * win.channel_stride, win.channel_stride,
                        win.row_stride, ip + plane * H * W, std::min(kDwGroup, C - c0), H, W, k,
                        s);
      }
    });
  });
  return grad_input;
}

at::Tensor dw_conv2d_grad_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                     const at::Tensor& weight, int64_t k, int64_t s) {
  check_dw_conv2d(input, weight, k, s, "dw_conv2d_grad_weight");
  const at::Tensor go = grad_output.contiguous(), x = input.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK_VALUE(go.sizes() == at::IntArrayRef({N, C, dw_out_size(H, s), dw_out_size(W, s)}),
                    "dw_conv2d_grad_weight: grad_output has shape ", go.sizes(),
                    ", which is not the output shape of this input");
  const int64_t Ho = go.size(2), Wo = go.size(3), K = weight.size(2), off = (K - k) / 2;
  // Full shape, zero outside the active channels and window: what autograd adds into the
  // shared weight's gradient.
  at::Tensor grad_weight = at::zeros(weight.sizes(), weight.options());
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "dw_conv2d_grad_weight_cpu", [&] {
    const auto kern = kernels<scalar_t>();
    const scalar_t* gp = go.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* wp = grad_weight.data_ptr<scalar_t>();
    if (use_rows(W, k, s)) {
      at::parallel_for(0, C, kGrain, [&](int64_t begin, int64_t end) {
        std::vector<double> acc(k * k);
        for (int64_t c = begin; c < end; ++c) {
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t n = 0; n < N; ++n)
            kern.grad_weight_rows(gp + (n * C + c) * Ho * Wo, xp + (n * C + c) * H * W,
                                  acc.data(), H, W, k, s);
          for (int64_t i = 0; i < k; ++i)
            for (int64_t j = 0; j < k; ++j)
              wp[c * K * K + (off + i) * K + off + j] = static_cast<scalar_t>(acc[i * k + j]);
        }
      });
      return;
    }
    at::parallel_for(0, groups_of(C), kGrain, [&](int64_t begin, int64_t end) {
      std::vector<double> acc(kDwGroup * k * k);
      for (int64_t group = begin; group < end; ++group) {
        const int64_t c0 = group * kDwGroup, channels = std::min(kDwGroup, C - c0);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t n = 0; n < N; ++n) {
          const int64_t plane = n * C + c0;
          kern.grad_weight(gp + plane * Ho * Wo, xp + plane * H * W, acc.data(), channels, H, W,
                           k, s);
        }
        for (int64_t c = 0; c < channels; ++c)
          for (int64_t i = 0; i < k; ++i)
            for (int64_t j = 0; j < k; ++j)
              wp[(c0 + c) * K * K + (off + i) * K + off + j] =
                  static_cast<scalar_t>(acc[c * k * k + i * k + j]);
      }
    });
  });
  return grad_weight;
}

}  // namespace nasops

TORCH_LIBRARY_IMPL(nasops, CPU, m) {
  m.impl("dw_conv2d", &nasops::dw_conv2d_cpu);
  m.impl("dw_conv2d_grad_input", &nasops::dw_conv2d_grad_input_cpu);
  m.impl("dw_conv2d_grad_weight", &nasops::dw_conv2d_grad_weight_cpu);
}
