#include "space.h"

#include "flops.h"

#include <algorithm>
#include <sstream>
#include <stdexcept>

namespace nasops {

namespace {

std::string join(const std::vector<int64_t>& values) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < values.size(); ++i) out << (i ? ", " : "") << values[i];
  out << "]";
  return out.str();
}

Dim make_dim(const std::string& name, std::vector<int64_t> choices) {
  if (choices.empty()) throw std::invalid_argument(name + " has no candidate values");
  std::sort(choices.begin(), choices.end());
  choices.erase(std::unique(choices.begin(), choices.end()), choices.end());
  if (choices.back() - choices.front() > 1000000)
    throw std::invalid_argument(name + " spans too wide a range of values");
  std::vector<int32_t> lookup(choices.back() - choices.front() + 1, -1);
  for (size_t k = 0; k < choices.size(); ++k) lookup[choices[k] - choices.front()] = k;
  return Dim{name, std::move(choices), std::move(lookup)};
}

}  // namespace

Space::Space(SpaceSpec spec, CostTables tables) : spec_(std::move(spec)) {
  const int64_t S = num_stages();
  if (S < 1) throw std::invalid_argument("a search space needs at least one stage");
  dims_.push_back(make_dim("resolution", spec_.resolution));
  dims_.push_back(make_dim("width[0]", spec_.stem_width));
  for (int64_t s = 0; s < S; ++s)
    dims_.push_back(make_dim("width[" + std::to_string(s + 1) + "]", spec_.stages[s].width));
  dims_.push_back(make_dim("width[" + std::to_string(S + 1) + "]", spec_.head_width));
  for (int64_t s = 0; s < S; ++s)
    dims_.push_back(make_dim("depth[" + std::to_string(s) + "]", spec_.stages[s].depth));
  for (int64_t s = 0; s < S; ++s)
    dims_.push_back(make_dim("kernel_size[" + std::to_string(s) + "]", spec_.stages[s].kernel_size));
  for (int64_t s = 0; s < S; ++s)
    dims_.push_back(make_dim("expand_ratio[" + std::to_string(s) + "]", spec_.stages[s].expand_ratio));
  for (const Dim& d : dims_)
    if (d.choices.front() < 1)
      throw std::invalid_argument(d.name + " has a non-positive candidate " + join(d.choices));
  cost_model_ = std::make_unique<CostModel>(*this, std::move(tables));
}

Space::~Space() = default;

void Space::check(const int64_t* archs, int64_t n) const {
  const int64_t D = num_dims();
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t j = 0; j < D; ++j) {
      const int64_t value = archs[row * D + j];
      if (dims_[j].index_of(value) < 0) {
        std::ostringstream msg;
        msg << "architecture row " << row << ": " << dims_[j].name << " = " << value
            << " is not allowed; allowed values: " << join(dims_[j].choices);
        throw std::invalid_argument(msg.str());
      }
    }
  }
}

void Space::to_indices(const int64_t* arch, int32_t* indices) const {
  for (size_t j = 0; j < dims_.size(); ++j) indices[j] = dims_[j].index_of(arch[j]);
}

void Space::sample_uniform(Rng& rng, int64_t* out, int64_t n) const {
  const int64_t D = num_dims();
  for (int64_t row = 0; row < n; ++row)
    for (int64_t j = 0; j < D; ++j) {
      const auto& choices = dims_[j].choices;
      out[row * D + j] = choices[rng.below(choices.size())];
    }
}

std::vector<int64_t> Space::min_arch() const {
  std::vector<int64_t> arch;
  for (const Dim& d : dims_) arch.push_back(d.choices.front());
  return arch;
}

std::vector<int64_t> Space::max_arch() const {
  std::vector<int64_t> arch;
  for (const Dim& d : dims_) arch.push_back(d.choices.back());
  return arch;
}

}  // namespace nasops
