// The cap on outlier ejections; see ejection_cap.h.
#include "health/ejection_cap.h"

#include <algorithm>

namespace tandem::health {

size_t EjectionLimit(size_t backends, uint32_t max_ejection_percent) {
  if (max_ejection_percent == 0) return 0;
  return std::max<size_t>(1, backends * max_ejection_percent / 100);
}

}  // namespace tandem::health
