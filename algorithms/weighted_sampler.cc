// Vose, "A linear algorithm for generating random numbers with a given
// distribution" (1991), in integers so every weight keeps its exact share.
#include "algorithms/weighted_sampler.h"

#include "algorithms/pick_util.h"

namespace tandem::algorithms {
namespace {

// Rejection draws before a linear scan. Enough that a retry in a large
// cluster almost never scans, few enough that a tiny one scans soon.
constexpr int kMaxRejections = 8;
constexpr size_t kScanBelow = 16;

}  // namespace

void WeightedSampler::Build(std::span<const BackendView> backends) {
  index_.clear();
  weight_.clear();
  total_weight_ = 0;
  for (size_t i = 0; i < backends.size(); ++i) {
    if (!Pickable(backends[i])) continue;
    index_.push_back(i);
    weight_.push_back(backends[i].weight);
    total_weight_ += backends[i].weight;
  }
  const size_t n = index_.size();
  threshold_.assign(n, total_weight_);
  alias_.resize(n);
  for (size_t p = 0; p < n; ++p) alias_[p] = static_cast<uint32_t>(p);

  // Each column holds total_weight_ units; scaled_[p] is what position p
  // still has to place, in the same units.
  std::vector<uint64_t> scaled(n);
  std::vector<uint32_t> small;
  std::vector<uint32_t> large;
  for (size_t p = 0; p < n; ++p) {
    scaled[p] = uint64_t{weight_[p]} * n;
    (scaled[p] < total_weight_ ? small : large)
        .push_back(static_cast<uint32_t>(p));
  }
  while (!small.empty() && !large.empty()) {
    const uint32_t s = small.back();
    small.pop_back();
    const uint32_t l = large.back();
    threshold_[s] = scaled[s];
    alias_[s] = l;
    scaled[l] -= total_weight_ - scaled[s];
    if (scaled[l] < total_weight_) {
      large.pop_back();
      small.push_back(l);
    }
  }
  // Integer arithmetic leaves every remaining position with exactly
  // total_weight_, a whole column of its own (its initial threshold).
}

uint64_t WeightedSampler::Mass(size_t position) const {
  uint64_t mass = 0;
  for (size_t column = 0; column < index_.size(); ++column) {
    if (column == position) mass += threshold_[column];
    if (alias_[column] == position && column != position) {
      mass += total_weight_ - threshold_[column];
    }
  }
  return mass;
}

size_t WeightedSampler::DrawAny(Rng& rng) const {
  const size_t column = rng.Below(index_.size());
  return rng.Below(total_weight_) < threshold_[column] ? column
                                                       : alias_[column];
}

std::optional<size_t> WeightedSampler::Draw(Rng& rng, const TriedSet* tried,
                                            size_t exclude) const {
  if (index_.empty()) return std::nullopt;
  if (tried == nullptr && exclude == kNoPosition) return DrawAny(rng);

  // Rejection keeps the exact conditional distribution; the scan below is
  // the same distribution, and bounds the cost when few positions qualify.
  // A small table is scanned at once: cheaper than rejections that often
  // fail there.
  const int rejections = index_.size() > kScanBelow ? kMaxRejections : 0;
  for (int attempt = 0; attempt < rejections; ++attempt) {
    const size_t p = DrawAny(rng);
    if (p != exclude && !IsTried(tried, index_[p])) return p;
  }
  uint64_t open_weight = 0;
  for (size_t p = 0; p < index_.size(); ++p) {
    if (p != exclude && !IsTried(tried, index_[p])) open_weight += weight_[p];
  }
  if (open_weight == 0) return std::nullopt;
  uint64_t r = rng.Below(open_weight);
  for (size_t p = 0; p < index_.size(); ++p) {
    if (p == exclude || IsTried(tried, index_[p])) continue;
    if (r < weight_[p]) return p;
    r -= weight_[p];
  }
  return std::nullopt;  // unreachable: r < open_weight
}

std::optional<TwoChoices> DrawTwo(const WeightedSampler& sampler, Rng& rng,
                                  const TriedSet* tried) {
  std::optional<size_t> first = sampler.Draw(rng, tried);
  if (!first && tried != nullptr) {
    tried = nullptr;  // all tried: choose among them
    first = sampler.Draw(rng, nullptr);
  }
  if (!first) return std::nullopt;
  return TwoChoices{*first, sampler.Draw(rng, tried, *first)};
}

}  // namespace tandem::algorithms
