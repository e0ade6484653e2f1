// Adaptive concurrency; see adaptive_limiter.h.
#include "dispatcher/proxy/adaptive_limiter.h"

#include <algorithm>
#include <cmath>

namespace tandem::dispatcher {
namespace {

// A sample this much above minRTT still counts as "no queueing" (Envoy's
// min_rtt buffer): the limit grows while samples stay within it. At least
// kMinBufferUs: with sub-millisecond workers, the scheduling noise of a busy
// host alone would otherwise read as queueing and halve the limit.
constexpr double kRttBuffer = 0.25;
constexpr double kMinBufferUs = 1000;

}  // namespace

AdaptiveLimiter::AdaptiveLimiter(const conf::AdaptiveConcurrency& config,
                                 uint64_t seed)
    : config_(config),
      limit_(config.min_limit),
      measuring_now_(true),
      rng_(seed | 1),
      exact_limit_(std::clamp<double>(kInitialLimit, config.min_limit,
                                      config.max_limit)),
      measuring_(true),
      saved_limit_(exact_limit_) {}

uint32_t AdaptiveLimiter::min_rtt_us() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return min_rtt_us_;
}

uint32_t AdaptiveLimiter::Quantile(std::vector<uint32_t>& samples) const {
  const size_t at =
      std::min(samples.size() - 1,
               static_cast<size_t>(config_.sample *
                                   static_cast<double>(samples.size())));
  std::nth_element(samples.begin(),
                   samples.begin() + static_cast<std::ptrdiff_t>(at),
                   samples.end());
  return std::max<uint32_t>(1, samples[at]);
}

AdaptiveLimiter::Clock::duration AdaptiveLimiter::NextInterval() {
  // xorshift64: the interval ± jitter, so loops and processes do not all
  // measure at once.
  rng_ ^= rng_ << 13;
  rng_ ^= rng_ >> 7;
  rng_ ^= rng_ << 17;
  const double unit = static_cast<double>(rng_ >> 11) / 9007199254740992.0;
  const double factor = 1.0 + config_.jitter * (2.0 * unit - 1.0);
  return std::chrono::duration_cast<Clock::duration>(kMeasureInterval * factor);
}

void AdaptiveLimiter::StartMeasuring(Clock::time_point now) {
  // The limit drops to its floor so the samples show the workers unqueued;
  // requests over it wait in the queue meanwhile.
  measuring_ = true;
  measuring_now_.store(true, std::memory_order_relaxed);
  saved_limit_ = exact_limit_;
  measure_started_ = now;
  measured_.clear();
  limit_.store(config_.min_limit, std::memory_order_relaxed);
}

void AdaptiveLimiter::Update(std::vector<uint32_t>& samples,
                             Clock::time_point now) {
  if (samples.empty()) return;
  std::lock_guard<std::mutex> lock(mutex_);
  // It starts measuring minRTT (the limit at its floor, requests over it
  // queued), from the first samples on; the limit then starts from
  // kInitialLimit.
  if (measure_started_ == Clock::time_point{}) measure_started_ = now;
  if (measuring_) {
    measured_.insert(measured_.end(), samples.begin(), samples.end());
    if (measured_.size() < kMeasureSamples &&
        now - measure_started_ < kMeasureTime) {
      return;
    }
    min_rtt_us_ = Quantile(measured_);
    measuring_ = false;
    measuring_now_.store(false, std::memory_order_relaxed);
    next_measure_ = now + NextInterval();
    exact_limit_ = std::max<double>(saved_limit_, config_.min_limit);
    limit_.store(static_cast<uint32_t>(exact_limit_),
                 std::memory_order_relaxed);
    return;
  }
  const double sample = Quantile(samples);
  // Gradient: 2 when the workers answer as fast as ever (room to grow),
  // down to 0.5 when requests queue in them.
  const double unqueued =
      std::max(min_rtt_us_ * (1.0 + kRttBuffer), min_rtt_us_ + kMinBufferUs);
  const double gradient = std::clamp(unqueued / sample, 0.5, 2.0);
  const double grown = gradient * exact_limit_;
  exact_limit_ = std::clamp(grown + std::sqrt(grown),
                            static_cast<double>(config_.min_limit),
                            static_cast<double>(config_.max_limit));
  limit_.store(static_cast<uint32_t>(exact_limit_), std::memory_order_relaxed);
  if (now >= next_measure_) StartMeasuring(now);
}

}  // namespace tandem::dispatcher
