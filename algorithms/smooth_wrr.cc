// Smooth weighted round robin (nginx ngx_http_upstream_get_peer()).
#include "algorithms/smooth_wrr.h"

#include <algorithm>

#include "algorithms/pick_util.h"

namespace tandem::algorithms {

void SmoothWrr::Update(std::span<const BackendView> backends) {
  total_weight_ = state_.Rebuild(backends);
}

std::optional<size_t> SmoothWrr::Pick(const PickInput& input) {
  if (state_.index.empty()) return std::nullopt;
  if (const TriedSet* tried = TriedOf(input)) {
    if (auto picked = PickUntried(*tried)) return picked;
    // Every pickable backend failed this request already; a retry on one of
    // them beats no answer (a single-backend cluster can still retry).
  }
  return PickAll();
}

size_t SmoothWrr::PickAll() {
  // Two branch-free passes beat one that mispredicts on every new maximum.
  const size_t n = state_.index.size();
  int64_t* const current = state_.current.data();
  const int64_t* const weight = state_.weight.data();
  int64_t highest = INT64_MIN;
  for (size_t p = 0; p < n; ++p) {
    current[p] += weight[p];
    highest = std::max(highest, current[p]);
  }
  size_t best = 0;
  while (current[best] != highest) ++best;  // the first on ties, as nginx
  current[best] -= total_weight_;
  return state_.index[best];
}

std::optional<size_t> SmoothWrr::PickUntried(const TriedSet& tried) {
  constexpr size_t kNone = SIZE_MAX;
  size_t best = kNone;
  int64_t best_current = 0;
  int64_t total = 0;
  for (size_t p = 0; p < state_.index.size(); ++p) {
    if (tried.Contains(state_.index[p])) continue;
    const int64_t current = state_.current[p] += state_.weight[p];
    total += state_.weight[p];
    if (best == kNone || current > best_current) {
      best_current = current;
      best = p;
    }
  }
  if (best == kNone) return std::nullopt;
  state_.current[best] -= total;
  return state_.index[best];
}

}  // namespace tandem::algorithms
