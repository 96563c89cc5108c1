// The CUDA depthwise kernels' bodies, written so that the same source compiles for the GPU
// (dw_conv2d.cu) and for the host (dw_conv2d_emulated.cpp, which runs them on a grid emulator in
// the tests). A kernel is a struct with:
//
//   Args                       its pointers and the layer's Geometry
//   Local                      what one thread keeps in registers across barriers
//   threads()                  threads per block (1-D blocks and grids)
//   blocks(g), shared_bytes(g), phases(g)
//   phase(p, args, index, shared, local)
//                              the thread's work between barrier p - 1 and barrier p
//
// The device runs `for p < phases: phase(p); __syncthreads();` in every thread; the emulator
// runs phase p of every thread of a block (in either order) before any thread's phase p + 1, on
// shared memory filled with NaN at the start of each block. So a read of shared memory that no
// earlier phase wrote, or a missing barrier between a write and a read, gives a wrong result
// on the host as it would, intermittently, on the GPU.
//
// Tiling: the forward and the input gradient stage one output (input) tile and its halo of the
// other map in shared memory, so each element of the map they read comes from global memory once
// per tile, in rows that consecutive threads read at consecutive addresses. The weight gradient
// runs one block per channel over all its (image, tile) pairs, keeps the k x k tap sums of each
// thread in registers, and reduces them across the block once at the end: one global write per
// tap, and the input read once per tile instead of once per tap.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "../dw_conv2d.h"

#if defined(__CUDACC__)
#define NASOPS_HD __host__ __device__
#else
#define NASOPS_HD
#endif

namespace nasops {
namespace dw_cuda {

constexpr int kMaxKernel = 9;  // the weight gradient keeps k * k sums per thread in registers

struct Geometry {
  int64_t N, C, H, W, Ho, Wo;
  int64_t k, s, p;
  int64_t K, window_offset;  // shared weight: K x K taps per channel; centred window start
};

// The position of the running thread, as blockIdx.x, threadIdx.x, blockDim.x give it.
struct Index {
  int64_t block;
  int thread, threads;
};

NASOPS_HD inline int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}
NASOPS_HD inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

// An output tile of kTileH x kTileW pixels, one per thread, and the input rows and columns it
// reads: (t - 1) * s + k of them.
constexpr int kTileH = 8, kTileW = 32, kTileThreads = kTileH * kTileW;
NASOPS_HD inline int64_t halo(int64_t tile, const Geometry& g) { return (tile - 1) * g.s + g.k; }

// The block's threads copy rows x cols values of a height x width plane, from (row0, col0) on,
// into `dst` as acc_t, zeros outside the plane; consecutive threads read consecutive addresses.
template <typename T, typename acc_t>
NASOPS_HD inline void stage(const T* plane, int64_t height, int64_t width, int64_t row0,
                            int64_t col0, int64_t rows, int64_t cols, acc_t* dst, const Index& ix) {
  for (int64_t e = ix.thread; e < rows * cols; e += ix.threads) {
    const int64_t r = row0 + e / cols, c = col0 + e % cols;
    dst[e] = (r >= 0 && r < height && c >= 0 && c < width) ? static_cast<acc_t>(plane[r * width + c])
                                                          : acc_t(0);
  }
}

// The block's threads copy channel c's centred k x k window of the shared weight into `dst`.
template <typename T, typename acc_t>
NASOPS_HD inline void stage_window(const T* weight, int64_t c, const Geometry& g, acc_t* dst,
                                   const Index& ix) {
  const T* wc = weight + c * g.K * g.K + g.window_offset;
  for (int64_t e = ix.thread; e < g.k * g.k; e += ix.threads)
    dst[e] = static_cast<acc_t>(wc[(e / g.k) * g.K + e % g.k]);
}

// ---------------------------------------------------------------------------------------------
// Forward: a block per (plane, output tile). Phase 0 stages the input tile with its halo (zeros
// outside the map) and the k x k window; phase 1 computes one output pixel per thread.
template <typename T>
struct Forward {
  using acc_t = at::opmath_type<T>;
  struct Args {
    using kernel = Forward;
    const T* in;
    const T* w;
    T* out;
    Geometry g;
  };
  struct Local {};

