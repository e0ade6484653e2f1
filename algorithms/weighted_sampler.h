// Weighted random choice among the pickable backends in O(1): Vose's alias
// method, with exact integer thresholds. Shared by random and p2c.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "algorithms/picker.h"
#include "algorithms/rng.h"

namespace tandem::algorithms {

class WeightedSampler {
 public:
  static constexpr size_t kNoPosition = SIZE_MAX;

  // Rebuilds over the pickable backends (eligible, weight > 0). Allocates.
  void Build(std::span<const BackendView> backends);

  bool empty() const { return index_.empty(); }
  size_t size() const { return index_.size(); }
  // The backend index and weight at a position, 0 <= position < size().
  size_t index(size_t position) const { return index_[position]; }
  uint32_t weight(size_t position) const { return weight_[position]; }

  // The chance of drawing `position` from the whole table, in units of
  // 1 / (size() * total weight): exactly weight(position) * size() when the
  // table is right. O(size()); for tests.
  uint64_t Mass(size_t position) const;

  // Draws a position with probability proportional to its weight, among the
  // positions other than `exclude` whose backend is not in `tried` (nullptr:
  // none). nullopt when no position qualifies. No allocation.
  [[nodiscard]] std::optional<size_t> Draw(Rng& rng, const TriedSet* tried,
                                           size_t exclude = kNoPosition) const;

 private:
  size_t DrawAny(Rng& rng) const;

  std::vector<size_t> index_;
  std::vector<uint32_t> weight_;
  // Column p keeps itself when a uniform draw below total_weight_ falls under
  // threshold_[p], and yields alias_[p] otherwise.
  std::vector<uint64_t> threshold_;
  std::vector<uint32_t> alias_;
  uint64_t total_weight_ = 0;
};

// The two candidates of a power-of-two-choices pick (p2c, p2c-ewma): two
// distinct positions drawn by weight among the untried, or among every
// pickable backend when all were tried; `second` is empty when only one is
// left. nullopt when none is pickable.
struct TwoChoices {
  size_t first = 0;  // positions in the sampler
  std::optional<size_t> second;
};
[[nodiscard]] std::optional<TwoChoices> DrawTwo(const WeightedSampler& sampler,
                                                Rng& rng,
                                                const TriedSet* tried);

}  // namespace tandem::algorithms
