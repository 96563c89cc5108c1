// FLOPs (multiply-accumulates of conv and linear layers, one image) and parameter counts (conv
// and linear weights, no biases, no BN) of architectures, as sums of table entries. The tables
// are computed in Python from the network's one definition (cost_tables in
// src/nasops/nn/supernet.py); see docs/DESIGN.md.
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

// The cost of every part at every combination of its choices, row-major in choice indices:
// stem [res][stem width]; per stage, first[res][prev width][width][kernel][expand] (the stage's
// first block: it sees the previous width and carries the stride) and rest[res][width][kernel]
// [expand] (each further block); head [res][last stage width][head width].
struct CostTables {
  std::vector<Cost> stem, head;
  std::vector<std::vector<Cost>> first, rest;
};

// Costing an architecture is a dozen look-ups: the sampler does it for every trial.
class CostModel {
 public:
  // Throws std::invalid_argument when a table's size does not fit the space's choices.
  CostModel(const Space& space, CostTables tables);

  Cost of_indices(const int32_t* indices) const;  // one choice index per dimension
  // A bound on every architecture's cost (the sum of each table's largest entry).
  Cost upper_bound() const { return bound_; }

 private:
  struct StageShape {
    int32_t n_prev = 0, n_width = 0, n_kernel = 0, n_expand = 0;
    std::vector<int64_t> more_blocks;  // depth - 1, per depth choice
  };
  int32_t S_ = 0, n_stem_ = 0, n_head_ = 0;
  int64_t depth_offset_ = 0, kernel_offset_ = 0, expand_offset_ = 0;
  CostTables t_;
  std::vector<StageShape> stages_;
  Cost bound_;
};

}  // namespace nasops
