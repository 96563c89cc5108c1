// The CPU kernels built with AVX2 + FMA (CMake adds -mavx2 -mfma to this file only), 8 float32
// per vector; used only when the processor reports both.
#define NASOPS_CPU_NS cpu_avx2
#include "batch_norm_act_kernel.h"
#include "dw_conv2d_kernel.h"
