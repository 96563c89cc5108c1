// FLOPs (multiply-accumulates of conv and linear layers, one image) and parameter counts (conv
// and linear weights, no biases, no BN) of architectures. See docs/DESIGN.md for the network.
#pragma once
#include <cstdint>
#include <vector>

#include "space.h"

namespace nasops {

struct Cost {
  int64_t macs = 0;
  int64_t params = 0;

  Cost& operator+=(const Cost& o) {
    macs += o.macs;
    params += o.params;
    return *this;
  }
};

// make_divisible(v, 8) of docs/DESIGN.md for an integer v: the nearest multiple of 8 (at least 8),
// plus 8 if that fell below 0.9 v. Hidden widths of MBConv blocks and SE reductions.
inline int64_t make_divisible8(int64_t v) {
  int64_t rounded = (v + 4) / 8 * 8;
  if (rounded < 8) rounded = 8;
  if (10 * rounded < 9 * v) rounded += 8;
  return rounded;
}

// The cost of every architecture of a space as a sum of table entries: the stem, each stage's
// first block (it sees the previous width and carries the stride), (depth - 1) times the stage's
// repeated block, and the head. The tables are filled once from the layer formulas, so costing
// an architecture is a dozen look-ups: the sampler does it for every trial.
class CostModel {
 public:
  explicit CostModel(const Space& space);

  Cost of_indices(const int32_t* indices) const;  // one choice index per dimension
  // A bound on every architecture's cost (the sum of each table's largest entry).
  Cost upper_bound() const { return bound_; }

 private:
  struct StageTables {
    std::vector<Cost> first;            // [res][prev width][width][kernel][expand]
    std::vector<Cost> rest;             // [res][width][kernel][expand]
    std::vector<int64_t> more_blocks;   // depth - 1, per depth choice
    int32_t n_prev = 0, n_width = 0, n_kernel = 0, n_expand = 0;
  };
  int32_t S_ = 0, n_stem_ = 0, n_head_ = 0;
  std::vector<Cost> stem_;              // [res][stem width]
  std::vector<StageTables> stages_;
  std::vector<Cost> head_;              // [res][last stage width][head width]
  Cost bound_;
};

}  // namespace nasops
