// CPU implementations of the depthwise operators: planes (image, channel) in parallel with
// at::parallel_for, each run by the kernels of the best instruction set available.
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

// The instruction sets the kernels are built for, in order of preference.
enum Isa { kBase = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kIsaNames[] = {"base", "avx2", "avx512"};

bool available(int isa) {
  switch (isa) {
    case kBase: return true;
#if defined(NASOPS_HAVE_AVX2)
    case kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
#if defined(NASOPS_HAVE_AVX512)
    case kAvx512: return available(kAvx2) && __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("avx512vl");
#endif
    default: return false;
  }
}

std::string available_names() {
  std::string out;
  for (int isa = kBase; isa <= kAvx512; ++isa)
    if (available(isa)) out += std::string(out.empty() ? "" : ", ") + kIsaNames[isa];
  return out;
}

int isa_named(const std::string& name) {
  for (int isa = kBase; isa <= kAvx512; ++isa)
    if (name == kIsaNames[isa] && available(isa)) return isa;
  // std::invalid_argument: pybind11 makes it a ValueError with any torch (a c10::ValueError
  // becomes one only where torch's translator reaches this module: not in torch 2.5).
  throw std::invalid_argument("CPU kernel ISA '" + name + "' is not available here; available: " +
                              available_names());
}

std::atomic<int> isa_choice{-1};  // -1: not chosen yet

int chosen_isa() {
  int isa = isa_choice.load();
  if (isa < 0) {
    const char* env = std::getenv("NASOPS_CPU_ISA");  // e.g. "base" forces the portable kernels
    if (env && *env) {
      isa = isa_named(env);
    } else {
      isa = kAvx512;
      while (!available(isa)) --isa;
    }
    isa_choice.store(isa);
  }
  return isa;
}

template <typename T>
DwKernels<T> kernels() {
  switch (chosen_isa()) {
#if defined(NASOPS_HAVE_AVX512)
    case kAvx512: return cpu_avx512::dw_kernels<T>();
#endif
#if defined(NASOPS_HAVE_AVX2)
    case kAvx2: return cpu_avx2::dw_kernels<T>();
#endif
    default: return cpu_base::dw_kernels<T>();
  }
}

// Pointer to the centred window of channel 0 and the channel stride, in a contiguous weight.
struct Window {
  int64_t offset, channel_stride, row_stride;
};

Window window_of(const at::Tensor& weight, int64_t k) {
  const int64_t K = weight.size(2), off = (K - k) / 2;
  return {off * K + off, K * K, K};
}

// Planes per task: enough work to amortise scheduling on the smallest maps (6 x 6), one plane
// on large ones.
int64_t grain(int64_t plane_size) {
  return std::max<int64_t>(1, 1024 / std::max<int64_t>(1, plane_size));
}

// Small planes run in channel groups: there the flat grid's fixed cost per plane (padding rows,
// tap setup, row stores) and its padding columns outweigh the groups' transposes. Measured with
// benchmarks/bench_kernels.py, each layout forced in turn: groups were faster up to 9 x 9
// outputs with k = 5 (Ho Wo k^2 = 2025), planes from 24 x 24 with k = 3 (5184) and 18 x 18 with
// k = 5 (8100).
bool use_groups(int64_t Ho, int64_t Wo, int64_t k) { return Ho * Wo * k * k < 4096; }

// Channels-last inputs run the NHWC kernels and give channels-last results (a layer of C = 1,
// or of 1 x 1 maps, is the same in both layouts and runs the plane kernels). Kernels wider than
// 63 (the NHWC weight gradient's register budget) take the plane kernels too.
bool use_nhwc(const at::Tensor& input, int64_t k) {
  return input.size(1) > 1 && input.size(2) * input.size(3) > 1 && k <= 63 &&
         input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

// The centred window of the first C channels as [k * k][Cp] (Cp = C rounded up to `lanes`,
// zeros past C): the NHWC kernels' layout of the taps.
template <typename T>
std::vector<T> nhwc_taps(const at::Tensor& w, int64_t C, int64_t k, int64_t lanes) {
  const int64_t K = w.size(2), off = (K - k) / 2, Cp = (C + lanes - 1) / lanes * lanes;
  std::vector<T> taps(k * k * Cp, T(0));
  const T* wp = w.data_ptr<T>();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) taps[(i * k + j) * Cp + c] = wp[c * K * K + (off + i) * K + off + j];
  return taps;
}

// Rows per task of the NHWC loops: about 16 K values of output each.
int64_t row_grain(int64_t row_values) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_values));
}

