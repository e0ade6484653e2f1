// Least connections with smooth-WRR tie-break (nginx
// ngx_http_upstream_get_least_conn_peer()).
#include "algorithms/least_conn.h"

#include "algorithms/pick_util.h"

namespace tandem::algorithms {

void LeastConn::Update(std::span<const BackendView> backends) {
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
  for (size_t i = 0; i < backends.size(); ++i) {
    if (!Pickable(backends[i])) continue;
    index_.push_back(i);
    weight_.push_back(backends[i].weight);
    current_.push_back(previous.empty() ? 0 : previous[i]);
  }
  backend_count_ = backends.size();
}

std::optional<size_t> LeastConn::Pick(const PickInput& input) {
  const TriedSet* tried = TriedOf(input);
  auto pick = [&](const TriedSet* among) {
    // The bounds check leaves the loop when the caller counts every backend.
    if (input.inflight.size() >= backend_count_) {
      const uint32_t* inflight = input.inflight.data();
      return PickAmong(among, [inflight](size_t i) { return inflight[i]; });
    }
    return PickAmong(among,
                     [&input](size_t i) { return InflightAt(input, i); });
  };
  if (auto picked = pick(tried)) return picked;
  // Every pickable backend was tried: retry on the least loaded of them.
  if (tried != nullptr) return pick(nullptr);
  return std::nullopt;
}

template <typename InflightOf>
std::optional<size_t> LeastConn::PickAmong(const TriedSet* tried,
                                           InflightOf inflight_of) {
  constexpr size_t kNone = SIZE_MAX;
  const size_t n = index_.size();
  size_t least = kNone;
  uint32_t least_inflight = 0;
  bool tie = false;
  for (size_t p = 0; p < n; ++p) {
    if (IsTried(tried, index_[p])) continue;
    const uint32_t inflight = inflight_of(index_[p]);
    if (least == kNone ||
        LessLoaded(inflight, weight_[p], least_inflight, weight_[least])) {
      least = p;
      least_inflight = inflight;
      tie = false;
    } else if (SameLoad(inflight, weight_[p], least_inflight, weight_[least])) {
      tie = true;
    }
  }
  if (least == kNone) return std::nullopt;
  if (!tie) return index_[least];

  const uint32_t least_weight = weight_[least];
  size_t chosen = kNone;
  int64_t chosen_current = 0;
  int64_t total = 0;
  for (size_t p = least; p < n; ++p) {
    if (IsTried(tried, index_[p]) ||
        !SameLoad(inflight_of(index_[p]), weight_[p], least_inflight,
                  least_weight)) {
      continue;
    }
    const int64_t current = current_[p] += weight_[p];
    total += weight_[p];
    if (chosen == kNone || current > chosen_current) {
      chosen = p;
      chosen_current = current;
    }
  }
  current_[chosen] -= total;
  return index_[chosen];
}

}  // namespace tandem::algorithms
