#include "net/turn_clock.h"

namespace tandem::net {
namespace {

// This thread's clock, if its loop has one. Kept to this file (read through
// Now(), not inline in the header): a class's thread_local reached from
// other files goes through a wrapper function that the sanitizers' null
// check rejects.
thread_local TurnClock* current = nullptr;

}  // namespace

TurnClock::TurnClock(event_base* base)
    : previous_(current), forget_(event_new(base, -1, 0, ForgetCb, this)) {
  if (forget_ != nullptr) current = this;
}

TurnClock::~TurnClock() {
  if (current == this) current = previous_;
}

TurnClock::Clock::time_point TurnClock::Now() {
  TurnClock* clock = current;
  if (clock == nullptr) return Clock::now();
  if (!clock->fresh_) {
    clock->now_ = Clock::now();
    clock->fresh_ = true;
    // Runs after the callbacks already due in this turn, before the next
    // poll (libevent runs active events in order).
    event_active(clock->forget_.get(), EV_TIMEOUT, 0);
  }
  return clock->now_;
}

void TurnClock::ForgetCb(evutil_socket_t, short, void* arg) {
  static_cast<TurnClock*>(arg)->fresh_ = false;
}

}  // namespace tandem::net
