// Unit tests for a cold backup's activation, with time passed in.
#include "health/cold_standby.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace tandem::health {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

ColdStandbySettings Settings() {
  ColdStandbySettings settings;
  settings.backend = "127.0.0.1:9003";
  settings.activate = "systemctl start worker@3";
  settings.deactivate = "systemctl stop worker@3";
  settings.checks = true;
  settings.activate_timeout = seconds(30);
  settings.check_timeout = seconds(1);
  settings.check_interval = seconds(2);
  settings.retry_delay = seconds(60);
  return settings;
}

const TimePoint kStart{};

// The states the backup went through, as "from>to" pairs.
std::vector<std::string> Path(const ColdStandby& cold) {
  std::vector<std::string> path;
  for (const ActivationChange& change : cold.changes()) {
    path.push_back(std::string(algorithms::ActivationName(change.from)) + ">" +
                   algorithms::ActivationName(change.to));
  }
  return path;
}

// Promoted at kStart, its activate command succeeded at kStart + 5s.
ColdStandby Activated(const ColdStandbySettings& settings = Settings()) {
  ColdStandby cold(settings);
  REQUIRE(cold.Promote(kStart));
  cold.OnCommandResult(kStart + seconds(5), true, "succeeded");
  return cold;
}

}  // namespace

TEST_CASE(
    "a promoted cold backup runs activate, then serves once its check "
    "passes") {
  ColdStandby cold(Settings());
  CHECK(cold.state() == Activation::kInactive);
  CHECK_FALSE(cold.running());

  REQUIRE(cold.Promote(kStart));
  CHECK(cold.state() == Activation::kActivating);
  CHECK(cold.starting());
  CHECK(cold.running());  // checked from now on
  // Asked again while it starts: nothing more to run.
  CHECK_FALSE(cold.Promote(kStart + seconds(1)));

  cold.OnCommandResult(kStart + seconds(5), true, "succeeded");
  CHECK(cold.state() == Activation::kActivating);

  CHECK(cold.OnCheckPassed(kStart + seconds(6)));
  CHECK(cold.state() == Activation::kActive);
  CHECK_FALSE(cold.starting());
  CHECK_FALSE(cold.OnCheckPassed(kStart + seconds(8)));  // already active

  CHECK(Path(cold) == std::vector<std::string>{"inactive>activating",
                                               "activating>activating",
                                               "activating>active"});
  const auto& changes = cold.changes();
  CHECK(changes[0].at == kStart);
  CHECK(changes[0].reason ==
        "activating cold backup 127.0.0.1:9003: systemctl start worker@3");
  CHECK(changes[1].at == kStart + seconds(5));
  CHECK(changes[1].reason ==
        "cold backup 127.0.0.1:9003 activate command succeeded; waiting for "
        "its check");
  CHECK(changes[2].at == kStart + seconds(6));
  CHECK(changes[2].reason ==
        "cold backup 127.0.0.1:9003 passed its check after activation");
  CHECK(cold.change_count() == 3);
}

TEST_CASE("without checks a successful activate command is enough to serve") {
  ColdStandbySettings settings = Settings();
  settings.checks = false;
  ColdStandby cold = Activated(settings);
  CHECK(cold.state() == Activation::kActive);
  CHECK(Path(cold) ==
        std::vector<std::string>{"inactive>activating", "activating>active"});
}

TEST_CASE(
    "a failed activate command marks the backup failed, and it may be "
    "activated again after the retry delay") {
  ColdStandby cold(Settings());
  REQUIRE(cold.Promote(kStart));
  cold.OnCommandResult(kStart + seconds(2), false, "exited with status 1");
  CHECK(cold.state() == Activation::kFailed);
  CHECK_FALSE(cold.running());
  CHECK(cold.changes().back().reason ==
        "cold backup 127.0.0.1:9003 activate command exited with status 1; "
        "trying the next backup");
  // Failed: skipped by the policy, and not started again if asked.
  CHECK_FALSE(cold.Promote(kStart + seconds(3)));

  CHECK_FALSE(cold.Tick(kStart + seconds(62) - milliseconds(1)));
  CHECK(cold.state() == Activation::kFailed);
  CHECK(cold.Tick(kStart + seconds(62)));
  CHECK(cold.state() == Activation::kInactive);
  CHECK(cold.changes().back().reason ==
        "cold backup 127.0.0.1:9003 may be activated again, 60s after it "
        "failed");

  CHECK(cold.Promote(kStart + seconds(63)));
  CHECK(Path(cold) ==
        std::vector<std::string>{"inactive>activating", "activating>failed",
                                 "failed>inactive", "inactive>activating"});
}

