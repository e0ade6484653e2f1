// The cluster's cap on outlier ejections (max_ejection_percent), which
// bounds the damage of a wrong ejection (DESIGN.md "State decision"), as
// Envoy's: the percentage of the backends, rounded down, but one backend may
// always be ejected unless the percentage is 0. Pure.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tandem::health {

// How many of `backends` may be ejected at once: 0 when
// `max_ejection_percent` is 0, else backends × percent / 100 rounded down,
// at least 1.
[[nodiscard]] size_t EjectionLimit(size_t backends,
                                   uint32_t max_ejection_percent);

// Whether one more backend may be ejected while `ejected` of `backends`
// already are.
[[nodiscard]] inline bool EjectionAllowed(size_t ejected, size_t backends,
                                          uint32_t max_ejection_percent) {
  return ejected < EjectionLimit(backends, max_ejection_percent);
}

}  // namespace tandem::health
