// Least connections with smooth-WRR tie-break (nginx
// ngx_http_upstream_get_least_conn_peer()).
#include "algorithms/least_conn.h"

#include "algorithms/pick_util.h"

namespace tandem::algorithms {

void LeastConn::Update(std::span<const BackendView> backends) {
  state_.Rebuild(backends);
}

std::optional<size_t> LeastConn::Pick(const PickInput& input) {
  const TriedSet* tried = TriedOf(input);
  auto pick = [&](const TriedSet* among) {
    // The bounds check leaves the loop when the caller counts every backend.
    if (input.inflight.size() >= state_.backend_count) {
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
  const size_t n = state_.index.size();
  size_t least = kNone;
  uint32_t least_inflight = 0;
  bool tie = false;
  for (size_t p = 0; p < n; ++p) {
    if (IsTried(tried, state_.index[p])) continue;
    const uint32_t inflight = inflight_of(state_.index[p]);
    if (least == kNone || LessLoaded(inflight, state_.weight[p], least_inflight,
                                     state_.weight[least])) {
      least = p;
      least_inflight = inflight;
      tie = false;
    } else if (SameLoad(inflight, state_.weight[p], least_inflight,
                        state_.weight[least])) {
      tie = true;
    }
  }
  if (least == kNone) return std::nullopt;
  if (!tie) return state_.index[least];

  const uint32_t least_weight = state_.weight[least];
  size_t chosen = kNone;
  int64_t chosen_current = 0;
  int64_t total = 0;
  for (size_t p = least; p < n; ++p) {
    if (IsTried(tried, state_.index[p]) ||
        !SameLoad(inflight_of(state_.index[p]), state_.weight[p],
                  least_inflight, least_weight)) {
      continue;
    }
    const int64_t current = state_.current[p] += state_.weight[p];
    total += state_.weight[p];
    if (chosen == kNone || current > chosen_current) {
      chosen = p;
      chosen_current = current;
    }
  }
  state_.current[chosen] -= total;
  return state_.index[chosen];
}

}  // namespace tandem::algorithms
