// Schemas of the torch.ops.nasops depthwise operators and their shared argument checks.
#include "dw_conv2d.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace nasops {

void check_dw_conv2d(const at::Tensor& input, const at::Tensor& weight, int64_t kernel_size,
                     int64_t stride, const char* op) {
  TORCH_CHECK_VALUE(input.dim() == 4, op, ": input must be 4-D [N, C, H, W], got shape ",
                    input.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == 1 && weight.size(2) == weight.size(3),
                    op, ": weight must be the shared [C_max, 1, K_max, K_max] tensor, got shape ",
                    weight.sizes());
  const int64_t k_max = weight.size(2);
  TORCH_CHECK_VALUE(k_max % 2 == 1, op, ": the weight's K_max = ", k_max,
                    " must be odd so that a centred window exists");
  TORCH_CHECK_VALUE(kernel_size >= 1 && kernel_size % 2 == 1 && kernel_size <= k_max, op,
                    ": kernel_size = ", kernel_size, " must be odd and between 1 and K_max = ",
                    k_max);
  TORCH_CHECK_VALUE(stride >= 1, op, ": stride = ", stride, " must be at least 1");
  TORCH_CHECK_VALUE(input.size(1) <= weight.size(0), op, ": input has C = ", input.size(1),
                    " channels but the weight holds only C_max = ", weight.size(0));
  TORCH_CHECK_VALUE(input.size(2) >= 1 && input.size(3) >= 1, op,
                    ": input height and width must be positive, got ", input.sizes());
  TORCH_CHECK_VALUE(input.device() == weight.device(), op, ": input is on ", input.device(),
                    " but weight is on ", weight.device());
  TORCH_CHECK_TYPE(input.scalar_type() == weight.scalar_type(), op, ": input dtype ",
                   input.scalar_type(), " differs from weight dtype ", weight.scalar_type());
  const auto dtype = input.scalar_type();
  if (input.is_cuda()) {
    TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                         dtype == at::kBFloat16,
                     op, ": dtype ", dtype, " is not supported on CUDA; allowed: float32, "
                     "float64, float16, bfloat16");
  } else {
    TORCH_CHECK_VALUE(input.is_cpu(), op, ": device ", input.device(),
                      " is not supported; allowed: cpu, cuda");
    TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble, op, ": dtype ", dtype,
                     " is not supported on CPU; allowed: float32, float64");
  }
}

}  // namespace nasops

TORCH_LIBRARY(nasops, m) {
  m.def("dw_conv2d(Tensor input, Tensor weight, int kernel_size, int stride) -> Tensor");
  m.def("dw_conv2d_grad_input(Tensor grad_output, Tensor input, Tensor weight, int kernel_size, "
        "int stride) -> Tensor");
  m.def("dw_conv2d_grad_weight(Tensor grad_output, Tensor input, Tensor weight, int kernel_size, "
        "int stride) -> Tensor");
}

namespace {

// Under autocast, both arguments are cast to one dtype that the device's kernels have: float32
// on CPU (its kernels are float32 / float64 only), the autocast dtype (float16 or bfloat16) on
// CUDA. Without this rule autocast would hand the op a low-precision input beside the float32
// shared weight.
template <c10::DeviceType device, c10::DispatchKey autocast_key>
at::Tensor dw_conv2d_autocast(const at::Tensor& input, const at::Tensor& weight,
                              int64_t kernel_size, int64_t stride) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  const at::ScalarType dtype =
      device == c10::DeviceType::CPU
          ? at::kFloat
          : at::autocast::get_lower_precision_fp_from_device_type(device);
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("nasops::dw_conv2d", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t)>();
  return op.call(at::autocast::cached_cast(dtype, input, device),
                 at::autocast::cached_cast(dtype, weight, device), kernel_size, stride);
}

}  // namespace

TORCH_LIBRARY_IMPL(nasops, AutocastCPU, m) {
  m.impl("dw_conv2d",
         &dw_conv2d_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(nasops, AutocastCUDA, m) {
  m.impl("dw_conv2d",
         &dw_conv2d_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
}
