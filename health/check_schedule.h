// When a backend's active check runs: whether it is checked at all, the wait
// until the next check (HAProxy's inter, fastinter and downinter, plus a
// slower rate for idle warm backups, with jitter), and when failed traffic
// calls for a check ahead of time (HAProxy's observe layer4). Pure.
#pragma once

#include <chrono>
#include <cstdint>

#include "algorithms/policy.h"
#include "algorithms/rng.h"
#include "conf/config.h"
#include "health/backend_health.h"

namespace tandem::health {

// What the schedule reads off one backend.
struct CheckSubject {
  BackendState state = BackendState::kUnknown;
  // Checks disagree with the state without reaching rise/fall yet
  // (BackendHealth::changing()).
  bool changing = false;
  bool cold = false;  // a cold backup
  algorithms::Activation activation = algorithms::Activation::kInactive;
  bool warm_idle = false;  // a warm backup the policy has not promoted
};

// Whether `subject` is checked now: not without checks (kind none), not while
// disabled, and a cold backup only while it runs (activating or active).
[[nodiscard]] bool ChecksRun(const conf::HealthCheck& check,
                             const CheckSubject& subject);

// The wait before the next check. A `first` check (at start, after a reload,
// an activation or enable) runs at once. Otherwise: fast_interval while the
// state is changing or a cold backup is activating; else warm_interval for
// an idle warm backup; else down_interval while down; else interval. With
// jitter > 0, an offset uniform in [-jitter, +jitter] is drawn from `rng`
// and added (its absolute value for a first check, which never runs before
// now); without jitter `rng` is not used. May be negative when jitter
// exceeds the interval (a timer treats that as now).
[[nodiscard]] std::chrono::nanoseconds NextCheckDelay(
    const conf::HealthCheck& check, const CheckSubject& subject, bool first,
    algorithms::Rng& rng);

// Whether failed traffic calls for a check now rather than at the next
// interval: `failures` > 0 that did not reach an answer (connect, reset,
// timeout; a 5xx did reach one) on a `serving` backend, at most once per
// fast_interval since `last_traffic_check` (so detection takes about fall
// × fast_interval). The caller also needs an idle prober.
[[nodiscard]] bool TrafficCallsForCheck(const conf::HealthCheck& check,
                                        uint32_t failures, TrafficFailure kind,
                                        bool serving, TimePoint now,
                                        TimePoint last_traffic_check);

}  // namespace tandem::health
