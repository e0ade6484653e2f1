// The load bound of consistent hashing with bounded loads (Mirrokni, Thorup,
// Zadimoghaddam 2016), weighted as HAProxy's chash_server_is_eligible().
#pragma once

#include <cmath>
#include <cstdint>

namespace tandem::algorithms {

// GCC and Clang's 128-bit integer; __extension__ marks it as known to
// -Wpedantic.
__extension__ typedef unsigned __int128 Uint128;

// With factor c, T requests in flight (over the eligible backends, or the
// whole cluster when the caller passes PickInput::total_inflight) and W the
// eligible backends' total weight, the request about to be placed may go to
// backend i only if
//
//   inflight_i + 1 <= capacity_i = max(1, ceil(slots * w_i / W)),
//   slots = ceil(c * (T + 1))
//
// i.e. no backend holds more than c times its weighted share of the load,
// the new request included. The capacities sum to at least T + 1 for c >= 1,
// more than the eligible backends hold, so one of them always has room.
class BoundedLoad {
 public:
  BoundedLoad(double factor, uint64_t total_inflight, uint64_t total_weight)
      : slots_(static_cast<uint64_t>(
            std::ceil((factor < 1 ? 1 : factor) *
                      static_cast<double>(total_inflight + 1)))),
        total_weight_(total_weight) {}

  uint64_t Capacity(uint32_t weight) const {
    uint64_t capacity;
    if (slots_ <= UINT32_MAX) {
      // The common case: the product fits in 64 bits.
      const uint64_t share = slots_ * weight;
      capacity = share / total_weight_;
      if (capacity * total_weight_ < share) ++capacity;
    } else {
      const Uint128 share = Uint128{slots_} * weight;
      capacity = static_cast<uint64_t>(share / total_weight_);
      if (Uint128{capacity} * total_weight_ < share) ++capacity;
    }
    return capacity == 0 ? 1 : capacity;
  }

  bool HasRoom(uint64_t inflight, uint32_t weight) const {
    return inflight < Capacity(weight);
  }

 private:
  uint64_t slots_;
  uint64_t total_weight_;  // > 0: only built over a non-empty eligible set
};

}  // namespace tandem::algorithms
