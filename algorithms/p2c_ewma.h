// Power of two choices on latency × load (Finagle's and Linkerd's "peak
// EWMA"): two candidates drawn in proportion to weight, the one with the
// lower (recent response time + 1 µs) × (in-flight + 1) wins (weights act
// through the draw: equal costs share in proportion to weight). A slow backend
// gets a share that matches what it can serve; a new or unmeasured one (latency
// 0) is tried at once. The latencies come from the caller
// (PickInput::latency_us), which keeps the peak EWMA (PeakEwma below).
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <span>

#include "algorithms/picker.h"
#include "algorithms/rng.h"
#include "algorithms/weighted_sampler.h"

namespace tandem::algorithms {

class P2cEwma final : public Picker {
 public:
  // `rng` must outlive the picker.
  explicit P2cEwma(Rng& rng) : rng_(rng) {}

  void Update(std::span<const BackendView> backends) override;

  // As P2c, with cost (latency + 1) × (in-flight + 1); the first drawn wins
  // a tie. O(1) expected, no allocation.
  [[nodiscard]] std::optional<size_t> Pick(const PickInput& input) override;

 private:
  Rng& rng_;
  WeightedSampler sampler_;
};

// A peak EWMA of response times: a sample above the estimate replaces it at
// once (a backend turning slow is seen at its first slow answer); one below
// pulls it down with weight 1 - exp(-elapsed / decay). Read with Value(),
// which also decays with time since the last sample, so a backend no longer
// picked because it was slow is tried again after a while. Time passed in.
class PeakEwma {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::seconds kDecay{10};

  void Observe(std::chrono::microseconds sample, Clock::time_point now);
  // The estimate at `now`, in µs.
  double Value(Clock::time_point now) const;

 private:
  double estimate_us_ = 0;
  Clock::time_point stamp_{};
};

}  // namespace tandem::algorithms
