// The CPU kernels built with AVX-512 (CMake adds -mavx512f -mavx512vl -mavx2 -mfma to this file
// only), 16 float32 per vector; used only when the processor reports them.
#define NASOPS_CPU_NS cpu_avx512
#define NASOPS_CPU_LANES 16
#include "batch_norm_act_kernel.h"
#include "dw_conv2d_kernel.h"
