#include "net/turn_clock.h"

namespace tandem::net {

thread_local TurnClock* TurnClock::current_ = nullptr;

TurnClock::TurnClock(event_base* base)
    : previous_(current_), forget_(event_new(base, -1, 0, ForgetCb, this)) {
  if (forget_ != nullptr) current_ = this;
}

TurnClock::~TurnClock() {
  if (current_ == this) current_ = previous_;
}

TurnClock::Clock::time_point TurnClock::Read() {
  if (!fresh_) {
    now_ = Clock::now();
    fresh_ = true;
    // Runs after the callbacks already due in this turn, before the next
    // poll (libevent runs active events in order).
    event_active(forget_.get(), EV_TIMEOUT, 0);
  }
  return now_;
}

void TurnClock::ForgetCb(evutil_socket_t, short, void* arg) {
  static_cast<TurnClock*>(arg)->fresh_ = false;
}

}  // namespace tandem::net
