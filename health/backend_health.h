// One backend's health state machine: active checks with rise/fall
// hysteresis, passive ejection with back-off, operator actions and the
// worker's own feedback, combined into the one state /status shows, every
// change recorded with its reason (HAProxy's srv_set_stopped() →
// srv_update_status(), Envoy's outlier detector). Pure: time is passed in.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>

#include "algorithms/policy.h"

namespace tandem::health {

using algorithms::BackendState;
using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;

// "up", "down", ... as in the contract's /status.
std::string_view StateName(BackendState state);

struct Transition {
  int64_t at_unix_ms = 0;  // wall-clock time, for people
  BackendState from = BackendState::kUnknown;
  BackendState to = BackendState::kUnknown;
  std::string reason;
};

// What real traffic saw go wrong on a backend.
enum class TrafficFailure { kConnect, kReset, kTimeout, kStatus5xx };

// What an operator can do to one backend (POST /admin/.../{action}).
enum class AdminAction { kDrain, kEnable, kDisable };
inline constexpr std::string_view kAdminActionNames[] = {"drain", "enable",
                                                         "disable"};
// The action named `name`; nullopt for any other word.
inline std::optional<AdminAction> ParseAdminAction(std::string_view name) {
  for (size_t i = 0; i < std::size(kAdminActionNames); ++i) {
    if (kAdminActionNames[i] == name) return static_cast<AdminAction>(i);
  }
  return std::nullopt;
}

struct HealthSettings {
  bool checks = false;  // active checks configured
  uint32_t rise = 2;
  uint32_t fall = 3;
  std::chrono::milliseconds slow_start{0};
  // Outlier detection; consecutive_failures == 0 turns it off.
  uint32_t consecutive_failures = 0;
  std::chrono::milliseconds ejection_time{30000};
  std::chrono::milliseconds max_ejection_time{300000};
  std::string check_name = "check";  // "HTTP check", "TCP check" in reasons
};

class BackendHealth {
 public:
  static constexpr size_t kMaxTransitions = 32;

  explicit BackendHealth(const HealthSettings& settings);

  // A reload may change the settings; the state and history stay.
  void set_settings(const HealthSettings& settings) { settings_ = settings; }
  const HealthSettings& settings() const { return settings_; }

  // Active checks. `detail` says what was seen ("HTTP 503", "timed out").
  void OnCheckPassed(TimePoint now, int64_t wall_ms, std::string_view detail);
  void OnCheckFailed(TimePoint now, int64_t wall_ms, std::string_view detail);

  // Passive outcomes, already aggregated by the data path: `successes`
  // exchanges went well, then `failures` failed with `kind`.
  void OnTraffic(uint32_t successes, uint32_t failures, TrafficFailure kind);
  // True when consecutive traffic failures call for an ejection now.
  bool WantsEjection() const;
  // Ejects for ejection_time × times ejected (capped); the cluster decided
  // that max_ejection_percent allows it.
  void Eject(TimePoint now, int64_t wall_ms);
  // Ejects for an outlier rate of the last interval (success rate, failure
  // percentage; `reason` gives the figures), ejection_time × times ejected
  // as above. Like a 5xx ejection, passing checks do not end it early.
  void EjectOutlier(TimePoint now, int64_t wall_ms, std::string_view reason);
  // The cluster refused an ejection (too many ejected): counters restart so
  // the backend is judged on fresh failures.
  void DeclineEjection();

  // Operator actions and worker feedback.
  void Drain(TimePoint now, int64_t wall_ms, std::string_view reason);
  void Disable(TimePoint now, int64_t wall_ms, std::string_view reason);
  void Enable(TimePoint now, int64_t wall_ms, std::string_view reason);
  void SetFeedbackDrain(TimePoint now, int64_t wall_ms, bool drain);
  // The data path suspects it hung (`reason` gives the figures): ejected
  // until a check passes, or, without checks, for kHangEjection.
  void SuspectHung(TimePoint now, int64_t wall_ms, std::string_view reason);
  static constexpr std::chrono::seconds kHangEjection{10};
  bool hung() const { return hung_; }
  // A backend found in DNS left its answer (it drains until the source's
  // hold ends), or came back; `reason` names the source.
  void SetVanished(TimePoint now, int64_t wall_ms, bool vanished,
                   std::string_view reason);
  bool vanished() const { return vanished_; }
  void SetFeedbackWeight(std::optional<uint32_t> percent) {
    feedback_weight_ = percent;
  }

  // Time passing: ends ejections and slow start. Returns true if the state
  // changed.
  bool Tick(TimePoint now, int64_t wall_ms);
  // When Tick() next has something to do; nullopt when nothing is pending.
  std::optional<TimePoint> NextDeadline() const;

  BackendState state() const { return state_; }
  // Takes traffic as far as health is concerned (the policy decides the rest).
  bool serving() const;
  // The weight pickers use (BackendView units): `scaled_weight` (the
  // configured weight × kWeightScale) scaled by the worker's feedback, then
  // ramped by slow start.
  uint32_t EffectiveWeight(uint32_t scaled_weight, TimePoint now) const;
  std::optional<uint32_t> feedback_weight() const { return feedback_weight_; }
  bool checked_once() const { return checked_once_; }
  // Checks have begun to disagree with the state (some failed while up, or
  // passed while down) without reaching fall/rise yet: check faster.
  bool changing() const {
    return (checked_ == Checked::kUp && failures_ > 0) ||
           (checked_ == Checked::kDown && passes_ > 0);
  }
  // The backend stopped running (a cold backup was deactivated): its checked
  // state is forgotten until it is checked again.
  void MarkStopped(TimePoint now, int64_t wall_ms, std::string_view reason);
  // Counts every transition ever made (the log itself is bounded).
  uint64_t transition_count() const { return transition_count_; }
  uint32_t times_ejected() const { return times_ejected_; }
  const std::deque<Transition>& transitions() const { return transitions_; }
  const std::string& last_check() const { return last_check_; }

 private:
  enum class Checked { kUnknown, kUp, kDown };
  enum class Admin { kNone, kDrain, kDisable };

  BackendState Derive(TimePoint now) const;
  // Recomputes the state; a change is logged with `reason`.
  void Update(TimePoint now, int64_t wall_ms, std::string_view reason);
  std::string_view FailureName(TrafficFailure kind) const;

  HealthSettings settings_;
  BackendState state_ = BackendState::kUnknown;
  Checked checked_ = Checked::kUnknown;
  Admin admin_ = Admin::kNone;
  bool feedback_drain_ = false;
  bool vanished_ = false;
  bool hung_ = false;
  TimePoint hung_since_{};
  std::optional<uint32_t> feedback_weight_;
  bool checked_once_ = false;
  uint32_t passes_ = 0;    // consecutive passed checks
  uint32_t failures_ = 0;  // consecutive failed checks
  std::string last_check_;

  // Outlier detection.
  uint32_t traffic_failures_ = 0;  // consecutive
  TrafficFailure last_failure_ = TrafficFailure::kConnect;
  bool ejected_ = false;
  bool ejected_for_5xx_ = false;
  uint32_t passes_while_ejected_ = 0;
  TimePoint ejected_until_{};
  uint32_t times_ejected_ = 0;
  TimePoint last_ejection_end_{};

  // Slow start after a return to service.
  std::optional<TimePoint> slow_start_since_;

  std::deque<Transition> transitions_;
  uint64_t transition_count_ = 0;
};

}  // namespace tandem::health
