// Small helpers shared by the pickers' Pick() paths: reading the per-request
// input and a backend's stable identity. Internal to algorithms/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "algorithms/hash.h"
#include "algorithms/picker.h"

namespace tandem::algorithms {

inline uint32_t InflightAt(const PickInput& input, size_t index) {
  return index < input.inflight.size() ? input.inflight[index] : 0;
}

// The tried set worth consulting: nullptr when there is none, so the common
// first attempt skips every lookup.
inline const TriedSet* TriedOf(const PickInput& input) {
  return input.tried != nullptr && !input.tried->empty() ? input.tried
                                                         : nullptr;
}

inline bool IsTried(const TriedSet* tried, size_t index) {
  return tried != nullptr && tried->Contains(index);
}

// A backend may be picked only when the policy allows it and its weight can
// earn it a share.
inline bool Pickable(const BackendView& backend) {
  return backend.eligible && backend.weight > 0;
}

// Position-derived ids are mixed so they do not cluster on the ring.
inline uint64_t BackendId(const BackendView& backend, size_t index) {
  return backend.id != 0 ? backend.id : Mix64(index + 1);
}

// a_inflight / a_weight < b_inflight / b_weight, without division; the
// products of 32-bit values fit in 64 bits.
inline bool LessLoaded(uint32_t a_inflight, uint32_t a_weight,
                       uint32_t b_inflight, uint32_t b_weight) {
  return uint64_t{a_inflight} * b_weight < uint64_t{b_inflight} * a_weight;
}

inline bool SameLoad(uint32_t a_inflight, uint32_t a_weight,
                     uint32_t b_inflight, uint32_t b_weight) {
  return uint64_t{a_inflight} * b_weight == uint64_t{b_inflight} * a_weight;
}

// The pickable backends of a view as a compact list, each with a smooth-WRR
// current weight that survives an Update() of the same backend set (so a
// health snapshot does not restart the rotation). Shared by smooth WRR and
// least-conn's tie-break.
template <typename Weight>
struct SmoothState {
  std::vector<size_t> index;   // backend positions
  std::vector<Weight> weight;  // their weights
  std::vector<int64_t> current;
  size_t backend_count = 0;

  // Returns the total weight of the pickable backends.
  int64_t Rebuild(std::span<const BackendView> backends) {
    std::vector<int64_t> previous;
    if (backends.size() == backend_count) {
      previous.assign(backends.size(), 0);
      for (size_t p = 0; p < index.size(); ++p) previous[index[p]] = current[p];
    }
    index.clear();
    weight.clear();
    current.clear();
    int64_t total = 0;
    for (size_t i = 0; i < backends.size(); ++i) {
      if (!Pickable(backends[i])) continue;
      index.push_back(i);
      weight.push_back(backends[i].weight);
      current.push_back(previous.empty() ? 0 : previous[i]);
      total += backends[i].weight;
    }
    backend_count = backends.size();
    return total;
  }
};

}  // namespace tandem::algorithms
