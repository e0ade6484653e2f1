// Success-rate and failure-percentage outlier detection (Envoy's
// outlier_detection success_rate / failure_percentage), judged over one
// interval's outcomes. Pure.
//
// Envoy compares each host with the mean and standard deviation of all
// hosts, itself included: with one bad host among three or four, the bad host
// pulls the mean down and the deviation up, and it is never ejected (one of
// n hosts is ejectable only from n = 5 with the default factor 1.9). tandem
// compares each host with the others (leave-one-out) and floors their
// deviation at kStdevFloor, so a worker failing 20 % of requests among
// healthy peers is ejected in a cluster of three, while a cluster whose
// workers all fail alike ejects none.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tandem::health {

struct RateSample {
  uint64_t successes = 0;
  uint64_t failures = 0;  // of requests that reached the worker
};

struct RateSettings {
  size_t minimum_hosts = 3;  // hosts with enough volume before judging
  uint64_t request_volume = 100;
  double stdev_factor = 1.9;
  uint32_t failure_percentage_threshold = 85;  // 0: off
};

// The others' deviation counts as at least this (5 points of success rate).
inline constexpr double kStdevFloor = 0.05;

struct RateOutlier {
  size_t index = 0;                 // into the samples
  bool failure_percentage = false;  // which rule: else the success rate
  std::string reason;  // "success rate 80.0 % over 1200 requests, ..."
};

// The hosts to eject for this interval, in index order.
[[nodiscard]] std::vector<RateOutlier> RateOutliers(
    std::span<const RateSample> samples, const RateSettings& settings);

}  // namespace tandem::health
