// The walk shared by ring hash and Maglev when a keyed request cannot take
// its home backend: already tried, or over the bounded-load capacity.
// Internal to algorithms/.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include "algorithms/bounded_load.h"
#include "algorithms/pick_util.h"

namespace tandem::algorithms {

struct HashEntry {
  size_t index;     // backend index
  uint32_t weight;  // > 0
};

// Steps a walk takes along the ring or table before the exhaustive scan.
// Consecutive ring points and table slots belong to independent backends,
// so this many steps miss an acceptable backend only when almost none is.
inline constexpr size_t kMaxHashWalk = 64;

// Returns the backend index of the first entry along the walk (entry_at(0),
// entry_at(1), ... for walk_length steps; entry_at(0) is the home) that is
// untried and, with balance_factor > 0, under its BoundedLoad capacity. If
// the walk finds none, scans every entry from the home's position on, so an
// acceptable backend is never missed. Failing that, the first untried entry
// seen (the load bound yields before a retry on a tried backend does), then
// the first tried one. `entries` must not be empty. Same input, same answer.
template <typename EntryAt>
size_t ChooseAlongWalk(std::span<const HashEntry> entries,
                       const PickInput& input, double balance_factor,
                       uint64_t total_weight, size_t walk_length,
                       EntryAt entry_at) {
  const TriedSet* tried = TriedOf(input);
  const size_t home = entry_at(0);
  if (tried == nullptr && balance_factor <= 0) return entries[home].index;

  std::optional<BoundedLoad> bound;
  if (balance_factor > 0) {
    uint64_t total_inflight = 0;
    if (input.total_inflight) {
      total_inflight = *input.total_inflight;
    } else {
      for (const HashEntry& entry : entries) {
        total_inflight += InflightAt(input, entry.index);
      }
    }
    bound.emplace(balance_factor, total_inflight, total_weight);
  }

  constexpr size_t kNone = SIZE_MAX;
  size_t first_full = kNone;
  size_t first_tried = kNone;
  auto acceptable = [&](size_t position) {
    const HashEntry& entry = entries[position];
    if (IsTried(tried, entry.index)) {
      if (first_tried == kNone) first_tried = position;
      return false;
    }
    if (bound &&
        !bound->HasRoom(InflightAt(input, entry.index), entry.weight)) {
      if (first_full == kNone) first_full = position;
      return false;
    }
    return true;
  };

  for (size_t step = 0; step < walk_length; ++step) {
    const size_t position = entry_at(step);
    if (acceptable(position)) return entries[position].index;
  }
  for (size_t k = 0; k < entries.size(); ++k) {
    size_t position = home + k;
    if (position >= entries.size()) position -= entries.size();
    if (acceptable(position)) return entries[position].index;
  }
  return entries[first_full != kNone ? first_full : first_tried].index;
}

// Hash of two words as 16 little-endian bytes, for placing a backend's
// points or permutation from its id.
uint64_t HashWords(uint64_t a, uint64_t b, uint64_t seed = 0);

}  // namespace tandem::algorithms
