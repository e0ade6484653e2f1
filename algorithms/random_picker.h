// Weighted random choice among the eligible backends (Pingora's
// selection::weighted with a random pick; Envoy's random load balancer).
#pragma once

#include <cstddef>
#include <optional>
#include <span>

#include "algorithms/picker.h"
#include "algorithms/rng.h"
#include "algorithms/weighted_sampler.h"

namespace tandem::algorithms {

class RandomPicker final : public Picker {
 public:
  // `rng` must outlive the picker.
  explicit RandomPicker(Rng& rng) : rng_(rng) {}

  void Update(std::span<const BackendView> backends) override;

  // Each untried pickable backend with probability proportional to its
  // weight; among all pickable ones when every one is tried. O(1) expected.
  [[nodiscard]] std::optional<size_t> Pick(const PickInput& input) override;

 private:
  Rng& rng_;
  WeightedSampler sampler_;
};

}  // namespace tandem::algorithms