  static constexpr int threads() { return kTileThreads; }
  NASOPS_HD static int64_t tiles_h(const Geometry& g) { return ceil_div(g.Ho, kTileH); }
  NASOPS_HD static int64_t tiles_w(const Geometry& g) { return ceil_div(g.Wo, kTileW); }
  NASOPS_HD static int64_t blocks(const Geometry& g) { return g.N * g.C * tiles_h(g) * tiles_w(g); }
  NASOPS_HD static int64_t shared_bytes(const Geometry& g) {
    return (halo(kTileH, g) * halo(kTileW, g) + g.k * g.k) * int64_t(sizeof(acc_t));
  }
  NASOPS_HD static int phases(const Geometry&) { return 2; }

  NASOPS_HD static void phase(int phase, const Args& a, const Index& ix, unsigned char* shared,
                              Local&) {
    const Geometry& g = a.g;
    const int64_t tw = tiles_w(g), th = tiles_h(g);
    const int64_t plane = ix.block / (th * tw), tile = ix.block % (th * tw);
    const int64_t oh0 = (tile / tw) * kTileH, ow0 = (tile % tw) * kTileW;
    const int64_t ih0 = oh0 * g.s - g.p, iw0 = ow0 * g.s - g.p;  // the tile's top-left input
    const int64_t rows = halo(kTileH, g), cols = halo(kTileW, g);
    acc_t* x = reinterpret_cast<acc_t*>(shared);
    acc_t* w = x + rows * cols;
    if (phase == 0) {
      stage(a.in + plane * g.H * g.W, g.H, g.W, ih0, iw0, rows, cols, x, ix);
      stage_window(a.w, plane % g.C, g, w, ix);
      return;
    }
    const int64_t r = ix.thread / kTileW, c = ix.thread % kTileW;
    const int64_t oh = oh0 + r, ow = ow0 + c;
    if (oh >= g.Ho || ow >= g.Wo) return;
    acc_t acc = 0;
    for (int64_t i = 0; i < g.k; ++i)
      for (int64_t j = 0; j < g.k; ++j) acc += x[(r * g.s + i) * cols + c * g.s + j] * w[i * g.k + j];
    a.out[(plane * g.Ho + oh) * g.Wo + ow] = static_cast<T>(acc);
  }
};

// ---------------------------------------------------------------------------------------------
// Input gradient: a block per (plane, input tile). The gradient at input pixel (ih, iw) sums
// grad_out[oh, ow] * w[i, j] over oh * s = ih + p - i, ow * s = iw + p - j. Phase 0 stages the
// output-gradient rows and columns that the tile reaches (zeros outside the map) and the window;
// phase 1 computes one input pixel per thread.
template <typename T>
struct GradInput {
  using acc_t = at::opmath_type<T>;
  struct Args {
    using kernel = GradInput;
    const T* grad_out;
    const T* w;
    T* grad_in;
    Geometry g;
  };
  struct Local {};

  // the output rows (columns) that input rows (columns) [i0, i0 + tile) reach
  NASOPS_HD static int64_t first(int64_t i0, const Geometry& g) {
    return ceil_div(i0 + g.p - (g.k - 1), g.s);
  }
  NASOPS_HD static int64_t span(int64_t tile, const Geometry& g) {
    return (tile - 1 + g.k - 1) / g.s + 2;  // an upper bound for any i0
  }
  static constexpr int threads() { return kTileThreads; }
  NASOPS_HD static int64_t tiles_h(const Geometry& g) { return ceil_div(g.H, kTileH); }
  NASOPS_HD static int64_t tiles_w(const Geometry& g) { return ceil_div(g.W, kTileW); }
  NASOPS_HD static int64_t blocks(const Geometry& g) { return g.N * g.C * tiles_h(g) * tiles_w(g); }
  NASOPS_HD static int64_t shared_bytes(const Geometry& g) {
    return (span(kTileH, g) * span(kTileW, g) + g.k * g.k) * int64_t(sizeof(acc_t));
  }
  NASOPS_HD static int phases(const Geometry&) { return 2; }

