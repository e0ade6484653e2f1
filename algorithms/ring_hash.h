// Consistent hashing on a ring (Karger et al. 1997), ketama-style as nginx's
// "hash ... consistent" and Envoy's ring_hash_lb.cc: points in proportion to
// weight, a binary search on the 64-bit key hash, clockwise to the next point.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "algorithms/hash_walk.h"
#include "algorithms/picker.h"
#include "algorithms/smooth_wrr.h"

namespace tandem::algorithms {

class RingHash final : public Picker {
 public:
  // Bound on the ring's points. A larger ring scales every backend's point
  // count down in proportion (at least one each).
  static constexpr uint64_t kMaxPoints = uint64_t{1} << 21;

  explicit RingHash(const PickerOptions& options);

  // Rebuilds the ring over the pickable backends: backend `id` gets
  // ceil(weight * ring_points_per_weight / kWeightScale) points, the r-th at
  // HashWords(id, r). Points depend on the backend alone, so a backend that
  // leaves takes only its own points with it: no key of another backend
  // moves. O(points log points); allocates.
  void Update(std::span<const BackendView> backends) override;

  // With input.hash: the backend of the first point at or after the hash
  // (wrapping), walking clockwise past tried backends and, with bounded
  // load, backends at capacity (see ChooseAlongWalk). Without: smooth WRR.
  // O(1) expected when the home backend is taken (a bucket index narrows
  // the binary search to a few points).
  [[nodiscard]] std::optional<size_t> Pick(const PickInput& input) override;

  size_t point_count() const { return point_hash_.size(); }

 private:
  uint32_t points_per_weight_;
  double balance_factor_;
  std::vector<HashEntry> entries_;
  uint64_t total_weight_ = 0;
  // The ring, sorted by hash; point_entry_[k] is a position in entries_.
  std::vector<uint64_t> point_hash_;
  std::vector<uint32_t> point_entry_;
  // bucket_start_[b]: the first point whose top bucket_bits_ bits are >= b,
  // so a lookup searches a few points instead of the whole ring.
  std::vector<uint32_t> bucket_start_;
  int bucket_bits_ = 1;
  SmoothWrr unkeyed_;
};

}  // namespace tandem::algorithms
