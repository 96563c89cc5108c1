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

// The CPU kernels (cpu/dw_conv2d_kernel.h). A call covers planes [begin, end) of the N x C
// planes, image-major: input planes H x W, output planes Ho x Wo (the reverse for the input
// gradient); plane's window starts at w + (plane % C) * wc, its rows ws apart (w points at the
// top-left tap of channel 0's centred window inside the shared weight).
template <typename T>
struct DwKernels {
  int64_t lanes;  // values per vector in this build: the channel-group width
  void (*forward)(const T* in, const T* w, int64_t wc, int64_t ws, T* out, int64_t C, int64_t H,
                  int64_t W, int64_t k, int64_t s, int64_t begin, int64_t end);
  void (*grad_input)(const T* grad_out, const T* w, int64_t wc, int64_t ws, T* grad_in, int64_t C,
                     int64_t H, int64_t W, int64_t k, int64_t s, int64_t begin, int64_t end);
  // acc[tap] = the weight gradient of channel c's tap, summed over the N images in double.
  void (*grad_weight)(const T* grad_out, const T* in, double* acc, int64_t N, int64_t C, int64_t H,
                      int64_t W, int64_t k, int64_t s, int64_t c);
  // Narrow maps: a group of `channels` <= lanes channels of one image, vectorised across
  // them. Pointers are to the group's first plane; acc[c * k * k + tap] is added to.
  void (*forward_group)(const T* in, const T* w, int64_t wc, int64_t ws, T* out, int64_t channels,
                        int64_t H, int64_t W, int64_t k, int64_t s);
  void (*grad_input_group)(const T* grad_out, const T* w, int64_t wc, int64_t ws, T* grad_in,
                           int64_t channels, int64_t H, int64_t W, int64_t k, int64_t s);
  void (*grad_weight_group)(const T* grad_out, const T* in, double* acc, int64_t channels,
                            int64_t H, int64_t W, int64_t k, int64_t s);
  // Channels-last tensors (cpu/dw_conv2d_nhwc.h): taps are [k * k][round_up(C, lanes)], tap
  // (i, j) of channel c at taps[(i * k + j) * Cp + c], zero past C. Forward: output rows
  // [begin, end) of the N * Ho; input gradient: input rows [begin, end) of the N * H; weight
  // gradient: channels [c0, c0 + count) (count <= lanes) over output rows [begin, end), added to
  // total[(i * k + j) * lanes + v] in double.
  void (*forward_nhwc)(const T* in, const T* taps, T* out, int64_t C, int64_t H, int64_t W,
                       int64_t k, int64_t s, int64_t begin, int64_t end);
  void (*grad_input_nhwc)(const T* grad_out, const T* taps, T* grad_in, int64_t C, int64_t H,
                          int64_t W, int64_t k, int64_t s, int64_t begin, int64_t end);
  void (*grad_weight_nhwc)(const T* grad_out, const T* in, double* total, int64_t C, int64_t H,
                           int64_t W, int64_t k, int64_t s, int64_t c0, int64_t count,
                           int64_t begin, int64_t end);
};


namespace cpu_base {
template <typename T> DwKernels<T> dw_kernels();
}
namespace cpu_avx2 {
template <typename T> DwKernels<T> dw_kernels();
}
namespace cpu_avx512 {
template <typename T> DwKernels<T> dw_kernels();
}

}  // namespace nasops
