// Slow start ramps a returning backend's weight linearly from 10% to full.
#include "algorithms/slow_start.h"

#include <doctest/doctest.h>

#include <chrono>

#include "algorithms/picker.h"

namespace tandem::algorithms {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST_CASE("slow start ramps linearly from the 10% floor to full weight") {
  const uint32_t full = ScaledWeight(1);  // 100
  const seconds window(10);
  CHECK(SlowStartWeight(full, seconds(0), window) == 10);
  CHECK(SlowStartWeight(full, milliseconds(2500), window) == 33);  // 32.5
  CHECK(SlowStartWeight(full, seconds(5), window) == 55);
  CHECK(SlowStartWeight(full, seconds(9), window) == 91);
  CHECK(SlowStartWeight(full, seconds(10), window) == 100);
  CHECK(SlowStartWeight(full, seconds(60), window) == 100);
}

TEST_CASE("slow start never decreases as time passes") {
  uint32_t last = 0;
  for (int ms = 0; ms <= 10000; ms += 7) {
    const uint32_t weight =
        SlowStartWeight(ScaledWeight(3), milliseconds(ms), seconds(10));
    REQUIRE(weight >= last);
    REQUIRE(weight <= ScaledWeight(3));
    last = weight;
  }
  CHECK(last == ScaledWeight(3));
}

TEST_CASE("slow start keeps at least weight 1 and zero at zero") {
  CHECK(SlowStartWeight(1, seconds(0), seconds(10)) == 1);
  CHECK(SlowStartWeight(100, seconds(0), seconds(10), 0.0) == 1);
  CHECK(SlowStartWeight(0, seconds(5), seconds(10)) == 0);
}

TEST_CASE("no window, or a negative elapsed time, are handled") {
  CHECK(SlowStartWeight(100, seconds(0), seconds(0)) == 100);
  CHECK(SlowStartWeight(100, seconds(-3), seconds(10)) == 10);
  CHECK(SlowStartWeight(100, seconds(5), seconds(10), 0.5) == 75);
  CHECK(SlowStartWeight(100, seconds(5), seconds(10), 7.0) == 100);
}

}  // namespace
}  // namespace tandem::algorithms
