#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>
#include <string>

namespace nasops {

namespace {

// First index i with cumulative[i] > r (cumulative counts, r < cumulative[size - 1]), counted
// without data-dependent branches: they mispredict on random r.
inline int32_t pick(const int64_t* cumulative, int32_t size, int64_t r) {
  int32_t i = 0;
  for (int32_t k = 0; k + 1 < size; ++k) i += cumulative[k] <= r;
  return i;
}

}  // namespace

Sampler::Sampler(std::shared_ptr<const Space> space, int64_t n_prior, double step, uint64_t seed,
                 int64_t max_trials, int64_t examples_per_bin)
    : space_(std::move(space)), rng_(seed) {
  if (n_prior < 1 || !(step > 0) || max_trials < 1 || examples_per_bin < 1)
    throw std::invalid_argument("sampler needs n_prior >= 1, step > 0, max_trials >= 1 and "
                                "examples_per_bin >= 1");
  st_.step = step;
  st_.max_trials = max_trials;
  st_.examples_per_bin = examples_per_bin;
  const int64_t D = space_->num_dims();
  compute_offsets();

  // One pass over n_prior uniform architectures: count bins and per-bin choices, and keep a
  // uniform reservoir of examples per bin for the fallback.
  struct BinData {
    int64_t count = 0;
    std::vector<int64_t> choice_counts, examples;
  };
  std::map<int64_t, BinData> by_bin;
  std::vector<int32_t> x(D);
  std::vector<int64_t> arch(D);
  for (int64_t i = 0; i < n_prior; ++i) {
    draw_uniform(x.data());
    BinData& bin = by_bin[bin_of(space_->cost_model().of_indices(x.data()).macs / 1e6)];
    if (bin.count == 0) bin.choice_counts.assign(dim_offset_[D], 0);
    ++bin.count;
    for (int64_t j = 0; j < D; ++j) ++bin.choice_counts[dim_offset_[j] + x[j]];
    const int64_t stored = static_cast<int64_t>(bin.examples.size()) / D;
    const int64_t slot = stored < examples_per_bin ? stored : rng_.below(bin.count);
    if (slot < examples_per_bin) {
      write_values(x.data(), arch.data());
      if (slot == stored) bin.examples.insert(bin.examples.end(), arch.begin(), arch.end());
      else std::copy(arch.begin(), arch.end(), bin.examples.begin() + slot * D);
    }
  }
  for (const auto& [b, data] : by_bin) {
    st_.bins.push_back(b);
    st_.counts.push_back(data.count);
    st_.proposal.insert(st_.proposal.end(), data.choice_counts.begin(), data.choice_counts.end());
    std::vector<int64_t> padded = data.examples;
    st_.n_examples.push_back(static_cast<int64_t>(padded.size()) / D);
    padded.resize(examples_per_bin * D, 0);
    st_.examples.insert(st_.examples.end(), padded.begin(), padded.end());
  }
  build_tables();
}

Sampler::Sampler(std::shared_ptr<const Space> space, SamplerState state)
    : space_(std::move(space)), st_(std::move(state)) {
  const int64_t D = space_->num_dims();
  compute_offsets();
  const size_t row = dim_offset_[D];
  const size_t n_bins = st_.bins.size();
  if (!(st_.step > 0) || st_.max_trials < 1 || st_.examples_per_bin < 1 || n_bins == 0 ||
      st_.counts.size() != n_bins || st_.n_examples.size() != n_bins ||
      st_.proposal.size() != n_bins * row ||
      st_.examples.size() != n_bins * st_.examples_per_bin * D ||
      !std::is_sorted(st_.bins.begin(), st_.bins.end()) ||
      st_.bins.back() - st_.bins.front() > 100000000)
    throw std::invalid_argument(
        "sampler state does not fit this search space (table sizes differ); was it saved from "
        "a sampler of another space?");
  for (size_t b = 0; b < n_bins; ++b) {
    bool ok = st_.counts[b] >= 1 && st_.n_examples[b] >= 1 &&
              st_.n_examples[b] <= st_.examples_per_bin;
    for (int64_t j = 0; ok && j < D; ++j) {
      int64_t sum = 0;
      for (int64_t c = dim_offset_[j]; c < dim_offset_[j + 1]; ++c) {
        ok = ok && st_.proposal[b * row + c] >= 0;
        sum += st_.proposal[b * row + c];
      }
      ok = ok && sum == st_.counts[b];
    }
    if (!ok)
      throw std::invalid_argument("sampler state is corrupt: the tables of FLOPs bin " +
                                  std::to_string(st_.bins[b]) + " are inconsistent");
    space_->check(st_.examples.data() + b * st_.examples_per_bin * D, st_.n_examples[b]);
  }
  rng_.set_state(st_.rng);
  build_tables();
}

void Sampler::compute_offsets() {
  const int64_t D = space_->num_dims();
  dim_offset_.assign(D + 1, 0);
  for (int64_t j = 0; j < D; ++j) dim_offset_[j + 1] = dim_offset_[j] + space_->dims()[j].size();
}

void Sampler::build_tables() {
  const int64_t D = space_->num_dims();
  const int64_t row = dim_offset_[D];
  cumulative_ = st_.proposal;
  for (size_t b = 0; b < st_.bins.size(); ++b)
    for (int64_t j = 0; j < D; ++j) {
      int64_t* c = cumulative_.data() + b * row + dim_offset_[j];
      for (int64_t k = 1; k < dim_offset_[j + 1] - dim_offset_[j]; ++k) c[k] += c[k - 1];
    }
  prior_cumulative_ = st_.counts;
  for (size_t b = 1; b < prior_cumulative_.size(); ++b)
    prior_cumulative_[b] += prior_cumulative_[b - 1];
  bin_lookup_.assign(st_.bins.back() - st_.bins.front() + 1, -1);
  for (size_t b = 0; b < st_.bins.size(); ++b) bin_lookup_[st_.bins[b] - st_.bins.front()] = b;
}

SamplerState Sampler::state() const {
  SamplerState s = st_;
  s.rng = rng_.state();
  return s;
}

int64_t Sampler::bin_of(double mflops) const {
  return static_cast<int64_t>(std::floor(mflops / st_.step + 0.5));
}

int64_t Sampler::find_bin(int64_t bin) const {
  const int64_t i = bin - st_.bins.front();
  if (i < 0 || i >= static_cast<int64_t>(bin_lookup_.size())) return -1;
  return bin_lookup_[i];
}

void Sampler::sample_bins(int64_t* out, int64_t n, bool uniform_over_bins) {
  const int64_t n_bins = st_.bins.size();
  for (int64_t i = 0; i < n; ++i) {
    int64_t pos;
    if (uniform_over_bins) {
      pos = rng_.below(n_bins);
    } else {
      const int64_t r = rng_.below(prior_cumulative_.back());
      pos = std::upper_bound(prior_cumulative_.begin(), prior_cumulative_.end(), r) -
            prior_cumulative_.begin();
    }
    out[i] = st_.bins[pos];
  }
}

void Sampler::draw_uniform(int32_t* x) {
  for (const Dim& d : space_->dims()) *x++ = d.size() == 1 ? 0 : rng_.below(d.size());
}

void Sampler::write_values(const int32_t* x, int64_t* arch) const {
  for (const Dim& d : space_->dims()) *arch++ = d.choices[*x++];
}

bool Sampler::draw_from_proposal(int64_t bin_pos, int32_t* x) {
  const int64_t D = space_->num_dims();
  const int64_t* cumulative = cumulative_.data() + bin_pos * dim_offset_[D];
  const uint64_t count = st_.counts[bin_pos];  // every dimension's counts sum to the bin's
  Rng rng = rng_;  // a local copy stays in registers
  for (int64_t j = 0; j < D; ++j) {
    const int32_t size = dim_offset_[j + 1] - dim_offset_[j];
    x[j] = size == 1 ? 0 : pick(cumulative + dim_offset_[j], size, rng.below(count));
  }
  rng_ = rng;
  return bin_of(space_->cost_model().of_indices(x).macs / 1e6) == st_.bins[bin_pos];
}

void Sampler::sample(int64_t bin_pos, int64_t* out, int64_t n) {
  if (bin_pos < 0 || bin_pos >= static_cast<int64_t>(st_.bins.size()))
    throw std::invalid_argument("bin position " + std::to_string(bin_pos) + " is out of range");
  const int64_t D = space_->num_dims();
  std::vector<int32_t> x(D);
  for (int64_t i = 0; i < n; ++i) {
    int64_t* arch = out + i * D;
    bool accepted = false;
    for (int64_t t = 0; t < st_.max_trials && !accepted; ++t) {
      ++st_.stats.trials;
      accepted = draw_from_proposal(bin_pos, x.data());
    }
    if (accepted) {
      write_values(x.data(), arch);
    } else {  // a stored prior example of this bin: always at the target
      ++st_.stats.fallbacks;
      const int64_t k = rng_.below(st_.n_examples[bin_pos]);
      const int64_t* example = st_.examples.data() + (bin_pos * st_.examples_per_bin + k) * D;
      std::copy(example, example + D, arch);
    }
    ++st_.stats.samples;
  }
}

void Sampler::sample_proportional(int64_t* out, int64_t n, bool by_flops) {
  // Rejection from uniform: accept x with probability size(x) / bound, which gives
  // p(x) proportional to size(x) exactly, as long as bound >= every size.
  const int64_t D = space_->num_dims();
  const Cost bound_cost = space_->cost_model().upper_bound();
  const double bound = static_cast<double>(by_flops ? bound_cost.macs : bound_cost.params);
  std::vector<int32_t> x(D);
  for (int64_t i = 0; i < n; ++i) {
    for (;;) {
      ++st_.stats.proportional_draws;
      draw_uniform(x.data());
      const Cost c = space_->cost_model().of_indices(x.data());
      const double size = static_cast<double>(by_flops ? c.macs : c.params);
      if (rng_.uniform() * bound < size) break;
    }
    write_values(x.data(), out + i * D);
    ++st_.stats.proportional_samples;
  }
}

}  // namespace nasops
