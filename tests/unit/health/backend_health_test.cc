// Unit tests for one backend's health state machine, with time passed in.
#include "health/backend_health.h"

#include <doctest/doctest.h>

#include "algorithms/picker.h"

namespace tandem::health {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

HealthSettings Checked(uint32_t rise = 2, uint32_t fall = 3) {
  HealthSettings settings;
  settings.checks = true;
  settings.rise = rise;
  settings.fall = fall;
  settings.check_name = "HTTP check";
  return settings;
}

HealthSettings WithOutlier(HealthSettings settings, uint32_t consecutive = 5) {
  settings.consecutive_failures = consecutive;
  settings.ejection_time = seconds(30);
  settings.max_ejection_time = seconds(300);
  return settings;
}

const TimePoint kStart{};

}  // namespace

TEST_CASE(
    "a checked backend starts unknown and takes traffic after its first "
    "passing check") {
  BackendHealth health(Checked());
  CHECK(health.state() == BackendState::kUnknown);
  health.OnCheckPassed(kStart, 1000, "HTTP 200");
  CHECK(health.state() == BackendState::kUp);
  REQUIRE(health.transitions().size() == 1);
  CHECK(health.transitions()[0].reason == "first HTTP check passed: HTTP 200");
  CHECK(health.transitions()[0].at_unix_ms == 1000);
}

TEST_CASE(
    "fall consecutive failures mark a backend down, rise passes bring it "
    "back") {
  BackendHealth health(Checked(2, 3));
  health.OnCheckPassed(kStart, 0, "HTTP 200");
  health.OnCheckFailed(kStart, 0, "HTTP 503");
  health.OnCheckFailed(kStart, 0, "HTTP 503");
  CHECK(health.state() == BackendState::kUp);   // hysteresis: 2 < fall
  health.OnCheckPassed(kStart, 0, "HTTP 200");  // resets the failure count
  health.OnCheckFailed(kStart, 0, "HTTP 503");
  health.OnCheckFailed(kStart, 0, "HTTP 503");
  health.OnCheckFailed(kStart, 0, "timed out after 1s");
  CHECK(health.state() == BackendState::kDown);
  CHECK(health.transitions().back().reason ==
        "3 consecutive HTTP checks failed: timed out after 1s");
  health.OnCheckPassed(kStart, 0, "HTTP 200");
  CHECK(health.state() == BackendState::kDown);
  health.OnCheckPassed(kStart, 0, "HTTP 200");
  CHECK(health.state() == BackendState::kUp);
  CHECK(health.transitions().back().reason ==
        "2 consecutive HTTP checks passed");
}

TEST_CASE("a first failed check marks an unknown backend down at once") {
  BackendHealth health(Checked());
  health.OnCheckFailed(kStart, 0, "connection refused");
  CHECK(health.state() == BackendState::kDown);
  CHECK(health.transitions().back().reason ==
        "first HTTP check failed: connection refused");
}

TEST_CASE("without checks a backend stays unknown and serving") {
  BackendHealth health(HealthSettings{});
  CHECK(health.state() == BackendState::kUnknown);
  CHECK(health.serving());
}

TEST_CASE(
    "consecutive traffic failures eject for ejection_time, growing with each "
    "ejection") {
  BackendHealth health(WithOutlier(Checked(), 5));
  health.OnCheckPassed(kStart, 0, "HTTP 200");
  health.OnTraffic(0, 4, TrafficFailure::kStatus5xx);
  CHECK_FALSE(health.WantsEjection());
  health.OnTraffic(3, 0,
                   TrafficFailure::kStatus5xx);  // a success resets the count
  health.OnTraffic(0, 4, TrafficFailure::kStatus5xx);
  CHECK_FALSE(health.WantsEjection());
  health.OnTraffic(0, 1, TrafficFailure::kStatus5xx);
  CHECK(health.WantsEjection());
  health.Eject(kStart, 0);
  CHECK(health.state() == BackendState::kEjected);
  CHECK(health.transitions().back().reason ==
        "5 consecutive 5xx answers on traffic; ejected for 30s");
  CHECK(health.NextDeadline() == kStart + seconds(30));
  CHECK_FALSE(health.Tick(kStart + seconds(29), 0));
  CHECK(health.Tick(kStart + seconds(30), 0));
  CHECK(health.state() == BackendState::kUp);

  health.OnTraffic(0, 5, TrafficFailure::kStatus5xx);
  health.Eject(kStart + seconds(31), 0);
  CHECK(health.times_ejected() == 2);
  CHECK(health.NextDeadline() == kStart + seconds(31 + 60));
}