TEST_CASE(
    "an activation that never passes its check fails activate_timeout plus "
    "one check after it started") {
  ColdStandby cold = Activated();
  // 30s to run the command, then one 2s interval and the check's 1s timeout.
  CHECK_FALSE(cold.Tick(kStart + seconds(33) - milliseconds(1)));
  CHECK(cold.state() == Activation::kActivating);
  CHECK(cold.Tick(kStart + seconds(33)));
  CHECK(cold.state() == Activation::kFailed);
  CHECK(cold.changes().back().reason ==
        "cold backup 127.0.0.1:9003 never passed its check after activation; "
        "trying the next backup");
  CHECK(cold.changes().back().at == kStart + seconds(33));
  // The retry delay counts from that failure.
  CHECK_FALSE(cold.Tick(kStart + seconds(92)));
  CHECK(cold.Tick(kStart + seconds(93)));
  CHECK(cold.state() == Activation::kInactive);
}

TEST_CASE(
    "the activation window is not judged while the activate command runs") {
  ColdStandby cold(Settings());
  REQUIRE(cold.Promote(kStart));
  CHECK_FALSE(cold.Tick(kStart + seconds(40)));
  CHECK(cold.state() == Activation::kActivating);
  cold.OnCommandResult(kStart + seconds(40), true, "succeeded");
  // Counted from the start: the window has passed already.
  CHECK(cold.Tick(kStart + seconds(40)));
  CHECK(cold.state() == Activation::kFailed);
}

TEST_CASE("a demoted cold backup is deactivated and no longer checked") {
  ColdStandby cold = Activated();
  REQUIRE(cold.OnCheckPassed(kStart + seconds(6)));
  REQUIRE(cold.Demote(kStart + seconds(100)));
  CHECK(cold.state() == Activation::kInactive);
  CHECK_FALSE(cold.running());
  CHECK(cold.changes().back().from == Activation::kActive);
  CHECK(cold.changes().back().reason ==
        "deactivating cold backup 127.0.0.1:9003: systemctl stop worker@3");
  CHECK_FALSE(cold.Demote(kStart + seconds(101)));  // nothing left to stop
  CHECK(cold.change_count() == 4);
}

TEST_CASE(
    "an activating backup is deactivated only once its activate command "
    "ended") {
  ColdStandbySettings settings = Settings();
  settings.deactivate = "";
  ColdStandby cold(settings);
  REQUIRE(cold.Promote(kStart));
  CHECK_FALSE(cold.Demote(kStart + seconds(1)));
  CHECK(cold.state() == Activation::kActivating);
  cold.OnCommandResult(kStart + seconds(2), true, "succeeded");
  REQUIRE(cold.Demote(kStart + seconds(3)));
  CHECK(cold.state() == Activation::kInactive);
  CHECK(cold.changes().back().reason ==
        "deactivating cold backup 127.0.0.1:9003");
}

TEST_CASE("an inactive or failed backup has nothing to deactivate") {
  ColdStandby cold(Settings());
  CHECK_FALSE(cold.Demote(kStart));
  REQUIRE(cold.Promote(kStart));
  cold.OnCommandResult(kStart + seconds(1), false, "timed out");
  CHECK_FALSE(cold.Demote(kStart + seconds(2)));
  CHECK(cold.state() == Activation::kFailed);
}

TEST_CASE("the activation change log is bounded") {
  ColdStandby cold(Settings());
  TimePoint now = kStart;
  for (int i = 0; i < 20; ++i) {
    REQUIRE(cold.Promote(now));
    cold.OnCommandResult(now, false, "timed out");
    now += seconds(60);
    REQUIRE(cold.Tick(now));
  }
  CHECK(cold.changes().size() == ColdStandby::kMaxChanges);
  CHECK(cold.change_count() == 60);
  CHECK(cold.changes().back().at == now);
}

}  // namespace tandem::health