void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input, int64_t s,
                       const char* op) {
  const int64_t H = input.size(2), W = input.size(3);
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef({input.size(0), input.size(1),
                                                            dw_out_size(H, s), dw_out_size(W, s)}),
                    op, ": grad_output has shape ", grad_output.sizes(),
                    ", which is not the output shape of this input");
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(), op, ": grad_output dtype ",
                   grad_output.scalar_type(), " differs from input dtype ", input.scalar_type());
}

constexpr auto kChannelsLast = at::MemoryFormat::ChannelsLast;

at::Tensor dw_conv2d_nhwc(const at::Tensor& input, const at::Tensor& weight, int64_t k, int64_t s) {
  const at::Tensor x = input.contiguous(kChannelsLast), w = weight.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = dw_out_size(H, s), Wo = dw_out_size(W, s);
  at::Tensor out = at::empty({N, C, Ho, Wo}, x.options().memory_format(kChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dw_conv2d_nhwc", [&] {
    const auto kern = kernels<scalar_t>();
    const std::vector<scalar_t> taps = nhwc_taps<scalar_t>(w, C, k, kern.lanes);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, N * Ho, row_grain(Wo * C), [&](int64_t begin, int64_t end) {
      kern.forward_nhwc(xp, taps.data(), op, C, H, W, k, s, begin, end);
    });
  });
  return out;
}

at::Tensor dw_conv2d_grad_input_nhwc(const at::Tensor& grad_output, const at::Tensor& input,
                                     const at::Tensor& weight, int64_t k, int64_t s) {
  const at::Tensor go = grad_output.contiguous(kChannelsLast), w = weight.contiguous();
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  at::Tensor grad_input = at::empty({N, C, H, W}, go.options().memory_format(kChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "dw_conv2d_grad_input_nhwc", [&] {
    const auto kern = kernels<scalar_t>();
    const std::vector<scalar_t> taps = nhwc_taps<scalar_t>(w, C, k, kern.lanes);
    const scalar_t* gp = go.data_ptr<scalar_t>();
    scalar_t* ip = grad_input.data_ptr<scalar_t>();
    at::parallel_for(0, N * H, row_grain(W * C), [&](int64_t begin, int64_t end) {
      kern.grad_input_nhwc(gp, taps.data(), ip, C, H, W, k, s, begin, end);
    });
  });
  return grad_input;
}

// Tasks are (channel chunk, block of output rows); each sums its block in double, and the
// blocks are added in order afterwards. How the rows are cut depends on the shape only, so the
// result does not depend on the number of threads.
at::Tensor dw_conv2d_grad_weight_nhwc(const at::Tensor& grad_output, const at::Tensor& input,
                                      const at::Tensor& weight, int64_t k, int64_t s) {
  const at::Tensor go = grad_output.contiguous(kChannelsLast), x = input.contiguous(kChannelsLast);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = dw_out_size(H, s), Wo = dw_out_size(W, s), K = weight.size(2), off = (K - k) / 2;
  at::Tensor grad_weight = at::zeros(weight.sizes(), weight.options());
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "dw_conv2d_grad_weight_nhwc", [&] {
    const auto kern = kernels<scalar_t>();
    const int64_t L = kern.lanes, chunks = (C + L - 1) / L, rows = N * Ho;
    // enough tasks for many threads on narrow layers (64 in all), none under 8 rows
    const int64_t blocks = std::clamp<int64_t>(64 / chunks, 1, std::max<int64_t>(1, rows / 8));
    const int64_t per_block = (rows + blocks - 1) / blocks;
    std::vector<double> partial(chunks * blocks * k * k * L, 0.0);
    const scalar_t* gp = go.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, chunks * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t chunk = task / blocks, block = task % blocks, c0 = chunk * L;
        const int64_t lo = std::min(rows, block * per_block), hi = std::min(rows, lo + per_block);
        kern.grad_weight_nhwc(gp, xp, partial.data() + task * k * k * L, C, H, W, k, s, c0,
                              std::min(L, C - c0), lo, hi);
      }
    });
    scalar_t* wp = grad_weight.data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      const int64_t chunk = c / L, v = c % L;
      for (int64_t t = 0; t < k * k; ++t) {
        double sum = 0;
        for (int64_t block = 0; block < blocks; ++block)
          sum += partial[((chunk * blocks + block) * k * k + t) * L + v];
        wp[c * K * K + (off + t / k) * K + off + t % k] = static_cast<scalar_t>(sum);
      }
    }
  });
  return grad_weight;
}

}  // namespace

std::string cpu_isa() { return kIsaNames[chosen_isa()]; }

std::vector<std::string> cpu_isas() {
  std::vector<std::string> out;
  for (int isa = kBase; isa <= kAvx512; ++isa)
    if (available(isa)) out.push_back(kIsaNames[isa]);
  return out;
}

void set_cpu_isa(const std::string& name) { isa_choice.store(isa_named(name)); }