TEST_CASE("ejection time is capped by max_ejection_time") {
  HealthSettings settings = WithOutlier(Checked(), 1);
  settings.max_ejection_time = seconds(45);
  BackendHealth health(settings);
  TimePoint now = kStart;
  for (int i = 0; i < 3; ++i) {
    health.OnTraffic(0, 1, TrafficFailure::kConnect);
    health.Eject(now, 0);
    now = *health.NextDeadline();
    health.Tick(now, 0);
  }
  health.OnTraffic(0, 1, TrafficFailure::kConnect);
  health.Eject(now, 0);
  CHECK(*health.NextDeadline() - now == seconds(45));
}

TEST_CASE(
    "an ejection for connect failures ends early after rise passing checks") {
  BackendHealth health(WithOutlier(Checked(2, 3), 2));
  health.OnCheckPassed(kStart, 0, "HTTP 200");
  health.OnTraffic(0, 2, TrafficFailure::kConnect);
  health.Eject(kStart, 0);
  health.OnCheckPassed(kStart + seconds(1), 0, "HTTP 200");
  CHECK(health.state() == BackendState::kEjected);
  health.OnCheckPassed(kStart + seconds(2), 0, "HTTP 200");
  CHECK(health.state() == BackendState::kUp);
  CHECK(health.transitions().back().reason ==
        "2 HTTP checks passed since the ejection for connect failures");
}

TEST_CASE(
    "an ejection for 5xx answers lasts its whole time whatever the checks "
    "say") {
  BackendHealth health(WithOutlier(Checked(2, 3), 2));
  health.OnCheckPassed(kStart, 0, "HTTP 200");
  health.OnTraffic(0, 2, TrafficFailure::kStatus5xx);
  health.Eject(kStart, 0);
  for (int i = 1; i <= 10; ++i)
    health.OnCheckPassed(kStart + seconds(i), 0, "HTTP 200");
  CHECK(health.state() == BackendState::kEjected);
  health.Tick(kStart + seconds(30), 0);
  CHECK(health.state() == BackendState::kUp);
}

TEST_CASE("a backend that fails its checks while ejected comes back down") {
  BackendHealth health(WithOutlier(Checked(2, 1), 1));
  health.OnCheckPassed(kStart, 0, "HTTP 200");
  health.OnTraffic(0, 1, TrafficFailure::kStatus5xx);
  health.Eject(kStart, 0);
  health.OnCheckFailed(kStart + seconds(1), 0, "HTTP 500");
  CHECK(health.state() == BackendState::kEjected);
  health.Tick(kStart + seconds(30), 0);
  CHECK(health.state() == BackendState::kDown);
}

TEST_CASE("a returning backend ramps through slow start") {
  HealthSettings settings = Checked(1, 1);
  settings.slow_start = seconds(10);
  BackendHealth health(settings);
  health.OnCheckPassed(kStart, 0, "HTTP 200");
  CHECK(health.state() == BackendState::kUp);  // not at start
  const uint32_t full = algorithms::ScaledWeight(1);
  CHECK(health.EffectiveWeight(full, kStart) == full);
  health.OnCheckFailed(kStart + seconds(1), 0, "HTTP 500");
  health.OnCheckPassed(kStart + seconds(2), 0, "HTTP 200");
  CHECK(health.state() == BackendState::kSlowStart);
  uint32_t early = health.EffectiveWeight(full, kStart + seconds(2));
  uint32_t middle = health.EffectiveWeight(full, kStart + seconds(7));
  CHECK(early < middle);
  CHECK(middle < full);
  CHECK(health.NextDeadline() == kStart + seconds(12));
  health.Tick(kStart + seconds(12), 0);
  CHECK(health.state() == BackendState::kUp);
  CHECK(health.transitions().back().reason == "slow start finished");
  CHECK(health.EffectiveWeight(full, kStart + seconds(12)) == full);
}

TEST_CASE("operator drain and disable override health, enable restores it") {
  BackendHealth health(Checked());
  health.OnCheckPassed(kStart, 0, "HTTP 200");
  health.Drain(kStart, 0, "drained by admin");
  CHECK(health.state() == BackendState::kDraining);
  CHECK_FALSE(health.serving());
  health.Disable(kStart, 0, "disabled by admin");
  CHECK(health.state() == BackendState::kDisabled);
  health.Enable(kStart, 0, "enabled by admin");
  CHECK(health.state() == BackendState::kUp);
  CHECK(health.transitions().back().reason == "enabled by admin");
}

