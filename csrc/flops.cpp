#include "flops.h"

#include <cmath>

namespace nasops {

int64_t make_divisible(double value, int64_t divisor) {
  int64_t rounded = static_cast<int64_t>(value + divisor / 2.0) / divisor * divisor;
  if (rounded < divisor) rounded = divisor;
  if (rounded < 0.9 * value) rounded += divisor;  // never round down by more than 10%
  return rounded;
}

namespace {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// MACs and weights of one MBConv block whose input is n x n with c_in channels.
inline void add_block(Cost& cost, int64_t n, int64_t c_in, int64_t c_out, int64_t kernel,
                      int64_t expand, int64_t stride, bool se, bool shortcut_conv) {
  const int64_t hidden = make_divisible(static_cast<double>(c_in * expand));
  const int64_t n_out = ceil_div(n, stride);
  const int64_t in_px = n * n, out_px = n_out * n_out;
  if (expand != 1) {  // 1x1 expansion
    cost.macs += in_px * c_in * hidden;
    cost.params += c_in * hidden;
  }
  cost.macs += out_px * hidden * kernel * kernel;  // depthwise
  cost.params += hidden * kernel * kernel;
  if (se) {  // reduce and expand 1x1 convs on the pooled 1x1 map
    const int64_t reduced = make_divisible(static_cast<double>(hidden / 4));
    cost.macs += 2 * hidden * reduced;
    cost.params += 2 * hidden * reduced;
  }
  cost.macs += out_px * hidden * c_out;  // 1x1 projection
  cost.params += hidden * c_out;
  if (shortcut_conv) {  // residual 1x1 conv after the pooling that carries the stride
    cost.macs += out_px * c_in * c_out;
    cost.params += c_in * c_out;
  }
}

}  // namespace

Cost arch_cost(const Space& space, const int64_t* arch, bool every_shortcut_conv) {
  const SpaceSpec& spec = space.spec();
  const int64_t S = space.num_stages();
  const int64_t* width = arch + space.width_offset();
  const int64_t* depth = arch + space.depth_offset();
  const int64_t* kernel = arch + space.kernel_offset();
  const int64_t* expand = arch + space.expand_offset();
  Cost cost;

  int64_t n = ceil_div(arch[0], spec.stem_stride);
  const int64_t stem_weights = spec.in_channels * width[0] * spec.stem_kernel * spec.stem_kernel;
  cost.macs += n * n * stem_weights;
  cost.params += stem_weights;

  int64_t c_in = width[0];
  for (int64_t s = 0; s < S; ++s) {
    const StageSpec& stage = spec.stages[s];
    const int64_t c_out = width[s + 1];
    add_block(cost, n, c_in, c_out, kernel[s], expand[s], stage.stride, stage.se,
              every_shortcut_conv || c_in != c_out);
    n = ceil_div(n, stage.stride);
    if (depth[s] > 1) {  // the other blocks of a stage are identical: count one, multiply
      Cost block;
      add_block(block, n, c_out, c_out, kernel[s], expand[s], 1, stage.se, false);
      cost.macs += (depth[s] - 1) * block.macs;
      cost.params += (depth[s] - 1) * block.params;
    }
    c_in = c_out;
  }

  const int64_t last = spec.head_expand * c_in;  // 1x1 conv at the last resolution
  const int64_t head = width[S + 1];             // 1x1 conv after global pooling
  cost.macs += n * n * c_in * last + last * head + head * spec.num_classes;
  cost.params += c_in * last + last * head + head * spec.num_classes;
  return cost;
}

}  // namespace nasops
