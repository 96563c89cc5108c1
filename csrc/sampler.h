// The AttentiveNAS FLOPs prior p(t) and per-dimension proposal q(x | t) with rejection sampling,
// and size-proportional sampling for balanced training. All state is plain integers so that a
// training checkpoint can hold it (state() / from_state()).
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "flops.h"
#include "rng.h"
#include "space.h"

namespace nasops {

struct SamplerStats {
  int64_t samples = 0;    // architectures returned by sample()
  int64_t trials = 0;     // proposal draws they took, accepted ones included
  int64_t fallbacks = 0;  // samples taken from the stored prior examples after max_trials
  int64_t proportional_samples = 0;  // architectures returned by sample_proportional()
  int64_t proportional_draws = 0;    // uniform draws they took
};

// Everything a sampler is: enough to rebuild it exactly.
struct SamplerState {
  double step = 25.0;
  int64_t max_trials = 1000;
  int64_t examples_per_bin = 16;
  std::vector<int64_t> bins;       // bin index b (target t = b * step) of each prior bin, sorted
  std::vector<int64_t> counts;     // prior samples in each bin
  std::vector<int64_t> proposal;   // [bins][sum of choices]: per-dimension choice counts
  std::vector<int64_t> examples;   // [bins][examples_per_bin][D]: prior archs (fallback)
  std::vector<int64_t> n_examples; // stored examples of each bin
  std::array<uint64_t, 4> rng{};
  SamplerStats stats;
};

class Sampler {
 public:
  // Builds the prior and proposal from n_prior uniform samples.
  Sampler(std::shared_ptr<const Space> space, int64_t n_prior, double step, uint64_t seed,
          int64_t max_trials, int64_t examples_per_bin);
  // Rebuilds a sampler from its state (checked against the space).
  Sampler(std::shared_ptr<const Space> space, SamplerState state);

  SamplerState state() const;  // a copy, with the current RNG words
  const Space& space() const { return *space_; }
  const SamplerStats& stats() const { return st_.stats; }
  const std::vector<int64_t>& bins() const { return st_.bins; }
  const std::vector<int64_t>& counts() const { return st_.counts; }

  // Bin index of a FLOPs value in MFLOPs: round(mflops / step).
  int64_t bin_of(double mflops) const;
  // Position of a bin in bins, or -1 when the prior never saw it.
  int64_t find_bin(int64_t bin) const;

  // Targets drawn from the prior (or uniformly over its bins): bin indices.
  void sample_bins(int64_t* out, int64_t n, bool uniform_over_bins);
  // n architectures whose rounded FLOPs equal the bin at position bin_pos (0 <= bin_pos <
  // bins().size(), checked).
  void sample(int64_t bin_pos, int64_t* out, int64_t n);
  // n architectures with probability proportional to params (by_flops false) or FLOPs.
  void sample_proportional(int64_t* out, int64_t n, bool by_flops);

 private:
  void compute_offsets();
  void build_tables();
  void draw_uniform(int32_t* indices);
  bool draw_from_proposal(int64_t bin_pos, int32_t* indices);
  void write_values(const int32_t* indices, int64_t* arch) const;

  std::shared_ptr<const Space> space_;
  SamplerState st_;
  Rng rng_;
  std::vector<int64_t> dim_offset_;  // first column of each dimension in the proposal rows
  std::vector<int64_t> cumulative_;  // per-bin, per-dimension cumulative choice counts
  std::vector<int64_t> prior_cumulative_;
  std::vector<int64_t> bin_lookup_;  // bin index - bins.front() -> position, or -1
};

}  // namespace nasops
