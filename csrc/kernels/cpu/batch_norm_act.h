// Batch norm + activation over channels-last float32 rows (N * H * W rows of C channels): the
// loops of the fused operators in batch_norm_act.cpp, built once per instruction set
// (batch_norm_act_kernel.h).
#pragma once
#include <cstdint>

namespace nasops {

enum class Act { identity = 0, relu = 1, silu = 2, hardswish = 3 };
constexpr int kActs = 4;

struct BnKernels {
  // With d = x - center[c]: sum[c] += sum over the rows of d, squares[c] += of d^2 (partial
  // sums in float, added in double every few rows). A center near the mean keeps
  // E[d^2] - E[d]^2 accurate when the mean is large against the spread.
  void (*stats)(const float* x, const float* center, int64_t rows, int64_t C, double* sum,
                double* squares);
  // Every kernel below normalises z = (x - center) * scale + shift: x minus a value near the
  // channel mean first, so that z stays accurate when the mean is large against the spread.
  // y = act(z), per channel; y may be x (in place).
  void (*forward[kActs])(const float* x, float* y, int64_t rows, int64_t C, const float* center,
                         const float* scale, const float* shift);
  // With dz = dy * act'(z): sum_dz[c] += sum of dz, sum_dzx[c] += sum of dz * (x - center[c]).
  void (*grad_stats[kActs])(const float* dy, const float* x, int64_t rows, int64_t C,
                            const float* center, const float* scale, const float* shift,
                            double* sum_dz, double* sum_dzx);
  // dx = dz * scale + a * (x - center) + b, dz as above.
  void (*grad_input[kActs])(const float* dy, const float* x, float* dx, int64_t rows, int64_t C,
                            const float* center, const float* scale, const float* shift,
                            const float* a, const float* b);
};

namespace cpu_base {
BnKernels bn_kernels();
}
namespace cpu_avx2 {
BnKernels bn_kernels();
}
namespace cpu_avx512 {
BnKernels bn_kernels();
}

}  // namespace nasops
