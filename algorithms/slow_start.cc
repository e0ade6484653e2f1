// Linear slow-start ramp.
#include "algorithms/slow_start.h"

#include <algorithm>
#include <cmath>

namespace tandem::algorithms {

uint32_t SlowStartWeight(uint32_t full_weight, std::chrono::nanoseconds elapsed,
                         std::chrono::nanoseconds window, double floor) {
  if (full_weight == 0) return 0;
  if (window.count() <= 0 || elapsed >= window) return full_weight;
  floor = std::clamp(floor, 0.0, 1.0);
  const double progress = elapsed.count() <= 0
                              ? 0.0
                              : static_cast<double>(elapsed.count()) /
                                    static_cast<double>(window.count());
  const double fraction = floor + (1.0 - floor) * progress;
  // The epsilon keeps products that are whole in exact arithmetic (0.1 * 100)
  // from rounding up past them.
  const double weight = std::ceil(full_weight * fraction - 1e-9);
  return static_cast<uint32_t>(
      std::clamp(weight, 1.0, static_cast<double>(full_weight)));
}

}  // namespace tandem::algorithms
