// Smooth weighted round robin (nginx ngx_http_upstream_get_peer()).
#include "algorithms/smooth_wrr.h"

#include <algorithm>

#include "algorithms/pick_util.h"

namespace tandem::algorithms {

void SmoothWrr::Update(std::span<const BackendView> backends) {
  std::vector<int64_t> previous;
  if (backends.size() == backend_count_) {
    previous.assign(backends.size(), 0);
    for (size_t p = 0; p < index_.size(); ++p) {
      previous[index_[p]] = current_[p];
    }
  }
  index_.clear();
  weight_.clear();
  current_.clear();
  total_weight_ = 0;
  for (size_t i = 0; i < backends.size(); ++i) {
    if (!Pickable(backends[i])) continue;
    index_.push_back(i);
    weight_.push_back(backends[i].weight);
    current_.push_back(previous.empty() ? 0 : previous[i]);
    total_weight_ += backends[i].weight;
  }
  backend_count_ = backends.size();
}

std::optional<size_t> SmoothWrr::Pick(const PickInput& input) {
  if (index_.empty()) return std::nullopt;
  if (const TriedSet* tried = TriedOf(input)) {
    if (auto picked = PickUntried(*tried)) return picked;
    // Every pickable backend failed this request already; a retry on one of
    // them beats no answer (a single-backend cluster can still retry).
  }
  return PickAll();
}

size_t SmoothWrr::PickAll() {
  // Two branch-free passes beat one that mispredicts on every new maximum.
  const size_t n = index_.size();
  int64_t* const current = current_.data();
  const int64_t* const weight = weight_.data();
  int64_t highest = INT64_MIN;
  for (size_t p = 0; p < n; ++p) {
    current[p] += weight[p];
    highest = std::max(highest, current[p]);
  }
  size_t best = 0;
  while (current[best] != highest) ++best;  // the first on ties, as nginx
  current[best] -= total_weight_;
  return index_[best];
}

std::optional<size_t> SmoothWrr::PickUntried(const TriedSet& tried) {
  constexpr size_t kNone = SIZE_MAX;
  size_t best = kNone;
  int64_t best_current = 0;
  int64_t total = 0;
  for (size_t p = 0; p < index_.size(); ++p) {
    if (tried.Contains(index_[p])) continue;
    const int64_t current = current_[p] += weight_[p];
    total += weight_[p];
    if (best == kNone || current > best_current) {
      best_current = current;
      best = p;
    }
  }
  if (best == kNone) return std::nullopt;
  current_[best] -= total;
  return index_[best];
}

}  // namespace tandem::algorithms
