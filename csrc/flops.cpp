#include "flops.h"

#include <algorithm>
#include <stdexcept>

namespace nasops {

namespace {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// MACs and weights of one MBConv block whose input is n x n with c_in channels.
Cost block_cost(int64_t n, int64_t c_in, int64_t c_out, int64_t kernel, int64_t expand,
                int64_t stride, bool se) {
  Cost cost;
  const int64_t hidden = make_divisible8(c_in * expand);
  const int64_t n_out = ceil_div(n, stride);
  const int64_t in_px = n * n, out_px = n_out * n_out;
  if (expand != 1) {  // 1x1 expansion
    cost.macs += in_px * c_in * hidden;
    cost.params += c_in * hidden;
  }
  cost.macs += out_px * hidden * kernel * kernel;  // depthwise
  cost.params += hidden * kernel * kernel;
  if (se) {  // reduce and expand 1x1 convs on the pooled 1x1 map
    const int64_t reduced = make_divisible8(hidden / 4);
    cost.macs += 2 * hidden * reduced;
    cost.params += 2 * hidden * reduced;
  }
  cost.macs += out_px * hidden * c_out;  // 1x1 projection
  cost.params += hidden * c_out;
  if (c_in != c_out) {  // residual 1x1 conv, after the pooling that carries the stride
    cost.macs += out_px * c_in * c_out;
    cost.params += c_in * c_out;
  }
  return cost;
}

Cost largest(const std::vector<Cost>& table) {
  Cost m;
  for (const Cost& c : table) {
    m.macs = std::max(m.macs, c.macs);
    m.params = std::max(m.params, c.params);
  }
  return m;
}

}  // namespace

CostModel::CostModel(const Space& space) {
  const SpaceSpec& spec = space.spec();
  const auto& dims = space.dims();
  S_ = static_cast<int32_t>(space.num_stages());
  const Dim& res = dims[0];
  const Dim& stem = dims[space.width_offset()];
  const Dim& head = dims[space.width_offset() + S_ + 1];
  n_stem_ = stem.size();
  n_head_ = head.size();

  // Feature-map size at the input of each stage, per resolution, and after the last stage.
  std::vector<std::vector<int64_t>> size(res.size());
  for (int32_t r = 0; r < res.size(); ++r) {
    int64_t n = ceil_div(res.choices[r], spec.stem_stride);
    for (int32_t s = 0; s < S_; ++s) {
      size[r].push_back(n);
      n = ceil_div(n, spec.stages[s].stride);
    }
    size[r].push_back(n);
  }

  for (int32_t r = 0; r < res.size(); ++r)
    for (int64_t w : stem.choices) {
      const int64_t weights = spec.in_channels * w * spec.stem_kernel * spec.stem_kernel;
      stem_.push_back({size[r][0] * size[r][0] * weights, weights});
    }
  bound_ += largest(stem_);

  for (int32_t s = 0; s < S_; ++s) {
    const StageSpec& stage = spec.stages[s];
    const Dim& prev = dims[space.width_offset() + s];
    const Dim& width = dims[space.width_offset() + s + 1];
    const Dim& depth = dims[space.depth_offset() + s];
    const Dim& kernel = dims[space.kernel_offset() + s];
    const Dim& expand = dims[space.expand_offset() + s];
    const double entries = 1.0 * res.size() * prev.size() * width.size() * kernel.size() * expand.size();
    if (entries > 5e7)
      throw std::invalid_argument("stage " + std::to_string(s) + " has too many combinations of "
                                  "choices for the cost tables (" + std::to_string(entries) + ")");
    StageTables t;
    t.n_prev = prev.size();
    t.n_width = width.size();
    t.n_kernel = kernel.size();
    t.n_expand = expand.size();
    for (int32_t r = 0; r < res.size(); ++r) {
      const int64_t n = size[r][s], n_out = size[r][s + 1];
      for (int64_t c_in : prev.choices)
        for (int64_t c_out : width.choices)
          for (int64_t k : kernel.choices)
            for (int64_t e : expand.choices)
              t.first.push_back(block_cost(n, c_in, c_out, k, e, stage.stride, stage.se));
      for (int64_t c : width.choices)
        for (int64_t k : kernel.choices)
          for (int64_t e : expand.choices) t.rest.push_back(block_cost(n_out, c, c, k, e, 1, stage.se));
    }
    for (int64_t d : depth.choices) t.more_blocks.push_back(d - 1);
    const Cost rest_max = largest(t.rest);
    bound_ += largest(t.first);
    bound_.macs += t.more_blocks.back() * rest_max.macs;
    bound_.params += t.more_blocks.back() * rest_max.params;
    stages_.push_back(std::move(t));
  }

  // Head: 1x1 conv to head_expand x the last width, global pool, 1x1 conv, classifier.
  const Dim& last = dims[space.width_offset() + S_];
  for (int32_t r = 0; r < res.size(); ++r)
    for (int64_t c : last.choices)
      for (int64_t h : head.choices) {
        const int64_t wide = spec.head_expand * c;
        const int64_t n = size[r][S_];
        head_.push_back({n * n * c * wide + wide * h + h * spec.num_classes,
                         c * wide + wide * h + h * spec.num_classes});
      }
  bound_ += largest(head_);
}

Cost CostModel::of_indices(const int32_t* x) const {
  const int32_t r = x[0];
  const int32_t* w = x + 1;               // stem, stages, head
  const int32_t* depth = x + S_ + 3;
  const int32_t* kernel = depth + S_;
  const int32_t* expand = kernel + S_;
  Cost cost = stem_[r * n_stem_ + w[0]];
  for (int32_t s = 0; s < S_; ++s) {
    const StageTables& t = stages_[s];
    const int32_t ke = kernel[s] * t.n_expand + expand[s];
    const int32_t rest_kernels = t.n_kernel * t.n_expand;
    cost += t.first[((r * t.n_prev + w[s]) * t.n_width + w[s + 1]) * rest_kernels + ke];
    const Cost& block = t.rest[(r * t.n_width + w[s + 1]) * rest_kernels + ke];
    const int64_t more = t.more_blocks[depth[s]];
    cost.macs += more * block.macs;
    cost.params += more * block.params;
  }
  cost += head_[(r * stages_.back().n_width + w[S_]) * n_head_ + w[S_ + 1]];
  return cost;
}

}  // namespace nasops
