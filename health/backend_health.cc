// One backend's health state machine; see backend_health.h.
#include "health/backend_health.h"

#include <algorithm>

#include "algorithms/picker.h"
#include "algorithms/slow_start.h"

namespace tandem::health {
namespace {

std::string FormatSeconds(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + "s";
  return std::to_string(d.count()) + "ms";
}

bool IsServing(BackendState state) {
  return state == BackendState::kUp || state == BackendState::kSlowStart ||
         state == BackendState::kUnknown;
}

}  // namespace

std::string_view StateName(BackendState state) {
  switch (state) {
    case BackendState::kUnknown:
      return "unknown";
    case BackendState::kUp:
      return "up";
    case BackendState::kDown:
      return "down";
    case BackendState::kEjected:
      return "ejected";
    case BackendState::kDraining:
      return "draining";
    case BackendState::kDisabled:
      return "disabled";
    case BackendState::kSlowStart:
      return "slow-start";
  }
  return "unknown";
}

BackendHealth::BackendHealth(const HealthSettings& settings)
    : settings_(settings) {}

BackendState BackendHealth::Derive(TimePoint now) const {
  if (admin_ == Admin::kDisable) return BackendState::kDisabled;
  if (admin_ == Admin::kDrain || feedback_drain_ || vanished_)
    return BackendState::kDraining;
  if (ejected_) return BackendState::kEjected;
  if (settings_.checks && checked_ == Checked::kDown)
    return BackendState::kDown;
  // Checks that say "down" say more than a suspicion.
  if (hung_) return BackendState::kEjected;
  bool ramping =
      slow_start_since_ && now < *slow_start_since_ + settings_.slow_start;
  if (ramping) return BackendState::kSlowStart;
  if (!settings_.checks || checked_ == Checked::kUnknown)
    return BackendState::kUnknown;
  return BackendState::kUp;
}

bool BackendHealth::serving() const { return IsServing(state_); }

void BackendHealth::Update(TimePoint now, int64_t wall_ms,
                           std::string_view reason) {
  BackendState next = Derive(now);
  if (next == state_) return;
  // Back from an outage: ramp the weight up (never at start, as HAProxy).
  bool returning = state_ == BackendState::kDown ||
                   state_ == BackendState::kEjected ||
                   state_ == BackendState::kDisabled;
  if (returning && IsServing(next) && settings_.slow_start.count() > 0) {
    slow_start_since_ = now;
    next = Derive(now);
  }
  Transition transition;
  transition.at_unix_ms = wall_ms;
  transition.from = state_;
  transition.to = next;
  transition.reason = std::string(reason);
  transitions_.push_back(std::move(transition));
  ++transition_count_;
  while (transitions_.size() > kMaxTransitions) transitions_.pop_front();
  state_ = next;
}

void BackendHealth::OnCheckPassed(TimePoint now, int64_t wall_ms,
                                  std::string_view detail) {
  checked_once_ = true;
  ++passes_;
  failures_ = 0;
  last_check_ = std::string(detail);
  std::string reason;
  if (checked_ == Checked::kUnknown) {
    checked_ = Checked::kUp;
    reason = "first " + settings_.check_name + " passed: " + last_check_;
  } else if (checked_ == Checked::kDown && passes_ >= settings_.rise) {
    checked_ = Checked::kUp;
    reason = std::to_string(passes_) + " consecutive " + settings_.check_name +
             "s passed";
  }
  if (hung_) {
    // A suspected hang ends with the first check that gets an answer.
    hung_ = false;
    reason =
        settings_.check_name + " passed after a suspected hang: " + last_check_;
  }
  if (ejected_ && !ejected_for_5xx_ &&
      ++passes_while_ejected_ >= settings_.rise) {
    // A connect or timeout ejection ends early once checks prove the backend
    // answers again; a 5xx ejection does not (a healthy /healthz says
    // nothing about real requests).
    ejected_ = false;
    last_ejection_end_ = now;
    traffic_failures_ = 0;
    reason = std::to_string(passes_while_ejected_) + " " +
             settings_.check_name + "s passed since the ejection for " +
             std::string(FailureName(last_failure_));
  }
  Update(now, wall_ms, reason);
}

void BackendHealth::OnCheckFailed(TimePoint now, int64_t wall_ms,
                                  std::string_view detail) {
  checked_once_ = true;
  ++failures_;
  passes_ = 0;
  passes_while_ejected_ = 0;
  last_check_ = std::string(detail);
  std::string reason;
  if (checked_ == Checked::kUnknown) {
    checked_ = Checked::kDown;
    reason = "first " + settings_.check_name + " failed: " + last_check_;
  } else if (checked_ == Checked::kUp && failures_ >= settings_.fall) {
    checked_ = Checked::kDown;
    reason = std::to_string(failures_) + " consecutive " +
             settings_.check_name + "s failed: " + last_check_;
  }
  Update(now, wall_ms, reason);
}

std::string_view BackendHealth::FailureName(TrafficFailure kind) const {
  switch (kind) {
    case TrafficFailure::kConnect:
      return "connect failures";
    case TrafficFailure::kReset:
      return "connection resets";
    case TrafficFailure::kTimeout:
      return "timeouts";
    case TrafficFailure::kStatus5xx:
      return "5xx answers";
  }
  return "failures";
}

void BackendHealth::OnTraffic(uint32_t successes, uint32_t failures,
                              TrafficFailure kind) {
  if (successes > 0) traffic_failures_ = 0;
  if (failures > 0) {
    traffic_failures_ += failures;
    last_failure_ = kind;
  }
}

bool BackendHealth::WantsEjection() const {
  return settings_.consecutive_failures > 0 && !ejected_ &&
         admin_ != Admin::kDisable &&
         traffic_failures_ >= settings_.consecutive_failures;
}

void BackendHealth::Eject(TimePoint now, int64_t wall_ms) {
  ++times_ejected_;
  auto duration = std::min(settings_.ejection_time * times_ejected_,
                           settings_.max_ejection_time);
  ejected_ = true;
  ejected_for_5xx_ = last_failure_ == TrafficFailure::kStatus5xx;
  ejected_until_ = now + duration;
  passes_while_ejected_ = 0;
  std::string reason = std::to_string(traffic_failures_) + " consecutive " +
                       std::string(FailureName(last_failure_)) +
                       " on traffic; ejected for " + FormatSeconds(duration);
  if (times_ejected_ > 1)
    reason += " (ejection #" + std::to_string(times_ejected_) + ")";
  traffic_failures_ = 0;
  Update(now, wall_ms, reason);
}

void BackendHealth::EjectOutlier(TimePoint now, int64_t wall_ms,
                                 std::string_view reason) {
  ++times_ejected_;
  auto duration = std::min(settings_.ejection_time * times_ejected_,
                           settings_.max_ejection_time);
  ejected_ = true;
  ejected_for_5xx_ = true;
  ejected_until_ = now + duration;
  passes_while_ejected_ = 0;
  std::string text =
      std::string(reason) + "; ejected for " + FormatSeconds(duration);
  if (times_ejected_ > 1)
    text += " (ejection #" + std::to_string(times_ejected_) + ")";
  Update(now, wall_ms, text);
}

void BackendHealth::DeclineEjection() { traffic_failures_ = 0; }

void BackendHealth::MarkStopped(TimePoint now, int64_t wall_ms,
                                std::string_view reason) {
  checked_ = Checked::kUnknown;
  passes_ = 0;
  failures_ = 0;
  checked_once_ = false;
  slow_start_since_.reset();
  Update(now, wall_ms, reason);
}

void BackendHealth::Drain(TimePoint now, int64_t wall_ms,
                          std::string_view reason) {
  admin_ = Admin::kDrain;
  Update(now, wall_ms, reason);
}

void BackendHealth::Disable(TimePoint now, int64_t wall_ms,
                            std::string_view reason) {
  admin_ = Admin::kDisable;
  Update(now, wall_ms, reason);
}

void BackendHealth::Enable(TimePoint now, int64_t wall_ms,
                           std::string_view reason) {
  admin_ = Admin::kNone;
  Update(now, wall_ms, reason);
}

void BackendHealth::SetFeedbackDrain(TimePoint now, int64_t wall_ms,
                                     bool drain) {
  if (drain == feedback_drain_) return;
  feedback_drain_ = drain;
  Update(now, wall_ms,
         drain ? "the worker asked to drain (Tandem-State: drain)"
               : "the worker is ready again (Tandem-State: up)");
}

void BackendHealth::SuspectHung(TimePoint now, int64_t wall_ms,
                                std::string_view reason) {
  hung_since_ = now;
  if (hung_) return;
  hung_ = true;
  Update(now, wall_ms, reason);
}

void BackendHealth::SetVanished(TimePoint now, int64_t wall_ms, bool vanished,
                                std::string_view reason) {
  if (vanished == vanished_) return;
  vanished_ = vanished;
  Update(now, wall_ms, reason);
}

bool BackendHealth::Tick(TimePoint now, int64_t wall_ms) {
  BackendState before = state_;
  if (hung_ && !settings_.checks && now >= hung_since_ + kHangEjection) {
    hung_ = false;
    Update(now, wall_ms, "no check to wait for; the hang suspicion expired");
  }
  if (ejected_ && now >= ejected_until_) {
    ejected_ = false;
    last_ejection_end_ = now;
    traffic_failures_ = 0;
    Update(now, wall_ms, "ejection time over");
  }
  // Good behaviour earns the back-off back, one step per ejection_time.
  if (!ejected_ && times_ejected_ > 0 &&
      now - last_ejection_end_ >= settings_.ejection_time) {
    --times_ejected_;
    last_ejection_end_ = now;
  }
  if (slow_start_since_ && now >= *slow_start_since_ + settings_.slow_start) {
    slow_start_since_.reset();
    Update(now, wall_ms, "slow start finished");
  }
  return state_ != before;
}

std::optional<TimePoint> BackendHealth::NextDeadline() const {
  std::optional<TimePoint> next;
  auto consider = [&next](TimePoint t) {
    if (!next || t < *next) next = t;
  };
  if (ejected_) consider(ejected_until_);
  if (hung_ && !settings_.checks) consider(hung_since_ + kHangEjection);
  if (!ejected_ && times_ejected_ > 0)
    consider(last_ejection_end_ + settings_.ejection_time);
  if (slow_start_since_) consider(*slow_start_since_ + settings_.slow_start);
  return next;
}

uint32_t BackendHealth::EffectiveWeight(uint32_t scaled_weight,
                                        TimePoint now) const {
  uint64_t weight = scaled_weight;
  if (feedback_weight_) weight = weight * *feedback_weight_ / 100;
  weight = std::min<uint64_t>(weight, UINT32_MAX);
  if (weight == 0) return 0;
  if (slow_start_since_) {
    return algorithms::SlowStartWeight(static_cast<uint32_t>(weight),
                                       now - *slow_start_since_,
                                       settings_.slow_start);
  }
  return static_cast<uint32_t>(weight);
}

}  // namespace tandem::health
