// A cold backup's activation; see cold_standby.h.
#include "health/cold_standby.h"

#include <utility>

namespace tandem::health {
namespace {

std::string FormatSeconds(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + "s";
  return std::to_string(d.count()) + "ms";
}

}  // namespace

ColdStandby::ColdStandby(const ColdStandbySettings& settings)
    : settings_(settings) {}

TimePoint::duration ColdStandby::Window() const {
  return std::chrono::duration_cast<TimePoint::duration>(
      settings_.activate_timeout + settings_.check_timeout +
      settings_.check_interval);
}

void ColdStandby::Record(TimePoint now, Activation to, std::string reason) {
  changes_.push_back({now, state_, to, std::move(reason)});
  ++change_count_;
  while (changes_.size() > kMaxChanges) changes_.pop_front();
  state_ = to;
}

bool ColdStandby::Promote(TimePoint now) {
  if (state_ != Activation::kInactive) return false;
  started_at_ = now;
  command_running_ = true;
  Record(now, Activation::kActivating,
         "activating cold backup " + settings_.backend + ": " +
             settings_.activate);
  return true;
}

void ColdStandby::OnCommandResult(TimePoint now, bool ok,
                                  std::string_view outcome) {
  command_running_ = false;
  std::string reason = "cold backup " + settings_.backend +
                       " activate command " + std::string(outcome);
  if (ok) {
    // Now it must pass its check before it is promoted.
    Record(now, settings_.checks ? state_ : Activation::kActive,
           reason + "; waiting for its check");
  } else {
    failed_at_ = now;
    Record(now, Activation::kFailed, reason + "; trying the next backup");
  }
}

bool ColdStandby::OnCheckPassed(TimePoint now) {
  if (state_ != Activation::kActivating) return false;
  Record(now, Activation::kActive,
         "cold backup " + settings_.backend +
             " passed its check after activation");
  return true;
}

bool ColdStandby::Tick(TimePoint now) {
  Activation before = state_;
  if (state_ == Activation::kActivating && !command_running_ &&
      now - started_at_ >= Window()) {
    failed_at_ = now;
    Record(now, Activation::kFailed,
           "cold backup " + settings_.backend +
               " never passed its check after activation; trying the next "
               "backup");
  }
  if (state_ == Activation::kFailed &&
      now - failed_at_ >= settings_.retry_delay) {
    Record(now, Activation::kInactive,
           "cold backup " + settings_.backend + " may be activated again, " +
               FormatSeconds(settings_.retry_delay) + " after it failed");
  }
  return state_ != before;
}

bool ColdStandby::Demote(TimePoint now) {
  if (!running() || command_running_) return false;
  Record(now, Activation::kInactive,
         "deactivating cold backup " + settings_.backend +
             (settings_.deactivate.empty() ? std::string()
                                           : ": " + settings_.deactivate));
  return true;
}

}  // namespace tandem::health
