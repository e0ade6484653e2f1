// Adaptive concurrency per cluster (concurrency = "adaptive",
// docs/retries.md "Adaptive concurrency"): a gradient limiter as Envoy's
// adaptive_concurrency filter and Netflix's Gradient2 — the limit follows
// minRTT / sampled RTT, between min_limit and max_limit, and minRTT is
// measured again now and then (at a jittered interval) while the limit
// stands at min_limit. Unlike Envoy (envoy#8337, #18152), requests over the
// limit during a measurement wait in the cluster's queue instead of being
// answered 503 at once.
//
// One limiter per cluster for the whole process: loops read the limit with
// one relaxed load per try and hand in their samples a window at a time
// (Update, under a mutex, about ten times a second per loop), never per
// request.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <vector>

#include "conf/config.h"

namespace tandem::dispatcher {

class AdaptiveLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  // Samples a loop gathers before it hands them in, and how long it waits
  // for them at most.
  static constexpr size_t kWindowSamples = 20;
  static constexpr auto kWindow = std::chrono::milliseconds(100);
  // A minRTT measurement: this many samples, or this long at most.
  static constexpr size_t kMeasureSamples = 25;
  static constexpr auto kMeasureTime = std::chrono::milliseconds(500);
  // Where the limit starts once minRTT is known (Gradient2's initial limit),
  // within min_limit and max_limit.
  static constexpr double kInitialLimit = 20;
  // How often minRTT is measured again (± jitter).
  static constexpr auto kMeasureInterval = std::chrono::seconds(30);

  AdaptiveLimiter(const conf::AdaptiveConcurrency& config, uint64_t seed);

  // The limit on tries in flight now. Any thread, no lock.
  uint32_t limit() const { return limit_.load(std::memory_order_relaxed); }
  // One window of a loop's samples (microseconds from request sent to
  // response head); `samples` may be reordered. Any thread.
  void Update(std::vector<uint32_t>& samples, Clock::time_point now);

  // minRTT is being measured (the limit stands at min_limit). Any thread,
  // no lock.
  bool measuring() const {
    return measuring_now_.load(std::memory_order_relaxed);
  }
  // For metrics and tests.
  uint32_t min_rtt_us() const;
  const conf::AdaptiveConcurrency& config() const { return config_; }

 private:
  uint32_t Quantile(std::vector<uint32_t>& samples) const;
  void StartMeasuring(Clock::time_point now);
  Clock::duration NextInterval();

  const conf::AdaptiveConcurrency config_;
  std::atomic<uint32_t> limit_;
  std::atomic<bool> measuring_now_;
  mutable std::mutex mutex_;
  uint64_t rng_;
  double exact_limit_;       // the limit before rounding
  uint32_t min_rtt_us_ = 0;  // 0: not measured yet
  bool measuring_;
  double saved_limit_;  // the limit a measurement returns to
  Clock::time_point measure_started_{};
  Clock::time_point next_measure_;
  std::vector<uint32_t> measured_;
};

}  // namespace tandem::dispatcher