TEST_CASE("worker feedback drains and scales the weight") {
  BackendHealth health(Checked());
  health.OnCheckPassed(kStart, 0, "HTTP 200");
  health.SetFeedbackDrain(kStart, 0, true);
  CHECK(health.state() == BackendState::kDraining);
  CHECK(health.transitions().back().reason ==
        "the worker asked to drain (Tandem-State: drain)");
  health.SetFeedbackDrain(kStart, 0, false);
  CHECK(health.state() == BackendState::kUp);
  health.SetFeedbackWeight(50);
  CHECK(health.EffectiveWeight(algorithms::ScaledWeight(2), kStart) ==
        algorithms::ScaledWeight(1));
  health.SetFeedbackWeight(0);
  CHECK(health.EffectiveWeight(algorithms::ScaledWeight(2), kStart) == 0);
}

TEST_CASE("a declined ejection starts the count again") {
  BackendHealth health(WithOutlier(Checked(), 3));
  health.OnCheckPassed(kStart, 0, "HTTP 200");
  health.OnTraffic(0, 3, TrafficFailure::kReset);
  REQUIRE(health.WantsEjection());
  health.DeclineEjection();
  CHECK_FALSE(health.WantsEjection());
  health.OnTraffic(0, 3, TrafficFailure::kReset);
  CHECK(health.WantsEjection());
}

TEST_CASE("the transition log is bounded") {
  BackendHealth health(Checked(1, 1));
  for (int i = 0; i < 100; ++i) {
    health.OnCheckPassed(kStart, i, "HTTP 200");
    health.OnCheckFailed(kStart, i, "HTTP 500");
  }
  CHECK(health.transitions().size() == BackendHealth::kMaxTransitions);
  CHECK(health.transitions().back().at_unix_ms == 99);
}

}  // namespace tandem::health

namespace tandem::health {
namespace {

TEST_CASE("a suspected hang ejects until the next check passes") {
  BackendHealth health(Checked(2, 3));
  health.OnCheckPassed(kStart, 0, "HTTP 200");
  health.SuspectHung(kStart, 0, "suspected hung: oldest request 80 ms");
  CHECK(health.hung());
  CHECK(health.state() == BackendState::kEjected);
  CHECK_FALSE(health.serving());
  CHECK(health.transitions().back().reason ==
        "suspected hung: oldest request 80 ms");
  // A second report changes nothing; time alone does not end it.
  health.SuspectHung(kStart + seconds(1), 0, "suspected hung: again");
  CHECK(health.transitions().size() == 2);
  health.Tick(kStart + seconds(60), 0);
  CHECK(health.state() == BackendState::kEjected);
  // Failing checks say more: down.
  for (int i = 0; i < 3; ++i) health.OnCheckFailed(kStart, 0, "timed out");
  CHECK(health.state() == BackendState::kDown);
  // The first check that gets an answer ends the suspicion; rise still
  // applies to "down".
  health.OnCheckPassed(kStart, 0, "HTTP 200");
  CHECK_FALSE(health.hung());
  CHECK(health.state() == BackendState::kDown);
  health.OnCheckPassed(kStart, 0, "HTTP 200");
  CHECK(health.state() == BackendState::kUp);
}

TEST_CASE("a hang suspicion on an up backend ends with one passing check") {
  BackendHealth health(Checked(2, 3));
  health.OnCheckPassed(kStart, 0, "HTTP 200");
  health.SuspectHung(kStart, 0, "suspected hung");
  health.OnCheckPassed(kStart, 0, "HTTP 200");
  CHECK(health.state() == BackendState::kUp);
  CHECK(health.transitions().back().reason ==
        "HTTP check passed after a suspected hang: HTTP 200");
}

TEST_CASE("without checks a hang suspicion expires") {
  BackendHealth health(HealthSettings{});
  health.SuspectHung(kStart, 0, "suspected hung");
  CHECK(health.state() == BackendState::kEjected);
  REQUIRE(health.NextDeadline());
  CHECK(*health.NextDeadline() == kStart + BackendHealth::kHangEjection);
  CHECK_FALSE(health.Tick(kStart + seconds(9), 0));
  CHECK(health.Tick(kStart + BackendHealth::kHangEjection, 0));
  CHECK(health.state() == BackendState::kUnknown);
  CHECK(health.serving());
}

}  // namespace
}  // namespace tandem::health
