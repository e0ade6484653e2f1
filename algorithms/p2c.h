// Power of two random choices on in-flight requests (Mitzenmacher 2001;
// Envoy's least-request with choice_count 2), weights respected by drawing
// the two candidates in proportion to weight.
#pragma once

#include <cstddef>
#include <optional>
#include <span>

#include "algorithms/picker.h"
#include "algorithms/rng.h"
#include "algorithms/weighted_sampler.h"

namespace tandem::algorithms {

class P2c final : public Picker {
 public:
  // `rng` must outlive the picker.
  explicit P2c(Rng& rng) : rng_(rng) {}

  void Update(std::span<const BackendView> backends) override;

  // Draws two distinct untried pickable backends, each with probability
  // proportional to weight, and returns the one with fewer in-flight per
  // unit of weight (the first drawn on a tie). With one candidate left it is
  // the answer; with none untried, the two are drawn among the tried. O(1)
  // expected.
  [[nodiscard]] std::optional<size_t> Pick(const PickInput& input) override;

 private:
  Rng& rng_;
  WeightedSampler sampler_;
};

}  // namespace tandem::algorithms
