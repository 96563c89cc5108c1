#include "forest.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace nasops {

void Forest::validate() const {
  const int64_t n = static_cast<int64_t>(feature.size());
  if (static_cast<int64_t>(left.size()) != n || static_cast<int64_t>(right.size()) != n ||
      static_cast<int64_t>(threshold.size()) != n || static_cast<int64_t>(value.size()) != n)
    throw std::invalid_argument("forest node arrays have different lengths");
  if (roots.empty()) throw std::invalid_argument("forest has no trees");
  for (int64_t i = 0; i < n; ++i) {
    if (left[i] < 0) continue;
    // Children come after their parent (as fitted trees are stored), so every path ends.
    if (left[i] <= i || left[i] >= n || right[i] <= i || right[i] >= n)
      throw std::invalid_argument("forest node " + std::to_string(i) + " has children out of range");
    if (feature[i] < 0 || feature[i] >= num_features)
      throw std::invalid_argument("forest node " + std::to_string(i) + " splits on feature " +
                                  std::to_string(feature[i]) + " of " +
                                  std::to_string(num_features));
  }
  for (int32_t r : roots)
    if (r < 0 || r >= n) throw std::invalid_argument("forest root out of range");
}

void Forest::predict(const double* x, int64_t rows, double* out) const {
  // Blocks of rows, tree by tree: a tree's nodes stay in cache while the block walks it.
  constexpr int64_t kBlock = 256;
  const double scale = 1.0 / static_cast<double>(roots.size());
  for (int64_t start = 0; start < rows; start += kBlock) {
    const int64_t end = std::min(rows, start + kBlock);
    for (int64_t r = start; r < end; ++r) out[r] = 0.0;
    for (int32_t root : roots)
      for (int64_t r = start; r < end; ++r) {
        const double* row = x + r * num_features;
        int32_t node = root;
        while (left[node] >= 0) node = row[feature[node]] <= threshold[node] ? left[node] : right[node];
        out[r] += value[node];
      }
    for (int64_t r = start; r < end; ++r) out[r] *= scale;
  }
}

}  // namespace nasops
