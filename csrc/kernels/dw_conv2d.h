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

// Per-plane CPU kernels (one image, one channel). w points at the window's top-left tap inside
// the shared weight; ws is the weight's row stride (K_max).
// There is one build of them per instruction set (cpu/dw_conv2d_kernel.h); cpu/dw_conv2d.cpp
// picks the best one the processor supports.
template <typename T>
struct DwPlaneKernels {
  void (*forward)(const T* in, const T* w, int64_t ws, T* out, int64_t H, int64_t W, int64_t k,
                  int64_t s);
  void (*grad_input)(const T* grad_out, const T* w, int64_t ws, T* grad_in, int64_t H, int64_t W,
                     int64_t k, int64_t s);
  // Adds sum over the plane of grad_out * shifted input to acc[k * k] (double accumulators).
  void (*grad_weight)(const T* grad_out, const T* in, double* acc, int64_t H, int64_t W,
                      int64_t k, int64_t s);
};

namespace cpu_base {
template <typename T> DwPlaneKernels<T> dw_kernels();
}
namespace cpu_avx2 {
template <typename T> DwPlaneKernels<T> dw_kernels();
}

}  // namespace nasops
