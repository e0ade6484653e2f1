#include "algorithms/p2c_ewma.h"

#include <algorithm>
#include <cmath>

#include "algorithms/pick_util.h"

namespace tandem::algorithms {
namespace {

uint32_t LatencyAt(const PickInput& input, size_t index) {
  return index < input.latency_us.size() ? input.latency_us[index] : 0;
}

double Decay(PeakEwma::Clock::duration elapsed) {
  const double seconds = std::chrono::duration<double>(elapsed).count();
  return std::exp(-std::max(seconds, 0.0) /
                  std::chrono::duration<double>(PeakEwma::kDecay).count());
}

}  // namespace

void P2cEwma::Update(std::span<const BackendView> backends) {
  sampler_.Build(backends);
}

std::optional<size_t> P2cEwma::Pick(const PickInput& input) {
  const std::optional<TwoChoices> choices =
      DrawTwo(sampler_, rng_, TriedOf(input));
  if (!choices) return std::nullopt;
  const size_t a = sampler_.index(choices->first);
  if (!choices->second) return a;
  const size_t b = sampler_.index(*choices->second);
  // cost = (latency + 1) × (in-flight + 1); weights act through the draw,
  // so equal costs share in proportion to weight.
  const auto cost = [&](size_t index) {
    return (static_cast<double>(LatencyAt(input, index)) + 1.0) *
           (static_cast<double>(InflightAt(input, index)) + 1.0);
  };
  return cost(b) < cost(a) ? b : a;
}

void PeakEwma::Observe(std::chrono::microseconds sample,
                       Clock::time_point now) {
  const double us = static_cast<double>(std::max<int64_t>(sample.count(), 0));
  if (us > estimate_us_) {
    estimate_us_ = us;
  } else {
    const double w = Decay(now - stamp_);
    estimate_us_ = estimate_us_ * w + us * (1.0 - w);
  }
  stamp_ = now;
}

double PeakEwma::Value(Clock::time_point now) const {
  return estimate_us_ * Decay(now - stamp_);
}

}  // namespace tandem::algorithms
