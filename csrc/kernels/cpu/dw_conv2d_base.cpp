// Depthwise plane kernels for any x86-64 / other processor (the compiler's baseline ISA).
#define NASOPS_CPU_NS cpu_base
#include "dw_conv2d_kernel.h"
