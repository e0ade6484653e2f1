// A cold backup's activation (DESIGN.md "cold standby"): run `activate` on
// promotion, serve once a check passes, give up after a window, try again
// after a delay, run `deactivate` after demotion. Pure, as BackendHealth:
// time is passed in, every change recorded with its reason; the caller runs
// the commands (health/command.h) and the checks (health/probe.h).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>

#include "algorithms/policy.h"
#include "health/backend_health.h"

namespace tandem::health {

using algorithms::Activation;

struct ColdStandbySettings {
  std::string backend;   // its address, named in reasons
  std::string activate;  // the shell commands, named in reasons
  std::string deactivate;
  // Without checks, a successful activate command is enough to serve.
  bool checks = true;
  // An activation that has not passed a check activate_timeout +
  // check_timeout + check_interval after it started is given up: the command
  // may take its whole time, then the first check gets one interval and its
  // own timeout.
  std::chrono::milliseconds activate_timeout{30000};
  std::chrono::milliseconds check_timeout{1000};
  std::chrono::milliseconds check_interval{2000};
  // A failed activation may be tried again after this long.
  std::chrono::milliseconds retry_delay{60000};
};

// One change of a cold backup's activation. from == to only for a note that
// changes nothing: the activate command succeeded, a check is awaited.
struct ActivationChange {
  TimePoint at{};
  Activation from = Activation::kInactive;
  Activation to = Activation::kInactive;
  std::string reason;  // a whole sentence, naming the backend
};

// Every member is called on the health monitor's thread (or any one thread).
class ColdStandby {
 public:
  static constexpr size_t kMaxChanges = 16;

  explicit ColdStandby(const ColdStandbySettings& settings);

  // A reload may change the settings; the state and history stay.
  void set_settings(const ColdStandbySettings& settings) {
    settings_ = settings;
  }
  const ColdStandbySettings& settings() const { return settings_; }

  // The policy asks for this backup. True when the caller must run the
  // activate command now (the backup was inactive); false otherwise, and
  // nothing changes.
  [[nodiscard]] bool Promote(TimePoint now);
  // The activate command ended; `outcome` says how ("succeeded", "timed
  // out", "exited with status 1"). A success leaves it activating until a
  // check passes (active at once without checks); a failure marks it failed,
  // so the policy asks the next backup.
  void OnCommandResult(TimePoint now, bool ok, std::string_view outcome);
  // A check passed: an activating backup becomes active. True on that change.
  bool OnCheckPassed(TimePoint now);
  // Time passing: an activation without a passing check within its window
  // (see ColdStandbySettings) fails, once its command has ended; a failed
  // one becomes inactive again after retry_delay. True if the state changed.
  bool Tick(TimePoint now);
  // The policy no longer needs this backup. True when it was activating or
  // active and is now inactive: the caller stops its checks and runs the
  // deactivate command, if any. False while the activate command runs (the
  // policy asks again once it ended) and when there is nothing to stop.
  [[nodiscard]] bool Demote(TimePoint now);

  Activation state() const { return state_; }
  // Started and not yet proven: checks run fast, and a failed one does not
  // count as down (a process just started refuses for a moment).
  bool starting() const { return state_ == Activation::kActivating; }
  // Running, as far as this backup knows: it is checked.
  bool running() const {
    return state_ == Activation::kActivating || state_ == Activation::kActive;
  }
  // Counts every change ever recorded (the log itself is bounded).
  uint64_t change_count() const { return change_count_; }
  const std::deque<ActivationChange>& changes() const { return changes_; }

 private:
  TimePoint::duration Window() const;
  void Record(TimePoint now, Activation to, std::string reason);

  ColdStandbySettings settings_;
  Activation state_ = Activation::kInactive;
  bool command_running_ = false;  // the activate command Promote asked for
  TimePoint started_at_{};
  TimePoint failed_at_{};
  std::deque<ActivationChange> changes_;
  uint64_t change_count_ = 0;
};

}  // namespace tandem::health
