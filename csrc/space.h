// A search space as plain data, the flat architecture encoding, and checks of encoded
// architectures. Python (src/nasops/space.py) validates the YAML and hands the numbers over.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "rng.h"

namespace nasops {

// The choices of each dimension: all the core needs to know of the network. What the layers
// cost comes from Python, where the network is defined (CostTables in flops.h).
struct StageSpec {
  std::vector<int64_t> width, depth, kernel_size, expand_ratio;
};

struct SpaceSpec {
  std::vector<int64_t> resolution;
  std::vector<int64_t> stem_width;
  std::vector<StageSpec> stages;
  std::vector<int64_t> head_width;
};

// One position of the flat encoding: its name (e.g. "width[3]") and its allowed values, sorted.
struct Dim {
  std::string name;
  std::vector<int64_t> choices;
  std::vector<int32_t> lookup;  // lookup[v - choices.front()]: index of v in choices, or -1

  // Index of value v among the choices, or -1 when v is not allowed. O(1).
  int32_t index_of(int64_t v) const {
    const int64_t i = v - choices.front();
    return i >= 0 && i < static_cast<int64_t>(lookup.size()) ? lookup[i] : -1;
  }
  int32_t size() const { return static_cast<int32_t>(choices.size()); }
};

class CostModel;   // flops.h
struct CostTables;  // flops.h

class Space {
 public:
  // Throws std::invalid_argument when a dimension or a cost table is malformed.
  Space(SpaceSpec spec, CostTables tables);
  ~Space();

  const SpaceSpec& spec() const { return spec_; }
  const std::vector<Dim>& dims() const { return dims_; }
  int64_t num_dims() const { return static_cast<int64_t>(dims_.size()); }
  int64_t num_stages() const { return static_cast<int64_t>(spec_.stages.size()); }

  // Offsets of the groups of the flat encoding: resolution, widths (stem, stages, head),
  // depths, kernel sizes, expand ratios (one per stage each).
  int64_t width_offset() const { return 1; }
  int64_t depth_offset() const { return 1 + num_stages() + 2; }
  int64_t kernel_offset() const { return depth_offset() + num_stages(); }
  int64_t expand_offset() const { return kernel_offset() + num_stages(); }

  // Throws std::invalid_argument naming the row, the field, the value and the allowed values.
  void check(const int64_t* archs, int64_t n) const;

  // Choice indices of one checked architecture (D values).
  void to_indices(const int64_t* arch, int32_t* indices) const;

  // Fills out[n * D] with architectures drawn uniformly (each dimension independently).
  void sample_uniform(Rng& rng, int64_t* out, int64_t n) const;

  // FLOPs and parameter counts of this space's architectures.
  const CostModel& cost_model() const { return *cost_model_; }

  // The architecture with every dimension at its smallest / largest choice.
  std::vector<int64_t> min_arch() const;
  std::vector<int64_t> max_arch() const;

 private:
  SpaceSpec spec_;
  std::vector<Dim> dims_;
  std::unique_ptr<CostModel> cost_model_;
};

}  // namespace nasops
