#include "algorithms/slow_backends.h"

#include <algorithm>
#include <limits>

namespace tandem::algorithms {

void SlowEstimate::Observe(std::chrono::microseconds sample, bool passed_over) {
  const auto us = static_cast<uint32_t>(std::clamp<int64_t>(
      sample.count(), 0, std::numeric_limits<uint32_t>::max()));
  if (passed_over && count_ > 0 &&
      static_cast<double>(us) * kSlowFactor < value_us()) {
    count_ = 0;
    next_ = 0;
  }
  samples_[next_] = us;
  next_ = (next_ + 1) % kSamples;
  if (count_ < kSamples) ++count_;
}

uint32_t SlowEstimate::value_us() const {
  if (count_ == 0) return 0;
  uint32_t sorted[kSamples];
  std::copy(samples_, samples_ + count_, sorted);
  std::nth_element(sorted, sorted + count_ / 2, sorted + count_);
  return sorted[count_ / 2];
}

SlowFound FindSlow(std::span<const SlowView> views, std::span<uint8_t> slow) {
  std::fill(slow.begin(), slow.end(), 0);
  size_t eligible = 0;
  double fastest = std::numeric_limits<double>::infinity();
  for (const SlowView& v : views) {
    if (!v.eligible) continue;
    ++eligible;
    if (v.estimate.measured())
      fastest = std::min(fastest, static_cast<double>(v.estimate.value_us()));
  }
  if (fastest == std::numeric_limits<double>::infinity()) return {};
  const double threshold = std::max(
      fastest * kSlowFactor, fastest + static_cast<double>(kSlowFloor.count()));
  size_t count = 0;
  for (size_t i = 0; i < views.size(); ++i) {
    const SlowView& v = views[i];
    if (v.eligible && v.estimate.measured() &&
        v.estimate.value_us() >= threshold) {
      slow[i] = 1;
      ++count;
    }
  }
  // At most half: unmark the fastest of the marked until it fits.
  while (count > eligible / 2) {
    size_t least = views.size();
    for (size_t i = 0; i < views.size(); ++i) {
      if (slow[i] &&
          (least == views.size() ||
           views[i].estimate.value_us() < views[least].estimate.value_us()))
        least = i;
    }
    slow[least] = 0;
    --count;
  }
  return {count, static_cast<uint32_t>(fastest)};
}

}  // namespace tandem::algorithms
