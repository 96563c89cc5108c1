// The CPU kernels (depthwise convolution, batch norm + activation) for any processor: the
// compiler's baseline instruction set.
#define NASOPS_CPU_NS cpu_base
#include "batch_norm_act_kernel.h"
#include "dw_conv2d_kernel.h"
