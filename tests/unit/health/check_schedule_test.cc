// Unit tests for check scheduling: which backends are checked, the wait
// until the next check, and checks called for by failed traffic.
#include "health/check_schedule.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>

namespace tandem::health {
namespace {

using algorithms::Activation;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;
using std::chrono::seconds;

// Every interval different, so each rule shows which one it picked.
conf::HealthCheck Check() {
  conf::HealthCheck check;
  check.kind = conf::HealthCheck::Kind::kHttp;
  check.interval = seconds(2);
  check.fast_interval = milliseconds(500);
  check.down_interval = seconds(3);
  check.warm_interval = seconds(10);
  return check;
}

CheckSubject Up() {
  CheckSubject subject;
  subject.state = BackendState::kUp;
  return subject;
}

nanoseconds Delay(const conf::HealthCheck& check, const CheckSubject& subject,
                  bool first = false) {
  algorithms::Rng rng(1);
  return NextCheckDelay(check, subject, first, rng);
}

const TimePoint kStart{};

}  // namespace

TEST_CASE(
    "backends are checked unless checks are off, the backend is disabled or "
    "it is a cold backup not running") {
  conf::HealthCheck check = Check();
  CHECK(ChecksRun(check, Up()));

  CheckSubject disabled = Up();
  disabled.state = BackendState::kDisabled;
  CHECK_FALSE(ChecksRun(check, disabled));

  CheckSubject cold = Up();
  cold.cold = true;
  cold.activation = Activation::kInactive;
  CHECK_FALSE(ChecksRun(check, cold));
  cold.activation = Activation::kFailed;
  CHECK_FALSE(ChecksRun(check, cold));
  cold.activation = Activation::kActivating;
  CHECK(ChecksRun(check, cold));
  cold.activation = Activation::kActive;
  CHECK(ChecksRun(check, cold));

  conf::HealthCheck none = Check();
  none.kind = conf::HealthCheck::Kind::kNone;
  CHECK_FALSE(ChecksRun(none, Up()));
}

TEST_CASE("a first check runs at once") {
  CheckSubject down = Up();
  down.state = BackendState::kDown;
  CHECK(Delay(Check(), Up(), true) == nanoseconds(0));
  CHECK(Delay(Check(), down, true) == nanoseconds(0));
}

TEST_CASE(
    "checks run at the interval, fast while changing or activating, slowly "
    "for an idle warm backup, at the down interval while down") {
  conf::HealthCheck check = Check();
  CHECK(Delay(check, Up()) == seconds(2));

  CheckSubject changing = Up();
  changing.changing = true;
  CHECK(Delay(check, changing) == milliseconds(500));

  CheckSubject activating = Up();
  activating.cold = true;
  activating.activation = Activation::kActivating;
  CHECK(Delay(check, activating) == milliseconds(500));

  CheckSubject warm = Up();
  warm.warm_idle = true;
  CHECK(Delay(check, warm) == seconds(10));

  CheckSubject down = Up();
  down.state = BackendState::kDown;
  CHECK(Delay(check, down) == seconds(3));

  // Precedence: changing over warm, warm over down.
  CheckSubject warm_changing = warm;
  warm_changing.changing = true;
  CHECK(Delay(check, warm_changing) == milliseconds(500));
  CheckSubject warm_down = warm;
  warm_down.state = BackendState::kDown;
  CHECK(Delay(check, warm_down) == seconds(10));
}

TEST_CASE("without jitter the random source is not used") {
  algorithms::Rng used(7);
  algorithms::Rng fresh(7);
  CHECK(NextCheckDelay(Check(), Up(), false, used) == seconds(2));
  CHECK(used.Next() == fresh.Next());
}

TEST_CASE(
    "jitter spreads each wait over interval ± jitter, and a first check over "
    "[0, jitter]") {
  conf::HealthCheck check = Check();
  check.jitter = milliseconds(200);
  algorithms::Rng rng(42);
  nanoseconds low = seconds(10);
  nanoseconds high{0};
  nanoseconds first_high{0};
  for (int i = 0; i < 10000; ++i) {
    nanoseconds delay = NextCheckDelay(check, Up(), false, rng);
    REQUIRE(delay >= milliseconds(1800));
    REQUIRE(delay <= milliseconds(2200));
    low = std::min(low, delay);
    high = std::max(high, delay);
    nanoseconds first = NextCheckDelay(check, Up(), true, rng);
    REQUIRE(first >= nanoseconds(0));
    REQUIRE(first <= milliseconds(200));
    first_high = std::max(first_high, first);
  }
  // The whole span is used.
  CHECK(low < milliseconds(1810));
  CHECK(high > milliseconds(2190));
  CHECK(first_high > milliseconds(190));
}

TEST_CASE(
    "failed traffic calls for a check at once, unless it was a 5xx, the "
    "backend is not serving, or one ran within fast_interval") {
  conf::HealthCheck check = Check();  // fast_interval 500ms
  const TimePoint never{};
  const TimePoint now = kStart + seconds(100);
  CHECK(TrafficCallsForCheck(check, 1, TrafficFailure::kConnect, true, now,
                             never));
  CHECK(
      TrafficCallsForCheck(check, 3, TrafficFailure::kReset, true, now, never));
  CHECK(TrafficCallsForCheck(check, 1, TrafficFailure::kTimeout, true, now,
                             never));
  // A 5xx reached the backend's answer: a check would prove nothing new.
  CHECK_FALSE(TrafficCallsForCheck(check, 1, TrafficFailure::kStatus5xx, true,
                                   now, never));
  CHECK_FALSE(TrafficCallsForCheck(check, 0, TrafficFailure::kConnect, true,
                                   now, never));
  CHECK_FALSE(TrafficCallsForCheck(check, 1, TrafficFailure::kConnect, false,
                                   now, never));
  CHECK_FALSE(TrafficCallsForCheck(check, 1, TrafficFailure::kConnect, true,
                                   now, now - milliseconds(499)));
  CHECK(TrafficCallsForCheck(check, 1, TrafficFailure::kConnect, true, now,
                             now - milliseconds(500)));
}

}  // namespace tandem::health
