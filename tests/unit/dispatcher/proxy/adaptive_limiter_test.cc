// Unit tests for the adaptive concurrency limiter, with time passed in:
// minRTT measured first, the limit growing while samples stay near it and
// shrinking when they rise, its bounds, and the measurement again later.
#include "dispatcher/proxy/adaptive_limiter.h"

#include <doctest/doctest.h>

#include <vector>

namespace tandem::dispatcher {
namespace {

using Clock = AdaptiveLimiter::Clock;
using std::chrono::milliseconds;

// Hands the limiter `windows` windows of 20 samples of `rtt_us` each, 100 ms
// apart, from `*now` on.
void Feed(AdaptiveLimiter& limiter, uint32_t rtt_us, int windows,
          Clock::time_point* now) {
  for (int i = 0; i < windows; ++i) {
    std::vector<uint32_t> samples(20, rtt_us);
    limiter.Update(samples, *now);
    *now += milliseconds(100);
  }
}

}  // namespace

TEST_CASE("minRTT is measured first, at the floor; then the limit grows") {
  conf::AdaptiveConcurrency config;
  config.min_limit = 3;
  config.max_limit = 200;
  AdaptiveLimiter limiter(config, 1);
  Clock::time_point now{};
  CHECK(limiter.limit() == 3);
  Feed(limiter, 10'000, 1, &now);
  CHECK(limiter.measuring());
  CHECK(limiter.limit() == 3);
  Feed(limiter, 10'000, 1, &now);  // 40 samples: measured
  CHECK_FALSE(limiter.measuring());
  CHECK(limiter.min_rtt_us() == 10'000);
  CHECK(limiter.limit() == 20);  // the initial limit
  // Samples at minRTT: gradient 1.25 (the buffer), plus headroom.
  Feed(limiter, 10'000, 1, &now);
  CHECK(limiter.limit() == 30);  // 1.25 × 20 + √25
  // Faster than minRTT: the gradient is capped at 2.
  Feed(limiter, 1'000, 1, &now);
  CHECK(limiter.limit() == 67);  // 2 × 30 + √60 = 67.7
  Feed(limiter, 10'000, 30, &now);
  CHECK(limiter.limit() == 200);  // the ceiling
}

TEST_CASE("the limit shrinks when workers queue, down to its floor") {
  conf::AdaptiveConcurrency config;
  config.min_limit = 5;
  config.max_limit = 1000;
  AdaptiveLimiter limiter(config, 2);
  Clock::time_point now{};
  Feed(limiter, 10'000, 2, &now);   // minRTT 10 ms
  Feed(limiter, 10'000, 12, &now);  // grows
  const uint32_t grown = limiter.limit();
  CHECK(grown > 100);
  Feed(limiter, 40'000, 1, &now);  // 4× minRTT: gradient 0.5
  CHECK(limiter.limit() < grown * 0.6);
  Feed(limiter, 40'000, 20, &now);
  CHECK(limiter.limit() < 15);
  CHECK(limiter.limit() >= 5);
  // Within the buffer (≤ 1.25 × minRTT) it holds or grows again.
  const uint32_t low = limiter.limit();
  Feed(limiter, 12'000, 1, &now);
  CHECK(limiter.limit() >= low);
}

TEST_CASE("minRTT is measured again after about 30 s, then the limit returns") {
  conf::AdaptiveConcurrency config;
  config.min_limit = 3;
  config.max_limit = 50;
  config.jitter = 0.1;
  AdaptiveLimiter limiter(config, 3);
  Clock::time_point now{};
  Feed(limiter, 10'000, 2, &now);
  Feed(limiter, 10'000, 10, &now);
  REQUIRE(limiter.limit() == 50);
  Feed(limiter, 10'000, 260, &now);  // 27 s: not yet (30 s - 10 %)
  CHECK_FALSE(limiter.measuring());
  Feed(limiter, 10'000, 70, &now);  // past 33 s: it measured
  int measured_at_floor = 0;
  // Find the measurement: the limit at its floor for two windows.
  AdaptiveLimiter again(config, 3);
  Clock::time_point t{};
  Feed(again, 10'000, 12, &t);
  for (int i = 0; i < 400 && measured_at_floor == 0; ++i) {
    Feed(again, 10'000, 1, &t);
    if (again.measuring()) {
      CHECK(again.limit() == 3);
      measured_at_floor = i;
    }
  }
  CHECK(measured_at_floor >= 260);  // 100 ms a window: ≥ 27 s
  CHECK(measured_at_floor <= 340);  // ≤ 33 s
  Feed(again, 8'000, 2, &t);        // minRTT 8 ms now, limit back
  CHECK_FALSE(again.measuring());
  CHECK(again.min_rtt_us() == 8'000);
  CHECK(again.limit() == 50);
}

TEST_CASE(
    "with sub-millisecond workers, a millisecond of noise is no queueing") {
  conf::AdaptiveConcurrency config;
  AdaptiveLimiter limiter(config, 4);
  Clock::time_point now{};
  Feed(limiter, 200, 2, &now);  // minRTT 0.2 ms
  REQUIRE(limiter.min_rtt_us() == 200);
  const uint32_t before = limiter.limit();
  Feed(limiter, 900, 3, &now);  // 4.5 × minRTT, but within 1 ms of it
  CHECK(limiter.limit() > before);
  Feed(limiter, 5'000, 3, &now);  // 5 ms: queueing
  CHECK(limiter.limit() < before);
}

}  // namespace tandem::dispatcher
