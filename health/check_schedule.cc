// When a backend's active check runs; see check_schedule.h.
#include "health/check_schedule.h"

#include <cstdlib>

namespace tandem::health {

bool ChecksRun(const conf::HealthCheck& check, const CheckSubject& subject) {
  if (check.kind == conf::HealthCheck::Kind::kNone) return false;
  if (subject.state == BackendState::kDisabled) return false;
  // A cold backup is not running until activated.
  if (subject.cold) {
    return subject.activation == algorithms::Activation::kActivating ||
           subject.activation == algorithms::Activation::kActive;
  }
  return true;
}

std::chrono::nanoseconds NextCheckDelay(const conf::HealthCheck& check,
                                        const CheckSubject& subject, bool first,
                                        algorithms::Rng& rng) {
  std::chrono::nanoseconds delay;
  if (first) {
    delay = std::chrono::nanoseconds(0);
  } else if (subject.changing ||
             subject.activation == algorithms::Activation::kActivating) {
    delay = check.fast_interval;
  } else if (subject.warm_idle) {
    delay = check.warm_interval;
  } else if (subject.state == BackendState::kDown) {
    delay = check.down_interval;
  } else {
    delay = check.interval;
  }
  if (check.jitter.count() > 0) {
    // interval ± jitter, so checks of many backends do not beat in step.
    auto span =
        std::chrono::duration_cast<std::chrono::nanoseconds>(check.jitter)
            .count();
    auto offset =
        static_cast<int64_t>(rng.Below(static_cast<uint64_t>(2 * span + 1))) -
        span;
    if (first) offset = std::abs(offset);
    delay += std::chrono::nanoseconds(offset);
  }
  return delay;
}

bool TrafficCallsForCheck(const conf::HealthCheck& check, uint32_t failures,
                          TrafficFailure kind, bool serving, TimePoint now,
                          TimePoint last_traffic_check) {
  return failures > 0 && kind != TrafficFailure::kStatus5xx && serving &&
         now - last_traffic_check >= check.fast_interval;
}

}  // namespace tandem::health
