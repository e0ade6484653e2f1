// Small helpers shared by the pickers' Pick() paths: reading the per-request
// input and a backend's stable identity. Internal to algorithms/.
#pragma once

#include <cstddef>
#include <cstdint>

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

}  // namespace tandem::algorithms