at::Tensor dw_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, int64_t k,
                         int64_t s) {
  check_dw_conv2d(input, weight, k, s, "dw_conv2d");
  if (use_nhwc(input, k)) return dw_conv2d_nhwc(input, weight, k, s);
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
    if (!use_groups(Ho, Wo, k)) {
      at::parallel_for(0, N * C, grain(H * W), [&](int64_t begin, int64_t end) {
        kern.forward(xp, wp, win.channel_stride, win.row_stride, op, C, H, W, k, s, begin, end);
      });
      return;
    }
    const int64_t L = kern.lanes, groups = (C + L - 1) / L;
    at::parallel_for(0, N * groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t c0 = (task % groups) * L, plane = (task / groups) * C + c0;
        kern.forward_group(xp + plane * H * W, wp + c0 * win.channel_stride, win.channel_stride,
                           win.row_stride, op + plane * Ho * Wo, std::min(L, C - c0), H, W,
                           k, s);
      }
    });
  });
  return out;
}

at::Tensor dw_conv2d_grad_input_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                    const at::Tensor& weight, int64_t k, int64_t s) {
  check_dw_conv2d(input, weight, k, s, "dw_conv2d_grad_input");
  check_grad_output(grad_output, input, s, "dw_conv2d_grad_input");
  if (use_nhwc(input, k)) return dw_conv2d_grad_input_nhwc(grad_output, input, weight, k, s);
  const at::Tensor go = grad_output.contiguous(), w = weight.contiguous();
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Ho = go.size(2), Wo = go.size(3);
  at::Tensor grad_input = at::empty({N, C, H, W}, go.options());
  const Window win = window_of(w, k);
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "dw_conv2d_grad_input_cpu", [&] {
    const auto kern = kernels<scalar_t>();
    const scalar_t* gp = go.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>() + win.offset;
    scalar_t* ip = grad_input.data_ptr<scalar_t>();
    if (!use_groups(Ho, Wo, k)) {
      at::parallel_for(0, N * C, grain(H * W), [&](int64_t begin, int64_t end) {
        kern.grad_input(gp, wp, win.channel_stride, win.row_stride, ip, C, H, W, k, s, begin, end);
      });
      return;
    }
    const int64_t L = kern.lanes, groups = (C + L - 1) / L;
    at::parallel_for(0, N * groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t c0 = (task % groups) * L, plane = (task / groups) * C + c0;
        kern.grad_input_group(gp + plane * Ho * Wo, wp + c0 * win.channel_stride,
                              win.channel_stride, win.row_stride, ip + plane * H * W,
                              std::min(L, C - c0), H, W, k, s);
      }
    });
  });
  return grad_input;
}

at::Tensor dw_conv2d_grad_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                     const at::Tensor& weight, int64_t k, int64_t s) {
  check_dw_conv2d(input, weight, k, s, "dw_conv2d_grad_weight");
  check_grad_output(grad_output, input, s, "dw_conv2d_grad_weight");
  if (use_nhwc(input, k)) return dw_conv2d_grad_weight_nhwc(grad_output, input, weight, k, s);
  const at::Tensor go = grad_output.contiguous(), x = input.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = go.size(2), Wo = go.size(3), K = weight.size(2), off = (K - k) / 2;
  // Full shape, zero outside the active channels and window: what autograd adds into the
  // shared weight's gradient.
  at::Tensor grad_weight = at::zeros(weight.sizes(), weight.options());
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "dw_conv2d_grad_weight_cpu", [&] {
    const auto kern = kernels<scalar_t>();
    const scalar_t* gp = go.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* wp = grad_weight.data_ptr<scalar_t>();
    if (!use_groups(Ho, Wo, k)) {
      at::parallel_for(0, C, grain(N * H * W), [&](int64_t begin, int64_t end) {
        std::vector<double> acc(k * k);
        for (int64_t c = begin; c < end; ++c) {
          kern.grad_weight(gp, xp, acc.data(), N, C, H, W, k, s, c);
          for (int64_t i = 0; i < k; ++i)
            for (int64_t j = 0; j < k; ++j)
              wp[c * K * K + (off + i) * K + off + j] = static_cast<scalar_t>(acc[i * k + j]);
        }
      });
      return;
    }
    const int64_t L = kern.lanes;
    at::parallel_for(0, (C + L - 1) / L, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> acc(L * k * k);
      for (int64_t group = begin; group < end; ++group) {
        const int64_t c0 = group * L, channels = std::min(L, C - c0);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t n = 0; n < N; ++n) {
          const int64_t plane = n * C + c0;
          kern.grad_weight_group(gp + plane * Ho * Wo, xp + plane * H * W, acc.data(), channels,
                                 H, W, k, s);
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
