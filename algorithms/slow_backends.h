// Slow-backend avoidance (docs/algorithms.md, "Slow backends are passed
// over"): each loop keeps a smoothed time to response head per backend; one
// answering several times slower than the fastest of its cluster, and slower
// by more than a floor, is passed over by the picks while another backend is
// there, and probed about once a second. At most half of a cluster is passed
// over, so a cluster slowing down as a whole (or mostly) avoids nothing.
// Pure: samples, views and flags are passed in.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>

namespace tandem::algorithms {

// A backend is slow when its estimate is at least kSlowFactor times the
// fastest measured one's, and kSlowFloor above it.
inline constexpr double kSlowFactor = 4.0;
inline constexpr std::chrono::microseconds kSlowFloor{2000};
// A backend passed over gets one request this often (per loop), which
// refreshes its estimate.
inline constexpr std::chrono::milliseconds kSlowProbeInterval{1000};

// One backend's recent times to response head: the median of its last
// kSamples answers, so one or two late answers (a request that asked for a
// long computation, a pause) do not make a backend slow, a run of them does.
// Only a backend with kSamples answers is compared. While it is passed over,
// an answer under a quarter of the estimate (a probe finding it recovered)
// starts the record afresh, and the backend is picked again at once.
class SlowEstimate {
 public:
  static constexpr size_t kSamples = 5;

  void Observe(std::chrono::microseconds sample, bool passed_over);
  bool measured() const { return count_ >= kSamples; }
  // The median of the samples kept, in µs (0 with none).
  uint32_t value_us() const;

 private:
  uint32_t samples_[kSamples] = {};
  size_t next_ = 0;
  size_t count_ = 0;
};

struct SlowView {
  bool eligible = false;
  SlowEstimate estimate;
};

struct SlowFound {
  size_t count = 0;         // backends marked
  uint32_t fastest_us = 0;  // the yardstick (0: nothing measured)
};

// Sets slow[i] for the backends picks should pass over (slow.size() ==
// views.size()). The slowest win when more than half of the eligible
// backends qualify.
SlowFound FindSlow(std::span<const SlowView> views, std::span<uint8_t> slow);

}  // namespace tandem::algorithms