  NASOPS_HD static void phase(int phase, const Args& a, const Index& ix, unsigned char* shared,
                              Local&) {
    const Geometry& g = a.g;
    const int64_t tw = tiles_w(g), th = tiles_h(g);
    const int64_t plane = ix.block / (th * tw), tile = ix.block % (th * tw);
    const int64_t ih0 = (tile / tw) * kTileH, iw0 = (tile % tw) * kTileW;
    const int64_t oh0 = first(ih0, g), ow0 = first(iw0, g);
    const int64_t rows = span(kTileH, g), cols = span(kTileW, g);
    acc_t* go = reinterpret_cast<acc_t*>(shared);
    acc_t* w = go + rows * cols;
    if (phase == 0) {
      stage(a.grad_out + plane * g.Ho * g.Wo, g.Ho, g.Wo, oh0, ow0, rows, cols, go, ix);
      stage_window(a.w, plane % g.C, g, w, ix);
      return;
    }
    const int64_t ih = ih0 + ix.thread / kTileW, iw = iw0 + ix.thread % kTileW;
    if (ih >= g.H || iw >= g.W) return;
    acc_t acc = 0;
    for (int64_t i = 0; i < g.k; ++i) {
      const int64_t y = ih + g.p - i;  // = oh * s
      if (floor_div(y, g.s) * g.s != y) continue;
      const int64_t row = floor_div(y, g.s) - oh0;
      for (int64_t j = 0; j < g.k; ++j) {
        const int64_t x = iw + g.p - j;
        if (floor_div(x, g.s) * g.s != x) continue;
        acc += go[row * cols + floor_div(x, g.s) - ow0] * w[i * g.k + j];
      }
    }
    a.grad_in[(plane * g.H + ih) * g.W + iw] = static_cast<T>(acc);
  }
};

// ---------------------------------------------------------------------------------------------
// Weight gradient: a block per channel. For each (image, output tile) of the channel, two phases:
// stage the output-gradient tile and the input tile with its halo, then let each thread add its
// pixel's products into its k x k sums. Then a tree reduction across the block, two phases per
// level (the upper half writes its sums, the lower half adds them), and thread 0 writes each tap
// once, into the window of the full-shape weight gradient.
template <typename T>
struct GradWeight {
  using acc_t = at::opmath_type<T>;
  struct Args {
    using kernel = GradWeight;
    const T* grad_out;
    const T* in;
    T* grad_w;
    Geometry g;
  };
  struct Local {
    acc_t sum[kMaxKernel * kMaxKernel];
  };

  static constexpr int kThreads = 128, kH = 4, kW = 32;  // output tile: one pixel per thread
  static constexpr int kLevels = 7;                      // log2(kThreads)
  static constexpr int threads() { return kThreads; }
  NASOPS_HD static int64_t tiles_h(const Geometry& g) { return ceil_div(g.Ho, kH); }
  NASOPS_HD static int64_t tiles_w(const Geometry& g) { return ceil_div(g.Wo, kW); }
  NASOPS_HD static int64_t chunks(const Geometry& g) { return g.N * tiles_h(g) * tiles_w(g); }
  NASOPS_HD static int64_t blocks(const Geometry& g) { return g.C; }
  NASOPS_HD static int64_t staged(const Geometry& g) {  // the tile phases' shared values
    return kH * kW + halo(kH, g) * halo(kW, g);
  }
  NASOPS_HD static int64_t reduced(const Geometry& g) {  // the reduction's
    return (kThreads / 2) * g.k * g.k;
  }
  NASOPS_HD static int64_t shared_bytes(const Geometry& g) {
    const int64_t n = staged(g) > reduced(g) ? staged(g) : reduced(g);
    return n * int64_t(sizeof(acc_t));
  }
  NASOPS_HD static int phases(const Geometry& g) {
    return static_cast<int>(2 * chunks(g) + 2 * kLevels + 1);
  }

