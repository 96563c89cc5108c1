// FLOPs (multiply-accumulates of conv and linear layers, one image) and parameter counts (conv
// and linear weights, no biases, no BN) of encoded architectures. See DESIGN.md for the network.
#pragma once
#include <cstdint>

#include "space.h"

namespace nasops {

struct Cost {
  int64_t macs = 0;
  int64_t params = 0;
};

// The hidden width of an MBConv block, rounded as the reference networks do.
int64_t make_divisible(double value, int64_t divisor = 8);

// Cost of one encoded architecture (D values, already checked). With every_shortcut_conv the
// residual 1x1 conv is counted in every stage's first block whether or not the width changes:
// every term is then non-decreasing in every dimension, so the result at the space's largest
// architecture bounds the cost of all its architectures (used by size-proportional sampling).
Cost arch_cost(const Space& space, const int64_t* arch, bool every_shortcut_conv = false);

}  // namespace nasops
