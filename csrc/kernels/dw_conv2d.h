// Dynamic-width depthwise convolution: the active channels [:C] and the centred k x k window of
// a shared [C_max, 1, K_max, K_max] weight, padding k / 2, read in place (no sliced copy).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace nasops {

// Checks shapes, kernel, stride, devices and dtypes with messages that name the bad value.
void check_dw_conv2d(const at::Tensor& input, const at::Tensor& weight, int64_t kernel_size,
                     int64_t stride, const char* op);

// Output size of a stride-s convolution with 'same' padding on n pixels: ceil(n / s).
inline int64_t dw_out_size(int64_t n, int64_t stride) { return (n + stride - 1) / stride; }

// CPU kernels over a group of up to kDwGroup channels of one image, vectorised across the
// channels of the group (the group is interleaved in a scratch buffer, so every multiply-add is a
// full vector whatever the map size). Pointers are to the group's first channel: planes of
// H x W (input) or Ho x Wo (output) one after another; w points at the first channel's window
// top-left tap inside the shared weight, whose channels are wc apart and rows ws apart.
constexpr int64_t kDwGroup = 8;

// Layers whose output rows are at least this wide run plane by plane, vectorised along the rows
// (no interleaving needed); narrower ones run in channel groups.
constexpr int64_t kDwRowsMinWidth = 32;

template <typename T>
struct DwKernels {
  void (*forward)(const T* in, const T* w, int64_t wc, int64_t ws, T* out, int64_t channels,
                  int64_t H, int64_t W, int64_t k, int64_t s);
  void (*grad_input)(const T* grad_out, const T* w, int64_t wc, int64_t ws, T* grad_in,
                     int64_t channels, int64_t H, int64_t W, int64_t k, int64_t s);
  // Adds, per channel c < channels and tap, the sum of grad_out * shifted input to
  // acc[c * k * k + tap] (double accumulators).
  void (*grad_weight)(const T* grad_out, const T* in, double* acc, int64_t channels, int64_t H,
                      int64_t W, int64_t k, int64_t s);
  // The same three on a single plane (channels = 1), vectorised along the rows; w points at the
  // plane's window top-left tap, rows ws apart.
  void (*forward_rows)(const T* in, const T* w, int64_t ws, T* out, int64_t H, int64_t W, int64_t k,
                       int64_t s);
  void (*grad_input_rows)(const T* grad_out, const T* w, int64_t ws, T* grad_in, int64_t H,
                          int64_t W, int64_t k, int64_t s);
  void (*grad_weight_rows)(const T* grad_out, const T* in, double* acc, int64_t H, int64_t W,
                           int64_t k, int64_t s);
};

namespace cpu_base {
template <typename T> DwKernels<T> dw_kernels();
}
namespace cpu_avx2 {
template <typename T> DwKernels<T> dw_kernels();
}

}  // namespace nasops
