// Unit tests for the cap on outlier ejections (max_ejection_percent).
#include "health/ejection_cap.h"

#include <doctest/doctest.h>

namespace tandem::health {

TEST_CASE("max_ejection_percent caps ejections, rounded down") {
  CHECK(EjectionLimit(4, 50) == 2);
  CHECK(EjectionAllowed(0, 4, 50));
  CHECK(EjectionAllowed(1, 4, 50));
  CHECK_FALSE(EjectionAllowed(2, 4, 50));

  CHECK(EjectionLimit(5, 50) == 2);  // 2.5
  CHECK_FALSE(EjectionAllowed(2, 5, 50));

  CHECK(EjectionLimit(3, 100) == 3);
  CHECK(EjectionAllowed(2, 3, 100));
  CHECK_FALSE(EjectionAllowed(3, 3, 100));
}

TEST_CASE("one backend may always be ejected, whatever the percentage") {
  CHECK(EjectionLimit(3, 50) == 1);  // 1.5
  CHECK(EjectionAllowed(0, 3, 50));
  CHECK_FALSE(EjectionAllowed(1, 3, 50));

  CHECK(EjectionLimit(1, 50) == 1);  // 0.5
  CHECK(EjectionAllowed(0, 1, 50));
  CHECK_FALSE(EjectionAllowed(1, 1, 50));

  CHECK(EjectionLimit(5, 10) == 1);  // 0.5
  CHECK(EjectionLimit(2, 1) == 1);   // 0.02
}

TEST_CASE("max_ejection_percent 0 ejects no backend") {
  CHECK(EjectionLimit(4, 0) == 0);
  CHECK_FALSE(EjectionAllowed(0, 4, 0));
  CHECK_FALSE(EjectionAllowed(0, 1, 0));
}

}  // namespace tandem::health