  NASOPS_HD static void phase(int phase, const Args& a, const Index& ix, unsigned char* shared,
                              Local& local) {
    const Geometry& g = a.g;
    const int64_t taps = g.k * g.k, c = ix.block;
    acc_t* s = reinterpret_cast<acc_t*>(shared);
    if (phase == 0)
      for (int64_t t = 0; t < taps; ++t) local.sum[t] = 0;
    const int64_t tile_phases = 2 * chunks(g);
    if (phase < tile_phases) {
      const int64_t chunk = phase / 2, tw = tiles_w(g), th = tiles_h(g);
      const int64_t n = chunk / (th * tw), tile = chunk % (th * tw);
      const int64_t oh0 = (tile / tw) * kH, ow0 = (tile % tw) * kW;
      const int64_t rows = halo(kH, g), cols = halo(kW, g);
      acc_t* go = s;
      acc_t* x = s + kH * kW;
      const int64_t plane = n * g.C + c;
      if (phase % 2 == 0) {
        stage(a.grad_out + plane * g.Ho * g.Wo, g.Ho, g.Wo, oh0, ow0, kH, kW, go, ix);
        stage(a.in + plane * g.H * g.W, g.H, g.W, oh0 * g.s - g.p, ow0 * g.s - g.p, rows, cols,
              x, ix);
        return;
      }
      const int64_t r = ix.thread / kW, col = ix.thread % kW;
      const acc_t grad = go[r * kW + col];  // (zero outside the map)
      for (int64_t i = 0; i < g.k; ++i)
        for (int64_t j = 0; j < g.k; ++j)
          local.sum[i * g.k + j] += grad * x[(r * g.s + i) * cols + col * g.s + j];
      return;
    }
    const int64_t step = phase - tile_phases;  // the reduction: level step / 2
    if (step < 2 * kLevels) {
      const int half = kThreads >> (step / 2 + 1);  // threads [half, 2 * half) hand over
      if (step % 2 == 0) {
        if (ix.thread >= half && ix.thread < 2 * half)
          for (int64_t t = 0; t < taps; ++t) s[t * (kThreads / 2) + ix.thread - half] = local.sum[t];
      } else if (ix.thread < half) {
        for (int64_t t = 0; t < taps; ++t) local.sum[t] += s[t * (kThreads / 2) + ix.thread];
      }
      return;
    }
    if (ix.thread == 0)
      for (int64_t t = 0; t < taps; ++t)
        a.grad_w[c * g.K * g.K + g.window_offset + (t / g.k) * g.K + t % g.k] =
            static_cast<T>(local.sum[t]);
  }
};

// ---------------------------------------------------------------------------------------------
// Host side, shared by the GPU launcher (dw_conv2d.cu) and the emulator (dw_conv2d_emulated.cpp):
// checks, outputs and kernel arguments of the three operators; `run(args)` launches or emulates
// the kernel `args` belongs to (decltype(args)::kernel).
inline Geometry geometry(const at::Tensor& input, const at::Tensor& weight, int64_t k, int64_t s) {
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
  TORCH_CHECK_VALUE(k <= kMaxKernel, "dw_conv2d: kernel_size = ", k,
                    " is larger than the CUDA kernels' limit of ", kMaxKernel);
  return g;
}

inline void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input,
                              const Geometry& g, const char* op) {
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef({g.N, g.C, g.Ho, g.Wo}), op,
                    ": grad_output has shape ", grad_output.sizes(),
                    ", which is not the output shape of this input");
  TORCH_CHECK_VALUE(grad_output.device() == input.device(), op, ": grad_output is on ",
                    grad_output.device(), " but input is on ", input.device());
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(), op, ": grad_output dtype ",
                   grad_output.scalar_type(), " differs from input dtype ", input.scalar_type());
}

#define NASOPS_DW_DISPATCH(dtype, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "dw_conv2d", __VA_ARGS__)

template <typename Run>
at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, int64_t k, int64_t s,
                   Run&& run) {
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const Geometry g = geometry(x, w, k, s);
  at::Tensor out = at::empty({g.N, g.C, g.Ho, g.Wo}, x.options());
  if (out.numel() == 0) return out;
  NASOPS_DW_DISPATCH(x.scalar_type(), [&] {
    run(typename Forward<scalar_t>::Args{x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                         out.data_ptr<scalar_t>(), g});
  });
  return out;
}

template <typename Run>
at::Tensor grad_input(const at::Tensor& grad_output, const at::Tensor& input,
                      const at::Tensor& weight, int64_t k, int64_t s, Run&& run) {
  const Geometry g = geometry(input, weight, k, s);
  check_grad_output(grad_output, input, g, "dw_conv2d_grad_input");
  const at::Tensor go = grad_output.contiguous(), w = weight.contiguous();
  at::Tensor grad_in = at::empty({g.N, g.C, g.H, g.W}, go.options());
  if (grad_in.numel() == 0) return grad_in;
  NASOPS_DW_DISPATCH(go.scalar_type(), [&] {
    run(typename GradInput<scalar_t>::Args{go.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                           grad_in.data_ptr<scalar_t>(), g});
  });
  return grad_in;
}

template <typename Run>
at::Tensor grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                       const at::Tensor& weight, int64_t k, int64_t s, Run&& run) {
  const Geometry g = geometry(input, weight, k, s);
  check_grad_output(grad_output, input, g, "dw_conv2d_grad_weight");
  const at::Tensor go = grad_output.contiguous(), x = input.contiguous();
  at::Tensor grad_w = at::zeros(weight.sizes(), weight.options());
  if (g.C == 0 || g.N * g.Ho * g.Wo == 0) return grad_w;
  NASOPS_DW_DISPATCH(go.scalar_type(), [&] {
    run(typename GradWeight<scalar_t>::Args{go.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                            grad_w.data_ptr<scalar_t>(), g});
  });
  return grad_w;
}

}  // namespace dw_cuda
}  // namespace nasops
