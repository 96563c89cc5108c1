// The per-plane loops of the depthwise convolution, written so that the compiler vectorises the
// innermost loop over output columns (contiguous for stride 1). Included once per instruction
// set with NASOPS_CPU_NS set (see dw_conv2d_base.cpp, dw_conv2d_avx2.cpp).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "../dw_conv2d.h"

namespace nasops {
namespace NASOPS_CPU_NS {
namespace {

// Output columns ow whose input column ow * s + j - p lies inside [0, W).
inline void column_range(int64_t W, int64_t Wo, int64_t j, int64_t p, int64_t s, int64_t& lo,
                         int64_t& hi) {
  const int64_t last = W - 1 + p - j;  // largest ow * s allowed; negative: no column at all
  lo = p > j ? (p - j + s - 1) / s : 0;
  hi = last < 0 ? 0 : std::min(Wo, last / s + 1);
}

template <typename T>
void forward_plane(const T* in, const T* w, int64_t ws, T* out, int64_t H, int64_t W, int64_t k,
                   int64_t s) {
  const int64_t p = k / 2, Ho = dw_out_size(H, s), Wo = dw_out_size(W, s);
  for (int64_t oh = 0; oh < Ho; ++oh) {
    T* orow = out + oh * Wo;
    std::fill(orow, orow + Wo, T(0));
    for (int64_t i = 0; i < k; ++i) {
      const int64_t ih = oh * s + i - p;
      if (ih < 0 || ih >= H) continue;
      const T* irow = in + ih * W;
      for (int64_t j = 0; j < k; ++j) {
        const T wv = w[i * ws + j];
        int64_t lo, hi;
        column_range(W, Wo, j, p, s, lo, hi);
        const T* src = irow + j - p;
        if (s == 1) {
#pragma omp simd
          for (int64_t ow = lo; ow < hi; ++ow) orow[ow] += wv * src[ow];
        } else {
          for (int64_t ow = lo; ow < hi; ++ow) orow[ow] += wv * src[ow * s];
        }
      }
    }
  }
}

template <typename T>
void grad_input_plane(const T* go, const T* w, int64_t ws, T* gi, int64_t H, int64_t W, int64_t k,
                      int64_t s) {
  const int64_t p = k / 2, Ho = dw_out_size(H, s), Wo = dw_out_size(W, s);
  std::fill(gi, gi + H * W, T(0));
  for (int64_t oh = 0; oh < Ho; ++oh) {
    const T* grow = go + oh * Wo;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t ih = oh * s + i - p;
      if (ih < 0 || ih >= H) continue;
      T* dst_row = gi + ih * W;
      for (int64_t j = 0; j < k; ++j) {
        const T wv = w[i * ws + j];
        int64_t lo, hi;
        column_range(W, Wo, j, p, s, lo, hi);
        T* dst = dst_row + j - p;
        if (s == 1) {
#pragma omp simd
          for (int64_t ow = lo; ow < hi; ++ow) dst[ow] += wv * grow[ow];
        } else {
          for (int64_t ow = lo; ow < hi; ++ow) dst[ow * s] += wv * grow[ow];
        }
      }
    }
  }
}

template <typename T>
void grad_weight_plane(const T* go, const T* in, double* acc, int64_t H, int64_t W, int64_t k,
                       int64_t s) {
  const int64_t p = k / 2, Ho = dw_out_size(H, s), Wo = dw_out_size(W, s);
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      int64_t lo, hi;
      column_range(W, Wo, j, p, s, lo, hi);
      double total = 0;
      for (int64_t oh = 0; oh < Ho; ++oh) {
        const int64_t ih = oh * s + i - p;
        if (ih < 0 || ih >= H) continue;
        const T* grow = go + oh * Wo;
        const T* src = in + ih * W + j - p;
        T row = 0;  // one row in T, rows summed in double: accurate and vectorisable
        if (s == 1) {
#pragma omp simd reduction(+ : row)
          for (int64_t ow = lo; ow < hi; ++ow) row += grow[ow] * src[ow];
        } else {
#pragma omp simd reduction(+ : row)
          for (int64_t ow = lo; ow < hi; ++ow) row += grow[ow] * src[ow * s];
        }
        total += row;
      }
      acc[i * k + j] += total;
    }
  }
}

}  // namespace

template <typename T>
DwPlaneKernels<T> dw_kernels() {
  return {&forward_plane<T>, &grad_input_plane<T>, &grad_weight_plane<T>};
}
template DwPlaneKernels<float> dw_kernels<float>();
template DwPlaneKernels<double> dw_kernels<double>();

}  // namespace NASOPS_CPU_NS
}  // namespace nasops
