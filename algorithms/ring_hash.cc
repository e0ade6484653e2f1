// Ketama-style consistent hash ring with bounded-load walking.
#include "algorithms/ring_hash.h"

#include <algorithm>
#include <bit>
#include <tuple>

#include "algorithms/pick_util.h"

namespace tandem::algorithms {

RingHash::RingHash(const PickerOptions& options)
    : points_per_weight_(options.ring_points_per_weight),
      balance_factor_(options.hash_balance_factor) {}

void RingHash::Update(std::span<const BackendView> backends) {
  unkeyed_.Update(backends);

  entries_.clear();
  total_weight_ = 0;
  std::vector<uint64_t> ids;
  std::vector<uint64_t> counts;
  uint64_t total_points = 0;
  for (size_t i = 0; i < backends.size(); ++i) {
    if (!Pickable(backends[i])) continue;
    const uint32_t weight = backends[i].weight;
    entries_.push_back({i, weight});
    ids.push_back(BackendId(backends[i], i));
    total_weight_ += weight;
    const uint64_t count = std::max<uint64_t>(
        1, (uint64_t{weight} * points_per_weight_ + kWeightScale - 1) /
               kWeightScale);
    counts.push_back(count);
    total_points += count;
  }
  if (total_points > kMaxPoints) {
    for (uint64_t& count : counts) {
      count = std::max<uint64_t>(1, count * kMaxPoints / total_points);
    }
  }

  struct Point {
    uint64_t hash;
    uint64_t id;  // orders equal hashes the same way on every update
    uint32_t entry;
  };
  std::vector<Point> points;
  for (size_t e = 0; e < entries_.size(); ++e) {
    for (uint64_t r = 0; r < counts[e]; ++r) {
      points.push_back(
          {HashWords(ids[e], r), ids[e], static_cast<uint32_t>(e)});
    }
  }
  std::sort(points.begin(), points.end(), [](const Point& a, const Point& b) {
    return std::tie(a.hash, a.id) < std::tie(b.hash, b.id);
  });
  point_hash_.resize(points.size());
  point_entry_.resize(points.size());
  for (size_t k = 0; k < points.size(); ++k) {
    point_hash_[k] = points[k].hash;
    point_entry_[k] = points[k].entry;
  }

  // About four points per bucket.
  bucket_bits_ =
      std::clamp(static_cast<int>(std::bit_width(points.size())) - 2, 1, 24);
  const size_t buckets = size_t{1} << bucket_bits_;
  bucket_start_.assign(buckets + 1, 0);
  size_t k = 0;
  for (size_t b = 0; b < buckets; ++b) {
    while (k < point_hash_.size() &&
           (point_hash_[k] >> (64 - bucket_bits_)) < b) {
      ++k;
    }
    bucket_start_[b] = static_cast<uint32_t>(k);
  }
  bucket_start_[buckets] = static_cast<uint32_t>(point_hash_.size());
}

std::optional<size_t> RingHash::Pick(const PickInput& input) {
  if (!input.hash) return unkeyed_.Pick(input);
  if (point_hash_.empty()) return std::nullopt;

  const size_t n = point_hash_.size();
  // Points of later buckets all lie above the hash, so an empty search ends
  // at the next bucket's first point, which is the answer.
  const size_t bucket = *input.hash >> (64 - bucket_bits_);
  const uint64_t* const first = point_hash_.data() + bucket_start_[bucket];
  const uint64_t* const last = point_hash_.data() + bucket_start_[bucket + 1];
  size_t start = static_cast<size_t>(
      std::lower_bound(first, last, *input.hash) - point_hash_.data());
  if (start == n) start = 0;
  return ChooseAlongWalk(entries_, input, balance_factor_, total_weight_,
                         std::min(n, kMaxHashWalk), [&](size_t step) {
                           size_t k = start + step;
                           if (k >= n) k -= n;
                           return static_cast<size_t>(point_entry_[k]);
                         });
}

}  // namespace tandem::algorithms
