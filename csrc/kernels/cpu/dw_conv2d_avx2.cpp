// Depthwise plane kernels built with AVX2 + FMA (CMake adds -mavx2 -mfma to this file only);
// used only when the processor reports both.
#define NASOPS_CPU_NS cpu_avx2
#include "dw_conv2d_kernel.h"
