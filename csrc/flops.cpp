#include "flops.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace nasops {

namespace {

Cost largest(const std::vector<Cost>& table) {
  Cost m;
  for (const Cost& c : table) {
    m.macs = std::max(m.macs, c.macs);
    m.params = std::max(m.params, c.params);
  }
  return m;
}

void check_size(const std::string& name, const std::vector<Cost>& table, int64_t expected) {
  if (static_cast<int64_t>(table.size()) != expected)
    throw std::invalid_argument("cost table " + name + " has " + std::to_string(table.size()) +
                                " entries; the space's choices need " + std::to_string(expected));
  for (const Cost& c : table)
    if (c.macs < 0 || c.params < 0)
      throw std::invalid_argument("cost table " + name + " has a negative entry");
}

}  // namespace

CostModel::CostModel(const Space& space, CostTables tables) : t_(std::move(tables)) {
  const auto& dims = space.dims();
  S_ = static_cast<int32_t>(space.num_stages());
  depth_offset_ = space.depth_offset();
  kernel_offset_ = space.kernel_offset();
  expand_offset_ = space.expand_offset();
  const int64_t n_res = dims[0].size();
  n_stem_ = dims[space.width_offset()].size();
  n_head_ = dims[space.width_offset() + S_ + 1].size();
  if (static_cast<int32_t>(t_.first.size()) != S_ || static_cast<int32_t>(t_.rest.size()) != S_)
    throw std::invalid_argument("cost tables: one first-block and one rest-block table per stage "
                                "expected, for " + std::to_string(S_) + " stages");
  check_size("stem", t_.stem, n_res * n_stem_);
  bound_ += largest(t_.stem);
  for (int32_t s = 0; s < S_; ++s) {
    StageShape shape;
    shape.n_prev = dims[space.width_offset() + s].size();
    shape.n_width = dims[space.width_offset() + s + 1].size();
    shape.n_kernel = dims[kernel_offset_ + s].size();
    shape.n_expand = dims[expand_offset_ + s].size();
    for (int64_t d : dims[depth_offset_ + s].choices) shape.more_blocks.push_back(d - 1);
    const int64_t per_res = int64_t{shape.n_width} * shape.n_kernel * shape.n_expand;
    const std::string stage = "[" + std::to_string(s) + "]";
    check_size("first" + stage, t_.first[s], n_res * shape.n_prev * per_res);
    check_size("rest" + stage, t_.rest[s], n_res * per_res);
    const Cost rest_max = largest(t_.rest[s]);
    bound_ += largest(t_.first[s]);
    bound_.macs += shape.more_blocks.back() * rest_max.macs;
    bound_.params += shape.more_blocks.back() * rest_max.params;
    stages_.push_back(std::move(shape));
  }
  check_size("head", t_.head, n_res * stages_.back().n_width * n_head_);
  bound_ += largest(t_.head);
}

Cost CostModel::of_indices(const int32_t* x) const {
  const int32_t r = x[0];
  const int32_t* w = x + 1;  // stem, stages, head (Space::width_offset)
  const int32_t* depth = x + depth_offset_;
  const int32_t* kernel = x + kernel_offset_;
  const int32_t* expand = x + expand_offset_;
  Cost cost = t_.stem[r * n_stem_ + w[0]];
  for (int32_t s = 0; s < S_; ++s) {
    const StageShape& t = stages_[s];
    const int32_t ke = kernel[s] * t.n_expand + expand[s];
    const int32_t kernels = t.n_kernel * t.n_expand;
    cost += t_.first[s][((r * t.n_prev + w[s]) * t.n_width + w[s + 1]) * kernels + ke];
    const Cost& block = t_.rest[s][(r * t.n_width + w[s + 1]) * kernels + ke];
    const int64_t more = t.more_blocks[depth[s]];
    cost.macs += more * block.macs;
    cost.params += more * block.params;
  }
  cost += t_.head[(r * stages_.back().n_width + w[S_]) * n_head_ + w[S_ + 1]];
  return cost;
}

}  // namespace nasops
