#include "health/success_rate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace tandem::health {
namespace {

std::string Percent(double rate) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f %%", 100.0 * rate);
  return text;
}

}  // namespace

std::vector<RateOutlier> RateOutliers(std::span<const RateSample> samples,
                                      const RateSettings& settings) {
  std::vector<size_t> judged;
  for (size_t i = 0; i < samples.size(); ++i) {
    const RateSample& s = samples[i];
    if (s.successes + s.failures >= settings.request_volume)
      judged.push_back(i);
  }
  std::vector<RateOutlier> out;
  if (judged.size() < std::max<size_t>(settings.minimum_hosts, 2)) return out;
  const auto rate = [&](size_t i) {
    const RateSample& s = samples[i];
    return static_cast<double>(s.successes) /
           static_cast<double>(s.successes + s.failures);
  };
  for (size_t i : judged) {
    const RateSample& s = samples[i];
    const uint64_t volume = s.successes + s.failures;
    const double own = rate(i);
    const double failed =
        100.0 * static_cast<double>(s.failures) / static_cast<double>(volume);
    if (settings.failure_percentage_threshold > 0 &&
        failed >= settings.failure_percentage_threshold) {
      out.push_back({i, true,
                     "failure percentage " + Percent(1.0 - own) + " over " +
                         std::to_string(volume) + " requests, at or above " +
                         std::to_string(settings.failure_percentage_threshold) +
                         " %"});
      continue;
    }
    double sum = 0;
    for (size_t j : judged) {
      if (j != i) sum += rate(j);
    }
    const double others = static_cast<double>(judged.size() - 1);
    const double mean = sum / others;
    double squares = 0;
    for (size_t j : judged) {
      if (j != i) squares += (rate(j) - mean) * (rate(j) - mean);
    }
    const double stdev = std::max(std::sqrt(squares / others), kStdevFloor);
    const double threshold = mean - settings.stdev_factor * stdev;
    if (own < threshold) {
      out.push_back({i, false,
                     "success rate " + Percent(own) + " over " +
                         std::to_string(volume) + " requests, the others " +
                         Percent(mean) + " (ejected below " +
                         Percent(threshold) + ")"});
    }
  }
  return out;
}

}  // namespace tandem::health
