// The recent times to response head of one cluster on one loop: the last
// kSize samples and their 99th percentile, recomputed every kEvery samples
// and raised at once by a slower sample in between.
// It tells "this backend has kept a request far longer than its peers take"
// (docs/retries.md, hang detection). No allocation; O(kSize) work every
// kEvery samples. One loop's thread only.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>

namespace tandem::dispatcher {

class LatencyWindow {
 public:
  static constexpr size_t kSize = 128;
  static constexpr size_t kEvery = 32;
  // No percentile before this many samples.
  static constexpr size_t kMinSamples = 32;

  void Add(std::chrono::microseconds sample) {
    const auto us = std::clamp<int64_t>(sample.count(), 0, UINT32_MAX);
    samples_[added_ % kSize] = static_cast<uint32_t>(us);
    ++added_;
    if (added_ >= kMinSamples && added_ % kEvery == 0) {
      Recompute();
    } else if (static_cast<uint32_t>(us) > p99_us_) {
      // Between recomputations a slower sample raises the figure at once: a
      // cluster slowing down as a whole must not look like one backend
      // hanging while the window catches up.
      p99_us_ = static_cast<uint32_t>(us);
    }
  }

  // nullopt until kMinSamples samples have been added.
  std::optional<std::chrono::microseconds> p99() const {
    if (added_ < kMinSamples) return std::nullopt;
    return std::chrono::microseconds(p99_us_);
  }
  // The 95th percentile as of the last recomputation (hedging's delay);
  // nullopt until kMinSamples samples have been added.
  std::optional<std::chrono::microseconds> p95() const {
    if (added_ < kMinSamples) return std::nullopt;
    return std::chrono::microseconds(p95_us_);
  }

 private:
  void Recompute() {
    const size_t n = std::min<size_t>(added_, kSize);
    std::array<uint32_t, kSize> copy;
    std::copy_n(samples_.begin(), n, copy.begin());
    // The smallest sample at or above 99 % (95 %) of them.
    const size_t rank = (n * 99 + 99) / 100 - 1;
    std::nth_element(copy.begin(), copy.begin() + rank, copy.begin() + n);
    p99_us_ = copy[rank];
    const size_t rank95 = (n * 95 + 99) / 100 - 1;
    std::nth_element(copy.begin(), copy.begin() + rank95, copy.begin() + rank);
    p95_us_ = copy[rank95];
  }

  std::array<uint32_t, kSize> samples_{};
  uint64_t added_ = 0;
  uint32_t p99_us_ = 0;
  uint32_t p95_us_ = 0;
};

}  // namespace tandem::dispatcher
