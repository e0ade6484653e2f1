// Slow start: the effective weight of a backend that has just returned to
// service, ramping linearly from a floor (Envoy's min_weight_percent, 10 %)
// to its full weight over the window (HAProxy's slowstart, Envoy's
// slow_start_window with aggression 1).
#pragma once

#include <chrono>
#include <cstdint>

namespace tandem::algorithms {

inline constexpr double kSlowStartFloor = 0.1;

// `full_weight` (in BackendView units: ScaledWeight(configured)) times
// floor + (1 - floor) * elapsed / window, rounded up; at least 1 when
// full_weight > 0, never above full_weight. `elapsed` is the time since the
// backend returned; a zero or negative window, or elapsed >= window, gives
// full_weight; a negative elapsed counts as 0. `floor` is clamped to [0, 1].
// Pure; the caller reads the clock.
[[nodiscard]] uint32_t SlowStartWeight(uint32_t full_weight,
                                       std::chrono::nanoseconds elapsed,
                                       std::chrono::nanoseconds window,
                                       double floor = kSlowStartFloor);

}  // namespace tandem::algorithms
