// A regression forest as flat node arrays, evaluated over many feature rows (num_features values each): the accuracy
// predictor's hot path (the offline strategy predicts ~1M sub-networks, a search thousands per
// generation), kept out of Python and independent of the library that fitted the trees.
#pragma once

#include <cstdint>
#include <vector>

namespace nasops {

struct Forest {
  // Node i: a leaf when left[i] < 0 (its prediction is value[i]); otherwise rows with
  // x[feature[i]] <= threshold[i] go to node left[i], the others to right[i]. Indices are into
  // these arrays; roots[t] is tree t's first node.
  std::vector<int32_t> feature, left, right, roots;
  std::vector<double> threshold, value;
  int64_t num_features = 0;

  // Checks that every index is in range and that every tree path ends at a leaf; throws
  // std::invalid_argument naming the first bad node.
  void validate() const;

  // out[r] = mean over trees of the leaf value that row r (x[r * num_features ...]) reaches.
  void predict(const double* x, int64_t rows, double* out) const;
};

}  // namespace nasops
